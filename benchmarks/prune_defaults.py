"""The sweep behind ``patsparse.prune``'s defaults: which knob matters at a user's budget.

A user prunes a network they already trained, with a loader far smaller than its training set
and a handful of epochs. This script takes a trained model (a ``patsparse train`` run directory),
prunes copies of it with ``ps.prune`` on a ``--subset``-image loader under several recipes
(one knob changed at a time from the defaults, plus the settings of earlier releases) and
several seeds, and reports the accuracy change against the dense parent on the full test set,
paired by seed, with a 95% confidence interval. Every run is a JSON file under ``--out``; a
re-run skips finished runs, so the sweep resumes and can be run in pieces (``--configs``).

    python -m benchmarks.prune_defaults --model-dir runs/resnet8 --subset 6000 --rates 8 16
    python -m benchmarks.prune_defaults --grid vgg16_bn/seed0 --budget medium --rates 8 16 --configs default
    python -m benchmarks.prune_defaults --model-dir runs/resnet8 --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks import _report, accuracy

import patsparse as ps
from patsparse.checkpoint import read_json, write_json
from patsparse.data import get_loaders
from patsparse.pruning import PruneRecipe
from patsparse.train.loop import evaluate

ADMM = {"oneshot": False, "steps": 1500}  # the paper's method as the default once ran it: half ADMM, half retraining
# name -> recipe knobs that differ from PruneRecipe's defaults (one-shot, 3000 steps)
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "steps-1500": {"steps": 1500},
    "steps-1500-distill-0.9": {"steps": 1500, "distill": 0.9},
    "steps-6000": {"steps": 6000},
    "lr-0.01": {"retrain_lr": 0.01},
    "lr-0.1": {"retrain_lr": 0.1},
    "allocation-uniform": {"allocation": "uniform"},
    "min-keep-0.5": {"min_layer_keep": 0.5},
    "dynamic": {"dynamic": 0.5},
    "dynamic-reach-10": {"dynamic": 0.5, "dynamic_reach": 10.0},
    "dynamic-progressive": {"dynamic": 0.5, "progressive": True},
    "reconstruct-256": {"reconstruct": 256},
    "reconstruct-1024": {"reconstruct": 1024},
    "reconstruct-1024-lr-0.01": {"reconstruct": 1024, "retrain_lr": 0.01},
    "admm": ADMM,
    "admm-steps-3000": {"oneshot": False, "steps": 3000},
    "retrain-lr-0.01": {**ADMM, "retrain_lr": 0.01},
    "distill-0.9": {**ADMM, "distill": 0.9},
    # the knobs below were each swept against the earlier default retraining rate (= lr, 0.01)
    "legacy": {**ADMM, "rho": 0.01, "rho_growth": 3.0, "rho_max": 1.0, "allocation": "uniform", "distill": 0.0,
               "retrain_lr": 0.01},
    "old-budget": {**ADMM, "epochs": 1, "retrain_epochs": 3, "retrain_lr": 0.01},
    "no-distill": {**ADMM, "distill": 0.0, "retrain_lr": 0.01},
    "uniform": {**ADMM, "allocation": "uniform", "retrain_lr": 0.01},
    "progressive": {**ADMM, "progressive": True, "retrain_lr": 0.01},
    "strength-0.01": {**ADMM, "penalty_strength": 0.01, "retrain_lr": 0.01},
}
OUT = _report.BENCH / "prune_defaults"


def setup(model_dir: Path, config: str, rate: float, seed: int, subset: int, batch_size: int, dataset: str):
    """A fresh copy of the trained model, the seed's training loader and the config's recipe."""
    train_loader, _ = get_loaders(dataset, batch_size=batch_size, subset=subset, seed=seed)
    return ps.load(model_dir), train_loader, PruneRecipe(**{**CONFIGS[config], "rate": rate, "seed": seed})


def hard_pruned_acc(model_dir: Path, config: str, rate: float, seed: int, subset: int, batch_size: int,
                    dataset: str, test_loader) -> float | None:
    """Test accuracy right after hard pruning (projection, the refit when the config asks for it,
    BatchNorm re-estimated), the state the full run then retrains: what retraining starts from.
    None for configs that train before hard pruning (ADMM, dynamic masks)."""
    model, train_loader, recipe = setup(model_dir, config, rate, seed, subset, batch_size, dataset)
    if not recipe.oneshot or recipe.dynamic:
        return None
    ps.prune(model, train_loader, recipe=dataclasses.replace(recipe, retrain_epochs=0), eval_loader=test_loader,
             progress=False)
    return next(h["eval"]["acc"] for h in model.patsparse_history if h.get("phase") == "hard-pruned")


def run_one(model_dir: Path, config: str, rate: float, seed: int, subset: int, batch_size: int,
            dense_acc: float, test_loader, dataset: str, command: str, checkpoint: Path) -> dict[str, Any]:
    """One pruning run; ``checkpoint`` holds its state until the row is written, so a run
    stopped part-way goes on from its last retraining epoch when the sweep is re-run."""
    model, train_loader, recipe = setup(model_dir, config, rate, seed, subset, batch_size, dataset)
    ps.prune(model, train_loader, recipe=recipe, progress=False, checkpoint=checkpoint)
    seconds = model.patsparse_history[-1]["seconds"]  # over every run of it
    acc = evaluate(model, test_loader)["acc"]
    admm = [h for h in model.patsparse_history if h.get("phase") == "admm"]
    arch = getattr(model, "patsparse_arch", None) or {}
    return {"config": config, "knobs": CONFIGS[config], "rate": rate, "seed": seed, "subset": subset,
            "model": f"{arch.get('name', model_dir.name)} (width {arch.get('width', '?')})",
            "dense_acc": dense_acc, "acc": acc, "diff_points": (acc - dense_acc) * 100,
            "final_gap_points": admm[-1]["trial"]["gap"] * 100 if admm else None,
            "final_reach": admm[-1]["reach"] if admm else None,
            "mask_changes": [h["mask_changes"] for h in model.patsparse_history if h.get("phase") == "dynamic"],
            "seconds": seconds,
            "date": _report.utc_now(), "commit": _report.git_commit(), "machine": _report.machine(),
            "command": command}


def _order(config: str) -> int:
    return list(CONFIGS).index(config) if config in CONFIGS else len(CONFIGS)


def model_table(rows: list[dict]) -> str:
    """One trained model's sweep: a line per (rate, config), mean change over seeds with its interval."""
    by: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        by.setdefault((r["config"], r["rate"]), []).append(r)
    table = []
    for (config, rate), rs in sorted(by.items(), key=lambda kv: (kv[0][1], _order(kv[0][0]))):
        m, h = _report.mean_ci95([r["diff_points"] for r in rs])
        gaps = [r["final_gap_points"] for r in rs if r["final_gap_points"] is not None]
        hard = [(r["hard_pruned_acc"] - r["dense_acc"]) * 100 for r in rs if r.get("hard_pruned_acc") is not None]
        knobs = ", ".join(f"{k}={v}" for k, v in rs[0]["knobs"].items()) or "(the defaults)"
        table.append([f"{rate:g}x", config, knobs, str(len(rs)),
                      f"{m:+.2f}" + ("" if math.isnan(h) else f" ± {h:.2f}"),
                      f"{statistics.fmean(hard):+.2f}" if hard else "-",
                      f"{statistics.fmean(gaps):.1f}" if gaps else "-",
                      f"{statistics.fmean(r['seconds'] for r in rs):.0f}", max(r["date"] for r in rs)])
    return _report.md_table(["rate", "config", "knobs", "seeds", "change (points)", "hard-pruned (points)",
                             "final gap (points)", "seconds", "last run"], table)


def render(runs: dict[str, list[dict]], subset: int) -> str:
    """The page: what was swept, then a table per trained model (``runs``: rows per model directory)."""
    lines = [
        "## Pruning defaults: which knob matters at a user's budget", "",
        f"Written by `benchmarks/prune_defaults.py`. A trained model pruned by `ps.prune` with a loader of "
        f"{subset} training images and the default recipe (one projection, then 3000 SGD steps of masked "
        "retraining), one knob changed per row: `steps-1500` halves the budget and `steps-6000` doubles it, `lr-0.01` and `lr-0.1` retrain at a third of the default rate and at 3.3 times it, `allocation-uniform` keeps the same kernel fraction in every layer and `min-keep-0.5` raises LAMP's per-layer floor to half the uniform share; the `dynamic` rows re-choose the masks from weights that keep training (SR-STE) during the first half of retraining before they freeze (`dynamic-reach-10`: a stronger decay on the pruned weights, `dynamic-progressive`: connectivity tightening from every kernel over that half); `reconstruct-N` refits the kept weights of every pruned conv after hard pruning by layer-wise least squares against the unpruned network's outputs on N training images (`-lr-0.01`: then retrained at a third of the default rate, so that retraining starts from the refit instead of undoing it); `admm` is the paper's ADMM "
        "as the default once ran it (1500 steps, half ADMM and half retraining), and the rows below it change "
        "one knob of that (`legacy`: the penalty, allocation and no distillation of earlier releases; "
        "`old-budget`: the earlier 4 x 1 ADMM and 3 retraining epochs; the rows from `legacy` down were swept "
        "when retraining ran at the ADMM rate, 0.01, which their knobs say). Accuracy change in points "
        "against the dense parent on the full test set, mean over seeds (with a 95% t-interval from two seeds "
        "on); 'hard-pruned' is the same change right after hard pruning (and the refit, with BatchNorm re-estimated), before retraining, for the one-shot rows; the projection gap is what a hard projection of the final ADMM weights cost before retraining.",
        ""]
    for name, rows in runs.items():
        model = next((r["model"] for r in rows if "model" in r), name)
        lines += [f"### {model}, dense test accuracy {rows[0]['dense_acc'] * 100:.2f}% (`{name}`)", "",
                  model_table(rows), ""]
        machines = sorted({_report.machine_line(r["machine"]) for r in rows})
        commands = sorted({f"`{r['command']}`" for r in rows if "command" in r})
        lines += [f"Machine: {'; '.join(machines)}." + (f" Commands: {', '.join(commands)}." if commands else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, help="a `patsparse train` run directory or a saved dense model")
    ap.add_argument("--grid", help="an accuracy-grid parent instead: MODEL/seedN (its dense row), saved "
                    "into runs/grid/ once")
    ap.add_argument("--budget", default="medium", choices=sorted(accuracy.BUDGETS), help="the --grid parent's budget")
    ap.add_argument("--dataset", default="fashion-mnist", help="the --grid parent's dataset")
    ap.add_argument("--subset", type=int, default=6000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rates", type=float, nargs="+", default=[8.0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run: first-seed .. first-seed + seeds - 1 "
                    "(runs in parallel processes each take their own seeds)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--docs", type=Path, default=_report.BENCH / "prune_defaults.md")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if (args.model_dir is None) == (args.grid is None):
        ap.error("give --model-dir or --grid")
    if args.grid:
        model, seed, _ = accuracy.parse_row_spec(args.grid, "dense")
        args.model_dir = _report.REPO / "runs" / "grid" / f"{model}-{args.budget}-seed{seed}"
        if not (args.model_dir / "model.json").exists():
            accuracy.save_grid_model(model, seed, "dense", args.dataset, args.budget, args.model_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = _report.command_line(__file__, sys.argv[1:] if argv is None else argv)
    out = args.out / args.model_dir.name / f"subset{args.subset}"
    meta = read_json(args.model_dir / "model.json", "trained model")
    dataset = args.dataset if args.grid else meta.get("dataset", "fashion-mnist")
    if not args.report_only:
        _, test_loader = get_loaders(dataset, batch_size=256)
        dense_acc = evaluate(ps.load(args.model_dir), test_loader)["acc"]
        for rate in args.rates:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for config in args.configs:
                    path = out / f"{config}-{rate:g}x-seed{seed}.json"
                    if not path.exists():
                        partial = out / "partial" / path.stem
                        r = run_one(args.model_dir, config, rate, seed, args.subset, args.batch_size, dense_acc,
                                    test_loader, dataset, command, partial)
                        write_json(path, r)
                        shutil.rmtree(partial, ignore_errors=True)
                        print(f"{config:>16} {rate:g}x seed {seed}: {r['diff_points']:+.2f} points "
                              f"(gap {r['final_gap_points']}, {r['seconds']:.0f}s)", flush=True)
                    r = read_json(path, "sweep row")
                    if "hard_pruned_acc" not in r:  # also a row written before the probe existed
                        r["hard_pruned_acc"] = hard_pruned_acc(args.model_dir, config, rate, seed, args.subset,
                                                               args.batch_size, dataset, test_loader)
                        write_json(path, r)
                        print(f"{config:>16} {rate:g}x seed {seed}: hard-pruned accuracy {r['hard_pruned_acc']}",
                              flush=True)
    runs = {d.parent.name: [read_json(p, "sweep row") for p in sorted(d.glob("*.json"))]
            for d in sorted(args.out.glob(f"*/subset{args.subset}"))}
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(render({k: v for k, v in runs.items() if v}, args.subset) + "\n")
    print(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
