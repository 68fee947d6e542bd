"""What this machine's cores can do at most: the ceilings the kernel tables are judged against.

A per-layer GFLOP/s figure means little without the machine's own limits beside it. This script
measures them with small C loops built by patsparse's own compiler driver (same flags, same
vector width as the generated kernels):

- FMA peak: independent chains of register-only FMAs, on 1 thread and on every thread;
- FMA fed from L1: one vector load per FMA, aligned, and offset by one float (half of those
  loads then cross a 64-byte line, which is what a 3x3 tap at column offset 1 or 2 does);
- read bandwidth: a vector sum over buffers from L1-sized to DRAM-sized, one thread;
- core-to-core latency: two threads handing one cache line back and forth. On a VM this says
  where the host placed the vCPUs: 25-60 ns when they share a last-level cache, ~200 ns when
  they sit on different core complexes (seen on the AMD EPYC VM, 2026-12-01), and kernels that pass
  activations between threads slow down with it (docs/COMPILER.md). ``core_to_core_ns()`` is
  imported by ab_models.py, which groups its rounds by it.

    python -m benchmarks.ceiling [--threads 2]

Writes docs/bench/ceiling.md: the best and the worst of several interleaved rounds per figure.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks._report import REPO, md_table, provenance

from patsparse.compiler.build import compile_c
from patsparse.compiler.codegen.base import prelude_c
from patsparse.compiler.target import Target, detect
from patsparse.compiler.runtime import aligned_empty

CHAINS = 12  # independent accumulators: enough to hide FMA latency at two FMAs per cycle

SOURCE = r"""
#define CHAINS %(chains)d
/* register-only FMAs on `threads` threads; returns seconds */
double fma_regs(long n, int threads) {
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads)
    {
        vf a[CHAINS], w = vbcast(0.999f);
        for (int j = 0; j < CHAINS; j++) a[j] = vbcast(j * 1e-3f);
        for (long i = 0; i < n; i++)
            for (int j = 0; j < CHAINS; j++) a[j] = a[j] * w + w;
        vf s = a[0]; for (int j = 1; j < CHAINS; j++) s += a[j];
        if (s[0] == 42.0f) __asm__ volatile("");
    }
    return omp_get_wtime() - t0;
}
/* one load per FMA from an L1-resident buffer, starting `offset` floats past a line */
double fma_l1(const float *buf, long n, int offset) {
    vf a[CHAINS], w = vbcast(0.999f);
    for (int j = 0; j < CHAINS; j++) a[j] = (vf){0};
    double t0 = omp_get_wtime();
    for (long i = 0; i < n; i++) {
        const float *p = buf + offset + (i * CHAINS * VL & 2047);
        for (int j = 0; j < CHAINS; j++) a[j] += w * vload(p + j * VL);
        __asm__ volatile("" : : "r"(p));
    }
    double t = omp_get_wtime() - t0;
    vf s = a[0]; for (int j = 1; j < CHAINS; j++) s += a[j];
    if (s[0] == 42.0f) __asm__ volatile("");
    return t;
}
/* sum of `floats` floats (a multiple of 8 * VL), `reps` times; returns seconds */
double read_bw(const float *buf, long floats, int reps) {
    vf a[8];
    for (int j = 0; j < 8; j++) a[j] = (vf){0};
    double t0 = omp_get_wtime();
    for (int r = 0; r < reps; r++)
        for (long i = 0; i < floats; i += 8 * VL)
            for (int j = 0; j < 8; j++) a[j] += vloada(buf + i + j * VL);
    double t = omp_get_wtime() - t0;
    vf s = a[0]; for (int j = 1; j < 8; j++) s += a[j];
    if (s[0] == 42.0f) __asm__ volatile("");
    return t;
}
/* one-way latency of a cache line between two threads of a team, in ns: `n` round trips */
double core_to_core(long n) {
    static _Alignas(64) atomic_long flag;
    atomic_store(&flag, 0);
    double t = 0.0;
    #pragma omp parallel num_threads(2)
    if (omp_get_num_threads() == 2) {
        const long me = omp_get_thread_num();
        #pragma omp barrier
        double t0 = omp_get_wtime();
        for (long i = 0; i < n; i++) {
            while (atomic_load_explicit(&flag, memory_order_acquire) != 2 * i + me) ps_pause();
            atomic_store_explicit(&flag, 2 * i + me + 1, memory_order_release);
        }
        if (me == 0) t = omp_get_wtime() - t0;
    }
    return t / (2.0 * n) * 1e9;
}
int vector_floats(void) { return VL; }
""" % {"chains": CHAINS}

SIZES_KB = (16, 128, 384, 768, 2048, 8192, 65536)


def _lib(target: Target | None = None) -> ctypes.CDLL:
    """The loops built for ``target`` (default: this host's), which must run here."""
    target = target or detect()
    lib = ctypes.CDLL(str(compile_c(prelude_c(target) + SOURCE, name="ceiling", target=target)))
    for f in ("fma_regs", "fma_l1", "read_bw", "core_to_core"):
        getattr(lib, f).restype = ctypes.c_double
    lib.fma_regs.argtypes = [ctypes.c_long, ctypes.c_int]
    lib.fma_l1.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
    lib.read_bw.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
    lib.core_to_core.argtypes = [ctypes.c_long]
    return lib


APART_NS = 100.0  # between the two placements seen on the VM (25-60 ns and ~200 ns)


def vcpus_apart(ns: float) -> bool:
    """Whether a core_to_core_ns() reading says the two vCPUs sit on different core complexes."""
    return ns >= APART_NS


def core_to_core_ns(round_trips: int = 100_000) -> float:
    """One-way latency of a cache line handed between two threads (median of 3 runs), in ns.

    Why: on this VM the host moves the two vCPUs between a shared last-level cache (25-60 ns) and
    separate core complexes (~200 ns) from one minute to the next, and the pattern kernels'
    two-thread speed follows it while the dense engines' hardly moves; a benchmark row is only
    interpretable with the placement it ran under. 0.0 where this process may use only one CPU
    (the two threads would then hand the line over once per scheduler time slice).
    """
    if len(os.sched_getaffinity(0)) < 2:
        return 0.0
    lib = _lib()
    return float(np.median([lib.core_to_core(round_trips) for _ in range(3)]))


def measure(threads: int, runs: int, n: int = 20_000_000, sizes_kb: tuple[int, ...] = SIZES_KB) -> dict:
    """Rates of every loop over ``runs`` interleaved rounds: {figure: [rate per round]}.

    GFLOP/s for the FMA loops (``n`` iterations each), GB/s for the read sweep. Rounds are
    interleaved so that every figure sees the same spells of machine noise.
    """
    lib = _lib()
    vl = lib.vector_floats()
    flop = 2 * vl * CHAINS  # per loop iteration
    l1 = aligned_empty(4096)
    figures = {f"peak_{t}": (lambda t=t: n * flop * t / lib.fma_regs(n, t) / 1e9) for t in sorted({1, threads})}
    for name, off in (("l1_aligned", 0), ("l1_offset1", 1)):
        figures[name] = lambda off=off: n // 4 * flop / lib.fma_l1(l1.ctypes.data, n // 4, off) / 1e9
    for kb in sizes_kb:
        floats = kb * 256 // (8 * vl) * (8 * vl)
        buf = aligned_empty(floats) + np.float32(1.0)
        reps = max(1, int(2e8 // floats))
        lib.read_bw(buf.ctypes.data, floats, 1)  # page faults and first touch out of the way
        figures[f"bw_{kb}"] = lambda buf=buf, floats=floats, reps=reps: \
            floats * 4 * reps / lib.read_bw(buf.ctypes.data, floats, reps) / 1e9
    if threads > 1 and len(os.sched_getaffinity(0)) > 1:
        figures["c2c_ns"] = lambda: lib.core_to_core(100_000)
    rates: dict = {name: [] for name in figures}
    for _ in range(runs):
        for name, run in figures.items():
            rates[name].append(run())
    return {"vl": vl, "rates": rates}


def report(res: dict, threads: int, argv: list[str]) -> str:
    rates = res["rates"]
    best = {k: max(v) for k, v in rates.items()}
    p1 = best["peak_1"]

    def row(label: str, key: str, unit_of_peak: bool = True) -> list[str]:
        cells = [label, f"{max(rates[key]):.1f}", f"{min(rates[key]):.1f}"]
        return cells + ([f"{best[key] / p1:.2f}"] if unit_of_peak else [])

    rows = [row("FMA, registers only, 1 thread", "peak_1")]
    if threads > 1:
        rows.append(row(f"FMA, registers only, {threads} threads", f"peak_{threads}"))
    rows += [row("FMA + one aligned L1 load each, 1 thread", "l1_aligned"),
             row("FMA + one L1 load offset by 1 float, 1 thread", "l1_offset1")]
    bw = [row(f"{kb} KB" if kb < 1024 else f"{kb // 1024} MB", f"bw_{kb}", False)
          for kb in sorted(int(k[3:]) for k in rates if k.startswith("bw_"))]
    runs = len(rates["peak_1"])
    c2c = ([f"Core-to-core latency (one cache line handed between two threads, one way): best "
            f"{min(rates['c2c_ns']):.0f} ns, worst {max(rates['c2c_ns']):.0f} ns. 25-60 ns means "
            "the two vCPUs share a last-level cache, about 200 ns that the host placed them on "
            "different core complexes.", ""] if "c2c_ns" in rates else [])
    return "\n".join([
        "## Machine ceilings (benchmarks/ceiling.py)", "",
        *provenance(__file__, argv),
        f"- {res['vl']}-float vectors (what generated kernels use); {runs} interleaved rounds", "",
        "A layer's useful GFLOP/s in the other tables is bounded by these: a pattern kernel does "
        "close to one input load per FMA, so the L1-fed rows are its best case, and about half "
        "of its loads are offset like the last one. The worst round shows how far the same "
        "loop moves on this machine from one second to the next.", "",
        md_table(["loop", "best GFLOP/s", "worst GFLOP/s", "best / 1-thread peak"], rows), "",
        "Read bandwidth, one thread, vector sum over a buffer of this size:", "",
        md_table(["buffer", "best GB/s", "worst GB/s"], bw), "", *c2c])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads for the all-core FMA peak")
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "ceiling.md"))
    args = ap.parse_args(argv)
    text = report(measure(args.threads, args.runs), args.threads, argv)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
