"""A/B of two compiled models in one process: whole-model latency and each layer's time,
blocks alternated, grouped by host placement.

Why: on a shared VM a change to the generated code is only visible against the build it
replaces, measured in the same minutes. Each round runs a block of calls of A, then of B (each
block settled, after one unrecorded call: ``patsparse.bench.timing``), recording latency and the per-layer profile
(``CompiledModel.run_numpy(x, prof)``: the lead thread's wall time per layer, barrier included),
then probes the core-to-core latency (ceiling.core_to_core_ns). Rounds are grouped by that
probe: 'together' (the two vCPUs share a last-level cache) and 'apart' (ceiling.vcpus_apart), because
the compiled models' two-thread speed differs between the two (docs/COMPILER.md).
``--pause S`` sleeps S seconds after each block, as a side-by-side benchmark leaves a model idle
while the other engines run: small blocks with pauses call a model as the speed grid does, where
a thread team's state carried from block to block (the solo fallback, base.PRELUDE) decides
its speed.

    python -m benchmarks.ab_models OLD.compiled NEW.compiled [--seconds 300] [--calls 40]
                                   [--trust-native-code] [--threads N] [--batch N] [--pause S]

A and B are directories written by ``patsparse compile`` / ``CompiledModel.save`` (for the same
input shape; their layers pair by name, so a build that fuses two layers shows the other's two
beside its one). Prints the table; --out also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._report import md_table, provenance
from benchmarks.ceiling import core_to_core_ns, vcpus_apart

from patsparse.bench.timing import time_calls
from patsparse.compiler.package import load_compiled


def block(model, x: np.ndarray, calls: int, pause: float = 0.0) -> tuple[float, np.ndarray]:
    """(median ms per call, median ms per layer) over ``calls`` settled calls after one warm-up,
    then ``pause`` seconds idle."""
    per = np.zeros((calls + 1, len(model.manifest["layers"])))  # row 0: the warm-up call's
    rows = iter(per)
    lat = time_calls(lambda: model.run_numpy(x, next(rows)), calls, warmup=1)
    time.sleep(pause)
    return float(np.median(lat)) * 1e3, np.median(per[1:], axis=0) * 1e3


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--calls", type=int, default=40, help="calls per block")
    ap.add_argument("--out", help="also write the table here")
    ap.add_argument("--rounds-json", help="also write every round's two latencies and placement here")
    ap.add_argument("--trust-native-code", action="store_true",
                    help="run each directory's own library (A and B built by different versions of the "
                         "compiler; loading otherwise regenerates both with this one)")
    ap.add_argument("--threads", type=int, help="run both with this many threads (default: as saved)")
    ap.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds idle after each block (default 0)")
    args = ap.parse_args(argv)
    a, b = (load_compiled(d, threads=args.threads, trust_native_code=args.trust_native_code)
            for d in (args.a, args.b))
    text, rounds = ab_table(a, b, f"{args.a} against {args.b}",
                            provenance(__file__, argv), seconds=args.seconds, calls=args.calls,
                            batch=args.batch, pause=args.pause)
    if args.rounds_json:
        Path(args.rounds_json).write_text(json.dumps([{k: r[k] for k in ("far", "a", "b")} for r in rounds]))
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


def ab_table(a, b, title: str, header: list[str], *, seconds: float, calls: int,
             batch: int = 1, pause: float = 0.0) -> tuple[str, list[dict]]:
    """The A/B table of two compiled models (see the module docstring) and its rounds, under
    ``header`` (the writing script's provenance lines), ``batch`` images per call, ``pause``
    seconds idle after each block."""
    if a.input_shape != b.input_shape:
        raise SystemExit(f"input shapes differ: {a.input_shape} against {b.input_shape}")
    kinds_a, kinds_b = ({L["name"]: L["kernel"] for L in m.manifest["layers"]} for m in (a, b))
    # layers pair by name; a layer one build fused away shows "-" on that side, and one whose
    # kernel differs (a fused step keeps its last layer's name) shows both kernels
    names = list(kinds_a) + [n for n in kinds_b if n not in kinds_a]
    pos_a, pos_b = ({n: i for i, n in enumerate(k)} for k in (kinds_a, kinds_b))
    x = np.random.default_rng(0).standard_normal((batch, *a.input_shape)).astype(np.float32)
    if not np.allclose(a.run_numpy(x), b.run_numpy(x), rtol=1e-4, atol=1e-4):
        raise SystemExit("the two models give different outputs")
    rounds = []
    end = time.time() + seconds
    while time.time() < end:
        (ta, la), (tb, lb) = block(a, x, calls, pause), block(b, x, calls, pause)
        rounds.append({"far": vcpus_apart(core_to_core_ns()), "a": ta, "b": tb, "la": la, "lb": lb})
    lines = [f"## A/B: {title} (benchmarks/ab_models.py)", "", *header,
             f"- {len(rounds)} rounds of {calls} calls of batch {batch} each, A then B"
             + (f", {pause:g} s idle after each block" if pause else "") + "; medians over rounds", ""]
    for where, far in (("together", False), ("apart", True)):
        sel = [r for r in rounds if r["far"] == far]
        if not sel:
            lines += [f"No round with the vCPUs {where}.", ""]
            continue
        ratio = np.median([r["a"] / r["b"] for r in sel])
        lines += [f"### vCPUs {where}: {len(sel)} rounds; A {np.median([r['a'] for r in sel]):.3f} ms, "
                  f"B {np.median([r['b'] for r in sel]):.3f} ms, median per-round A/B {ratio:.3f}", ""]
        la, lb = np.median([r["la"] for r in sel], 0), np.median([r["lb"] for r in sel], 0)
        rows = []
        for n in names:
            p = la[pos_a[n]] * 1e3 if n in pos_a else None
            q = lb[pos_b[n]] * 1e3 if n in pos_b else None
            ka, kb = kinds_a.get(n, "-"), kinds_b.get(n, "-")
            rows.append([n, ka if ka == kb else f"{ka} / {kb}", "-" if p is None else f"{p:.1f}",
                         "-" if q is None else f"{q:.1f}", f"{p / q:.2f}" if p and q else "-"])
        lines += [md_table(["layer", "kernel (A / B)", "A us", "B us", "A/B"], rows), ""]
    return "\n".join(lines), rounds


if __name__ == "__main__":
    main()
