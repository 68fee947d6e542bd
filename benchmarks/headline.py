"""One headline model: a pruned network's accuracy next to its dense parent's, and its compiled
latency next to ONNX Runtime's and OpenVINO's on that very model.

Speed elsewhere in the docs is measured on randomly projected weights and accuracy on other
networks; this ties the two together on one trained model. The pruned model is a ``patsparse
prune --out`` directory, the parent the model it was pruned from; both are scored on the full
test set of the dataset the parent was trained on, then the pruned model is timed side by side
(settled, interleaved, medians) by the same harness as ``patsparse bench``. ``--grid`` takes a
row of the accuracy grid instead (its checkpoint and the same seed's dense parent; rows whose
weights the grid keeps: ``benchmarks.accuracy.KEEP_WEIGHTS``). Writes the ``headline`` section of
docs/RESULTS.md and prints the README row.

    python -m benchmarks.headline --pruned runs/r18_8x --parent runs/r18 --threads 2
    python -m benchmarks.headline --grid vgg16_bn/seed1/pc-8x --budget medium
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import _report, accuracy

import patsparse as ps
from patsparse.bench.harness import run_bench
from patsparse.bench.model import BenchModel
from patsparse.checkpoint import read_json
from patsparse.errors import InputError
from patsparse.data import get_loaders
from patsparse.train.loop import evaluate

ENGINES = ("patsparse", "onnxruntime", "openvino")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pruned", type=Path, help="a `patsparse prune --out` directory")
    ap.add_argument("--parent", type=Path, help="the dense model it was pruned from")
    ap.add_argument("--grid", help="an accuracy-grid row instead: MODEL/seedN/ROW, e.g. vgg16_bn/seed1/pc-8x")
    ap.add_argument("--budget", default="medium", choices=sorted(accuracy.BUDGETS), help="the --grid row's budget")
    ap.add_argument("--dataset", default="fashion-mnist", help="the --grid row's dataset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--results", type=Path, default=_report.RESULTS)
    args = ap.parse_args(argv)
    command = _report.command_line(__file__, sys.argv[1:] if argv is None else argv)
    if (args.grid is None) == (args.pruned is None or args.parent is None):
        ap.error("give either --pruned and --parent, or --grid")
    with tempfile.TemporaryDirectory() as tmp:
        if args.grid:
            parent, pruned, args.pruned, dataset = _grid_models(args, Path(tmp))
        else:
            dataset = read_json(args.parent / "model.json", "parent model").get("dataset", "fashion-mnist")
            parent, pruned = ps.load(args.parent), ps.load(args.pruned)
        return _headline(args, parent, pruned, dataset, command)


def _grid_models(args, tmp: Path):
    """(parent, pruned, saved pruned directory, dataset) of a grid row: the harness times a saved
    model, so the row is saved once into ``tmp``."""
    try:
        model, seed, row = accuracy.parse_row_spec(args.grid)
    except InputError as e:
        raise SystemExit(f"headline: {e}") from None
    saved = accuracy.save_grid_model(model, seed, row, args.dataset, args.budget, tmp / row)
    parent = accuracy.load_model(accuracy.GRID_OUT, args.dataset, args.budget, model, seed, "dense")
    return parent, ps.load(saved), saved, args.dataset


def _headline(args, parent, pruned, dataset: str, command: str) -> int:
    _, test = get_loaders(dataset, batch_size=256)
    dense_acc = evaluate(parent, test)["acc"]
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
