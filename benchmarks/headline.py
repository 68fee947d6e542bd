"""One headline model: a pruned network's accuracy next to its dense parent's, and its compiled
latency next to ONNX Runtime's and OpenVINO's on that very model.

Speed elsewhere in the docs is measured on randomly projected weights and accuracy on other
networks; this ties the two together on one trained model. The pruned model is a ``patsparse
prune --out`` directory, the parent the model it was pruned from; both are scored on the full
test set of the dataset the parent was trained on, then the pruned model is timed side by side
(settled, interleaved, medians) by the same harness as ``patsparse bench``. Writes the
``headline`` section of docs/RESULTS.md and prints the README row.

    python -m benchmarks.headline --pruned runs/r18_8x --parent runs/r18 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks import _report

import patsparse as ps
from patsparse.bench.harness import run_bench
from patsparse.bench.model import BenchModel
from patsparse.checkpoint import read_json
from patsparse.data import get_loaders
from patsparse.train.loop import evaluate

ENGINES = ("patsparse", "onnxruntime", "openvino")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pruned", type=Path, required=True, help="a `patsparse prune --out` directory")
    ap.add_argument("--parent", type=Path, required=True, help="the dense model it was pruned from")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--results", type=Path, default=_report.RESULTS)
    args = ap.parse_args(argv)
    command = _report.command_line(__file__, sys.argv[1:] if argv is None else argv)

    dataset = read_json(args.parent / "model.json", "parent model").get("dataset", "fashion-mnist")
    _, test = get_loaders(dataset, batch_size=256)
    dense_acc = evaluate(ps.load(args.parent), test)["acc"]
    pruned = ps.load(args.pruned)
    pruned_acc = evaluate(pruned, test)["acc"]
    report = ps.describe(pruned)
    result = run_bench(BenchModel.from_spec(str(args.pruned)), ENGINES, threads=args.threads,
                       repeats=args.repeats, log=lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    ms = {e.name: e.median_ms for e in result.ok()}
    if "patsparse" not in ms:
        print("headline: patsparse did not run; see the bench log", file=sys.stderr)
        return 1
    peers = {k: v for k, v in ms.items() if k != "patsparse"}
    best = min(peers, key=peers.get) if peers else None
    rows = [[f"{e.label}", f"{e.median_ms:.3f}", f"{e.p90_ms:.3f}",
             f"{e.median_ms / ms['patsparse']:.2f}x" if e.name != "patsparse" else "1.00x"]
            for e in result.ok()]
    arch = read_json(args.pruned / "model.json", "pruned model").get("model") or {}
    name = f"{arch.get('name', args.pruned.name)} (width {arch.get('width', '?')})"
    body = "\n".join([
        "## Headline: one model, accuracy and speed", "",
        f"Written by `benchmarks/headline.py`. {name} on {dataset}, pruned by patsparse at "
        f"{report.conv3x3_rate:.2f}x over its pruned convs ({report.model_rate:.2f}x whole model): test accuracy "
        f"**{pruned_acc * 100:.2f}%** against its dense parent's **{dense_acc * 100:.2f}%** "
        f"({(pruned_acc - dense_acc) * 100:+.2f} points), full {dataset} test set.", "",
        f"The same pruned model, batch 1, {args.threads} threads, {args.repeats} timed calls per engine after "
        "warm-up, interleaved, each engine's threads settled before its block; latency in ms; the last "
        "column is how many times longer than patsparse an engine takes.", "",
        _report.md_table(["engine", "median", "p90", "time vs patsparse"], rows), "",
        (f"patsparse is {ms[best] / ms['patsparse']:.2f}x faster than the faster peer ({best})." if best else
         "No peer engine ran."), "",
        f"Run {_report.utc_now()}, commit {_report.git_commit()}, {_report.machine_line(_report.machine())}, "
        f"1-min load average {os.getloadavg()[0]:.1f}; command `{command}`."])
    _report.update_section("headline", body, args.results, first=True)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
