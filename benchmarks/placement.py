"""Latency against host placement: the same side-by-side run, repeated, with the core-to-core
latency measured before and after each round.

Why: on the project's 2-vCPU AMD EPYC VM the host moves the two vCPUs between one core complex
(25-60 ns from core to core) and two (~200 ns) from one minute to the next. The compiled models'
two-thread latency follows that placement while the dense engines' hardly moves, so a single
benchmark row can land on either side of a target. This script makes the dependence visible:
each round runs the issue's harness (``patsparse.bench.run_bench``: every engine in its own
worker, interleaved, medians) on one model with 2 threads, then patsparse alone with 1 thread,
and the rounds are grouped by the placement measured around them (a round whose two probes
disagree is reported but not grouped).

    python benchmarks/placement.py [--model resnet18 --variant imagenet --rate 8] [--rounds 8]

Writes docs/bench/placement.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import REPO, command_line, git_commit, machine, machine_line, md_table, utc_now  # noqa: E402
from ceiling import APART_NS, core_to_core_ns, vcpus_apart  # noqa: E402

from patsparse.bench.harness import run_bench  # noqa: E402
from patsparse.bench.model import BenchModel  # noqa: E402

ENGINES = ["patsparse", "onnxruntime", "openvino"]


def one_round(model: BenchModel, repeats: int) -> dict:
    """Core-to-core latency around one harness run of every engine (2 threads) and one of
    patsparse on 1 thread: {"c2c": (before, after), engine: median ms, "patsparse_1t": ms}."""
    before = core_to_core_ns()
    res = run_bench(model, ENGINES, threads=2, repeats=repeats)
    one = run_bench(model, ["patsparse"], threads=1, repeats=max(10, repeats // 3))
    out = {"c2c": (before, core_to_core_ns())}
    for r in (res, one):
        bad = [f"{e.name}: {e.status} {e.reason}" for e in r.engines if e.status != "ok"]
        if bad:
            raise SystemExit("an engine did not run: " + "; ".join(bad))
    out.update({e.name: e.median_ms for e in res.engines})
    out["patsparse_1t"] = one.engines[0].median_ms
    return out


def placement(c2c: tuple[float, float]) -> str | None:
    far = [vcpus_apart(ns) for ns in c2c]
    return None if far[0] != far[1] else "apart" if far[0] else "together"


def report(rounds: list[dict], args, argv: list[str]) -> str:
    rows = []
    for i, r in enumerate(rounds):
        best = min(r["onnxruntime"], r["openvino"])
        rows.append([str(i + 1), f"{r['c2c'][0]:.0f} / {r['c2c'][1]:.0f}", placement(r["c2c"]) or "changed",
                     f"{r['patsparse']:.3f}", f"{r['patsparse_1t']:.3f}", f"{r['onnxruntime']:.3f}",
                     f"{r['openvino']:.3f}", f"{best / r['patsparse']:.2f}x",
                     f"{r['patsparse_1t'] / r['patsparse']:.2f}x"])
    summary = []
    for where in ("together", "apart"):
        sel = [r for r in rounds if placement(r["c2c"]) == where]
        if sel:
            med = {k: float(np.median([r[k] for r in sel])) for k in (*ENGINES, "patsparse_1t")}
            ratios = [min(r["onnxruntime"], r["openvino"]) / r["patsparse"] for r in sel]
            summary.append([where, str(len(sel)), f"{med['patsparse']:.3f}", f"{med['patsparse_1t']:.3f}",
                            f"{med['onnxruntime']:.3f}", f"{med['openvino']:.3f}",
                            f"{min(ratios):.2f}-{max(ratios):.2f}x"])
    label = f"{args.model} {args.variant}" + (f" at {args.rate:g}x" if args.rate else " dense")
    return "\n".join([
        f"## Latency against host placement: {label} (benchmarks/placement.py)", "",
        f"- date {utc_now()}, commit {git_commit()}",
        f"- machine: {machine_line(machine())}",
        f"- command: `{command_line(__file__, argv)}`; batch 1, fp32; each round is the "
        f"`patsparse.bench` harness ({args.repeats} timed calls per engine, interleaved, medians)",
        f"- placement: the core-to-core latency before / after the round (ceiling.core_to_core_ns); "
        f"'apart' when both are >= {APART_NS:.0f} ns, 'together' when both are below", "",
        md_table(["round", "core-to-core ns", "placement", "patsparse 2 threads ms", "patsparse 1 thread ms",
                  "ONNX Runtime ms", "OpenVINO ms", "speed-up vs best", "2-thread scaling"], rows), "",
        "By placement (medians over the rounds; speed-up range over the rounds):", "",
        md_table(["placement", "rounds", "patsparse 2 threads ms", "patsparse 1 thread ms", "ONNX Runtime ms",
                  "OpenVINO ms", "speed-up vs best"], summary) if summary else "no round kept one placement", ""])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--variant", default="imagenet")
    ap.add_argument("--rate", type=float, default=8.0, help="compression rate (0: dense)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per engine per round")
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "placement.md"))
    args = ap.parse_args(argv)
    model = BenchModel.from_zoo(args.model, rate=args.rate or None, variant=args.variant)
    rounds = []
    for i in range(args.rounds):
        rounds.append(one_round(model, args.repeats))
        r = rounds[-1]
        print(f"round {i + 1}: core-to-core {r['c2c'][0]:.0f} / {r['c2c'][1]:.0f} ns, "
              + ", ".join(f"{k} {r[k]:.3f} ms" for k in (*ENGINES, "patsparse_1t")), flush=True)
    text = report(rounds, args, argv)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
