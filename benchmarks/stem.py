"""The ImageNet stem on one core: how close it runs to the FMA peak, fused or not, per target.

ResNet's stem (7x7 stride-2 conv 3->64, ReLU, 3x3 stride-2 max pool, 224x224 input) is a third
of ResNet-18's multiply-adds left at 8x, so whether it is compute-bound decides what is left to
gain there. For each vector ISA this host runs (AVX-512 and AVX2 on an AVX-512 host), one thread
times, in interleaved rounds on the same clock:

- ``peak``: register-only FMA chains (benchmarks/ceiling.py's loop, built for that target);
- ``fused``: the conv + max pool kernel (conv_pool.py, default tile), what compiled models run;
- ``split``: the implicit GEMM conv (igemm.py, default schedule) then the max pool kernel;
- ONNX Runtime on the same conv + ReLU + pool (one intra-op thread), once per run.

Each kernel is checked against PyTorch first. The clock is the process CPU time (--threads 1
everywhere, so it is the calling thread's): on this shared VM wall time also counts the time
other tenants hold the core.

    python -m benchmarks.stem [--rounds 7] [--out docs/bench/stem.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import torch

from benchmarks._clock import get_clock
from benchmarks._report import BENCH, md_table, provenance
from benchmarks.ceiling import CHAINS, _lib
from benchmarks.dense_kernels import Spec, peers, torch_module

from patsparse.bench.timing import interleave
from patsparse.compiler.codegen import conv_pool, dense_conv, pool
from patsparse.compiler.codegen.ctest import KernelRunner, from_layout, layout_buffer, to_layout
from patsparse.compiler.layout import Layout
from patsparse.compiler.target import TARGETS, Target, detect

STEM = Spec("r18 stem + max pool", "convpool", 3, 64, 224, 7, 2, 3, "relu")
CONV_FLOPS = 2 * 64 * 3 * 7 * 7 * 112 * 112  # one image's conv, 2 x MACs
PEAK_ITERS = 2_000_000
ITERS = 20  # calls per timed sample


def targets() -> list[Target]:
    """The host's own target, and AVX2 as well on an AVX-512 host (its code runs there)."""
    host = detect()
    return [host] + ([TARGETS["x86-64-avx2"]] if host.name == "x86-64-avx512" else [])


class Stem:
    """The stem as one fused kernel or as conv then pool, for one target, checked against PyTorch."""

    def __init__(self, target: Target, fused: bool, module: torch.nn.Module, x: torch.Tensor):
        conv = module[0]
        lin, lout, lmid = Layout(3, 224, 224, 3), Layout(64, 56, 56, 1), Layout(64, 112, 112, 1)
        w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
        geom = dict(cin=3, cout=64, k=7, stride=2, padding=3, act="relu", target=target)
        if fused:
            kernels = [(conv_pool.gen_conv_maxpool("stem", pool_k=3, pool_stride=2, pool_padding=1,
                                                   in_layout=lin, out_layout=lout, **geom), lin, lout, w, b)]
        else:
            kernels = [(dense_conv.gen_conv2d("stem", in_layout=lin, out_layout=lmid, **geom), lin, lmid, w, b),
                       (pool.gen_maxpool("pool", k=3, stride=2, padding=1, in_layout=lmid, out_layout=lout,
                                         target=target, input_nonneg=True), lmid, lout,
                        np.zeros(0, np.float32), np.zeros(1, np.float32))]
        self.flops = kernels[0][0].flops
        self.schedule = kernels[0][0].schedule
        self.steps, buf = [], to_layout(x[0].numpy(), lin)
        for kern, li, lo, wt, bias in kernels:
            runner = KernelRunner(kern)
            out = layout_buffer(lo)
            self.steps.append((runner, (buf, out, runner.pack(wt), np.ascontiguousarray(bias, np.float32))))
            buf = out
        self.run(1)
        want = module(x).detach().numpy()[0]
        err = np.abs(from_layout(buf, lout) - want).max() / max(1.0, np.abs(want).max())
        if not err <= 1e-4:
            raise SystemExit(f"stem on {target.name} ({'fused' if fused else 'split'}) is wrong: {err:.2e}")

    def run(self, iters: int) -> None:
        for runner, args in self.steps:
            runner.time(*args, iters=iters)


def measure(rounds: int) -> list[dict]:
    torch.manual_seed(0)
    module = torch_module(STEM)
    x = torch.randn(1, 3, 224, 224)
    iters = ITERS
    fns, work = {}, {}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for t in targets():
            lib = _lib(t)
            fns[(t.name, "peak")] = lambda lib=lib: lib.fma_regs(PEAK_ITERS, 1)
            work[(t.name, "peak")] = (PEAK_ITERS * 2 * lib.vector_floats() * CHAINS, None)
            for fused in (True, False):
                s = Stem(t, fused, module, x)
                key = (t.name, "fused" if fused else "split")
                fns[key] = lambda s=s: s.run(iters)
                work[key] = (s.flops * iters, s.schedule)
        ort = peers(module, x, 1, Path(tmp))
        fns[("onnxruntime", "ort")] = lambda run=ort["ort"], xn=ort["x"]: [run(xn) for _ in range(iters)]
        work[("onnxruntime", "ort")] = (CONV_FLOPS * iters, None)
        times = interleave(fns, rounds, warmup=1, clock=get_clock("cpu"))
    return [{"target": k[0], "what": k[1], "s": float(np.median(v)), "flop": work[k][0],
             "schedule": work[k][1]} for k, v in times.items()]


def report(rows: list[dict], argv: list[str]) -> str:
    peak = {r["target"]: r["flop"] / r["s"] / 1e9 for r in rows if r["what"] == "peak"}
    ort = next(r for r in rows if r["what"] == "ort")
    ort_ms = ort["s"] / ITERS * 1e3
    table = []
    for r in rows:
        if r["what"] == "peak":
            continue
        gf = r["flop"] / r["s"] / 1e9
        ms = r["s"] / ITERS * 1e3
        of_peak = ", ".join(f"{gf / p:.0%} of {t}" for t, p in peak.items()) if r["what"] == "ort" \
            else f"{gf / peak[r['target']]:.0%}"
        table.append([r["target"], r["what"], f"{ms:.3f}", f"{gf:.1f}", of_peak, f"{ms / ort_ms:.2f}",
                      str(r["schedule"] or "")])
    return "\n".join([
        "# The ImageNet stem on one core (benchmarks/stem.py)", "", *provenance(__file__, argv),
        f"- one thread, batch 1, fp32; medians of interleaved rounds, process CPU time; FMA peak "
        f"(register-only chains, one thread): " + ", ".join(f"{t} {p:.1f} GFLOP/s" for t, p in peak.items()),
        "", "Conv 3->64 7x7/2 + ReLU + max pool 3x3/2 on 224x224 (236 MFLOP of conv; the pool is "
        "not counted). `fused`: what compiled models run; `split`: the conv kernel then the pool "
        "kernel.", "",
        md_table(["target", "kernel", "ms", "GFLOP/s", "of FMA peak", "time vs ORT", "schedule"], table), ""])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(BENCH / "stem.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    text = report(measure(args.rounds), argv)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
