"""The accuracy grid of the paper's Table 1, run on our machine, written to docs/RESULTS.md.

Rows, per model and seed, all starting from the same trained dense network:

- ``dense``: the trained network; ``dense-ft``: the same network trained further for exactly the
  epochs a pruned row gets (without this control, "pruning improved accuracy" can simply mean
  "more epochs improved accuracy");
- ``pattern-phase1/2/3``: pattern pruning only (2.25x) with the Phase-1 (12), Phase-2 (8) and
  Phase-3 (4) libraries; ``pattern-random``: the control, a library of 8 random 4-entry masks;
- ``pc-8x/12x/16x``: pattern (Phase-2) + connectivity pruning at those 3x3-conv rates;
  ``pc-Rx-oneshot``: the same sparsity reached as the baselines reach theirs (one projection,
  then masked retraining for all the epochs), so it differs from them only in the structure;
- ``magnitude-Rx`` / ``filter-Rx``: unstructured magnitude and L1-norm filter pruning at the
  same rates, retrained with masks for as many epochs as the pattern rows spend in ADMM plus
  retraining (same budget).

Each row's result is a JSON file under ``--out`` written when the row finishes, so the script
resumes: a re-run skips finished rows (and refuses to mix rows run with another configuration),
and a row stopped mid-way goes on from its last finished epoch (a pattern row from its hard-pruned
state when its ADMM phase was stopped).
The 3x3-conv rate of every row is measured from its weights. ``--report-only`` rewrites the
RESULTS.md section from the stored rows.

    python -m benchmarks.accuracy --dataset fashion-mnist --budget small      # this machine
    python -m benchmarks.accuracy --dataset fashion-mnist --budget small --estimate
    python -m benchmarks.accuracy --dataset cifar10 --data-root ~/data/cifar10 --budget paper  # GPU
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _report

import patsparse as ps
from patsparse import data as psdata
from patsparse import models as psmodels
from patsparse.checkpoint import atomic_write_bytes, load_tensors, read_json, save_tensors, write_json
from patsparse.errors import FormatError, InputError, PatsparseError
from patsparse.patterns.library import candidates
from patsparse.pruning.admm import cosine_lr, make_optimizer
from patsparse.pruning import PruneRecipe
from patsparse.pruning.baselines import measured_rate, prune_baseline, pruned_convs
from patsparse.train.loop import evaluate, reshuffle, train_epoch
from patsparse.train.resume import EpochCheckpoint

DATASETS = {  # --dataset -> (patsparse.data name, model variant)
    "fashion-mnist": ("fashion-mnist", "cifar"),
    "mnist": ("mnist", "cifar"),
    "cifar10": ("cifar10", "cifar"),
    "imagenet": ("imagefolder", "imagenet"),
    "digits": ("digits", "cifar"),  # 8x8, bundled with scikit-learn: for smoke tests only
}


@dataclass(frozen=True)
class Budget:
    """How much training one grid gets. ``prune_epochs`` = ADMM iterations x epochs + retraining
    is what every pruned row (and dense-ft) spends after the dense network is trained."""

    name: str
    subset: int | None          # training examples (None = all)
    batch_size: int
    widths: dict[str, float]    # model -> width multiplier
    dense_epochs: int
    admm_iters: int
    admm_epochs: int
    retrain_epochs: int
    seeds: int
    lr: float                   # dense training (cosine from here)
    prune_lr: float             # ADMM and retraining (the pruner's default)
    gpu: bool = False           # too big for a CPU: say so instead of pretending

    @property
    def prune_epochs(self) -> int:
        return self.admm_iters * self.admm_epochs + self.retrain_epochs


_W = {"resnet18": 0.25, "vgg16_bn": 0.25, "mobilenet_v2": 0.25, "convnet": 0.5, "resnet8": 0.5}
BUDGETS = {
    "tiny": Budget("tiny", 512, 64, {k: 0.125 for k in _W}, 1, 1, 1, 1, 1, 0.05, 0.01),
    "small": Budget("small", 8000, 128, _W, 4, 2, 1, 2, 3, 0.05, 0.01),
    # MobileNet-V2 (width 0.25) and ResNet-50 (0.125) within an hour on 2 shared cores
    "mini": Budget("mini", 2000, 64, {"mobilenet_v2": 0.25, "resnet50": 0.125}, 3, 1, 1, 1, 1, 0.05, 0.01),
    # the full training set, parents trained until dense-ft shows further epochs add little,
    # widths with room to prune (at half width ResNet-8 keeps too few weights at 8x to say
    # anything about the method; ResNet-50 at 1/8 width: about 5 minutes per epoch on one
    # shared core); seeds run in order, so early seeds give early intervals
    "medium": Budget("medium", None, 128, {**_W, "resnet8": 1.0, "resnet50": 0.125}, 15, 3, 1, 3, 5, 0.05, 0.01),
    "paper": Budget("paper", None, 128, {k: 1.0 for k in _W}, 200, 10, 10, 100, 3, 0.1, 0.01, gpu=True),
}
# The third model is the classic small CIFAR ResNet: every conv in it is a full 3x3 conv, so
# every row prunes the whole network. MobileNet-V2 (``--models mobilenet_v2``) is not a default:
# its only full 3x3 conv is the 3-channel stem (the rest are depthwise or 1x1), so its
# pattern-only rows would leave 99% of the network untouched and say nothing about patterns.
DEFAULT_MODELS = ("resnet8", "resnet18", "vgg16_bn")
RATES = (8, 12, 16)


@dataclass(frozen=True)
class Row:
    id: str
    kind: str                   # dense | dense-ft | pattern | baseline
    rate: float = 1.0           # nominal 3x3-conv rate
    library: str | None = None  # phase1/2/3 or random
    method: str | None = None   # magnitude | filter
    oneshot: bool = False       # pattern rows: project once, retrain for all the pruned epochs


ROWS: tuple[Row, ...] = (
    Row("dense", "dense"),
    Row("dense-ft", "dense-ft"),
    *(Row(f"pattern-{lib}", "pattern", 2.25, lib) for lib in ("phase1", "phase2", "phase3", "random")),
    *(Row(f"pc-{r}x", "pattern", float(r), "phase2") for r in RATES),
    # the baselines' procedure (one projection, then retraining) with pattern + connectivity sets
    *(Row(f"pc-{r}x-oneshot", "pattern", float(r), "phase2", oneshot=True) for r in RATES),
    *(Row(f"{m}-{r}x", "baseline", float(r), method=m) for m in ("magnitude", "filter") for r in RATES),
)
KEEP_WEIGHTS = ("dense", "pattern-phase2", "pc-8x", "pc-8x-oneshot")  # the enhancement figure and the headline reuse these
# Rows live in the repository so that RESULTS.md can be re-rendered (and checked) from them on any
# clone; the checkpoints beside them are ignored by git (megabytes each, re-made by a re-run).
GRID_OUT = _report.BENCH / "accuracy"
RUNS_PAGE = "runs.md"  # every run of a dataset and budget, beside its row files


def random_library(size: int, seed: int) -> torch.Tensor:
    """The control: ``size`` distinct 4-entry masks drawn uniformly from the 126 candidates."""
    cand = candidates()
    g = torch.Generator().manual_seed(10_000 + seed)
    return cand[torch.randperm(cand.shape[0], generator=g)[:size]].clone()


# ------------------------------------------------------------------------------ one grid cell

@dataclass
class Cell:
    """Everything one (dataset, budget, model, seed) needs; rows of the cell share the dense net."""

    dataset: str
    budget: Budget
    model: str
    seed: int
    root: str | None
    device: str
    progress: bool
    command: str = ""

    @property
    def width(self) -> float:
        return self.budget.widths.get(self.model, 0.25)

    def config(self, row: Row) -> dict[str, Any]:
        b = self.budget
        out = {"dataset": self.dataset, "budget": b.name, "model": self.model, "width": self.width,
               "seed": self.seed, "row": asdict(row), "subset": b.subset, "batch_size": b.batch_size,
               "dense_epochs": b.dense_epochs, "admm_iters": b.admm_iters, "admm_epochs": b.admm_epochs,
               "retrain_epochs": b.retrain_epochs, "lr": b.lr, "prune_lr": b.prune_lr}
        if row.kind == "pattern":
            # the pruner's own defaults are part of a row's configuration: a row run under other
            # defaults (penalty, distillation, allocation) must not be mixed with this one
            out["recipe"] = {k: v for k, v in self.recipe(row).to_dict().items() if k != "notes"}
            out["recipe"]["retrain_lr"] = self.retrain_lr(row)  # resolved: its default is a rule
        elif row.kind == "baseline":
            r = self.recipe(row)  # a baseline shares only the retraining knobs
            out["retrain"] = {"lr": self.retrain_lr(row), "distill": r.distill,
                              "distill_temperature": r.distill_temperature}
        return out

    def retrain_lr(self, row: Row) -> float:
        """The masked-retraining rate of a pruned row: the pattern rows' (recipe) for the
        baselines too, so both retrain alike."""
        return self.recipe(row).retrain_rate

    def recipe(self, row: Row) -> PruneRecipe:
        """What ``ps.prune`` runs for a pattern row (baselines share its retraining knobs)."""
        b = self.budget
        schedule = ({"oneshot": True, "retrain_epochs": b.prune_epochs} if row.oneshot else
                    {"oneshot": False, "epochs": b.admm_epochs, "admm_iters": b.admm_iters,
                     "retrain_epochs": b.retrain_epochs})
        return PruneRecipe(rate=row.rate, library=row.library or "phase2", lr=b.prune_lr, **schedule)

    def loaders(self):
        name, _ = DATASETS[self.dataset]
        return psdata.get_loaders(name, batch_size=self.budget.batch_size, root=self.root,
                                  subset=self.budget.subset, seed=self.seed)

    def build(self) -> nn.Module:
        name, variant = DATASETS[self.dataset]
        info = psdata.info(name)
        torch.manual_seed(self.seed)
        return psmodels.get(self.model, num_classes=info.num_classes, in_channels=info.in_channels,
                            width=self.width, variant=variant)


def train_plain(model: nn.Module, loader, epochs: int, lr: float, cell: Cell, desc: str,
                checkpoint: EpochCheckpoint | None = None) -> None:
    """SGD (nesterov, weight decay) with per-epoch cosine decay: the pruner's own optimizer and
    schedule, so dense, dense-ft and pruned rows differ only in what they prune. With
    ``checkpoint``, every finished epoch is stored and a stopped run continues from the last."""
    opt = make_optimizer(model, lr, 0.9, 5e-4)
    start = checkpoint.restore(model, opt) if checkpoint is not None else 0
    for ep in range(start, epochs):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, ep, epochs)
        reshuffle(loader, ep)
        train_epoch(model, loader, opt, device=cell.device, progress=cell.progress,
                    desc=f"{desc} {ep + 1}/{epochs}")
        if checkpoint is not None:
            checkpoint.save(ep + 1, model, opt)


def run_row(cell: Cell, row: Row, dense_state: dict[str, torch.Tensor] | None, loaders,
            checkpoint: EpochCheckpoint | None = None) -> nn.Module:
    """Train (dense) or prune + retrain (others) one row; returns the resulting model."""
    train_loader, _ = loaders
    b = cell.budget
    model = cell.build().to(cell.device)
    if row.kind == "dense":
        train_plain(model, train_loader, b.dense_epochs, b.lr, cell, f"{cell.model} dense", checkpoint)
        return model
    assert dense_state is not None
    model.load_state_dict(dense_state)
    torch.manual_seed(cell.seed + 1)
    if row.kind == "dense-ft":
        train_plain(model, train_loader, b.prune_epochs, b.prune_lr, cell, f"{cell.model} dense-ft", checkpoint)
    elif row.kind == "pattern":
        lib = random_library(8, cell.seed) if row.library == "random" else row.library
        ps.prune(model, train_loader, rate=row.rate, library=lib, recipe=cell.recipe(row), device=cell.device,
                 progress=cell.progress, checkpoint=checkpoint.pointer.with_suffix("") if checkpoint else None)
    else:
        r = cell.recipe(row)
        prune_baseline(model, train_loader, row.method, row.rate, epochs=b.prune_epochs, lr=cell.retrain_lr(row),
                       device=cell.device, progress=cell.progress, distill=r.distill,
                       distill_temperature=r.distill_temperature)
    return model


def whole_model_rate(model: nn.Module) -> float:
    """Conv + linear weights, dense / non-zero (BatchNorm and biases are not pruned by anyone)."""
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(w.numel() for w in ws) / max(1, sum(int(torch.count_nonzero(w)) for w in ws))


def row_dir(out: Path, cell: Cell) -> Path:
    return out / cell.dataset / cell.budget.name / cell.model / f"seed{cell.seed}"


def run_cell(cell: Cell, rows: Iterable[Row], out: Path, log: Callable[[str], None] = print) -> list[dict]:
    """Run the missing rows of a cell (dense first, as the others start from it); return all
    of its results (finished earlier or now)."""
    d = row_dir(out, cell)
    results, loaders, dense_state = [], None, None
    rows = list(rows)
    for row in rows:
        path = d / f"{row.id}.json"
        if path.exists():
            done = read_json(path, "grid row")
            if not same_config(done.get("config"), cell.config(row)):
                raise FormatError(f"{path} was run with another configuration; delete it or pass "
                                  f"another --out to run this one")
            results.append(done)
            log(f"skip {cell.model} seed {cell.seed} {row.id}: done ({done['acc'] * 100:.2f}%)")
            continue
        if loaders is None:
            loaders = cell.loaders()
        if row.kind != "dense" and dense_state is None:
            dense_state = _dense_state(cell, out, loaders, log)
        log(f"run  {cell.model} seed {cell.seed} {row.id} ...")
        # a row stopped mid-way goes on from its last epoch (state beside the rows, git-ignored):
        # dense and dense-ft rows here, pattern rows in ps.prune's checkpoint directory
        checkpoint = EpochCheckpoint(d / "partial" / f"{row.id}.json", cell.config(row))
        model = run_row(cell, row, dense_state, loaders, checkpoint)
        done = [h for h in getattr(model, "patsparse_history", []) if h.get("phase") == "done"]
        seconds = done[-1]["seconds"] if done else checkpoint.elapsed()  # every run of the row
        ev = evaluate(model, loaders[1], device=cell.device)
        names = [n for n, _ in pruned_convs(model)]
        result = {"config": cell.config(row), "acc": ev["acc"], "loss": ev["loss"],
                  "rate_3x3": measured_rate(model, names), "rate_model": whole_model_rate(model),
                  "seconds": seconds, "admm": [h for h in getattr(model, "patsparse_history", [])
                                               if h.get("phase") == "admm"],
                  "date": _report.utc_now(), "command": cell.command,
                  "machine": _report.machine(), "commit": _report.git_commit()}
        if row.id in KEEP_WEIGHTS:
            save_tensors(d / f"{row.id}.safetensors", model.state_dict())
        write_json(path, result)  # last: a row counts as done only once everything is stored
        checkpoint.clear()
        shutil.rmtree(checkpoint.pointer.with_suffix(""), ignore_errors=True)
        results.append(result)
        log(f"done {cell.model} seed {cell.seed} {row.id}: acc {ev['acc'] * 100:.2f}%, "
            f"rate {result['rate_3x3']:.2f}x, {seconds:.0f}s")
    return results


# Fields added to Row and PruneRecipe after rows were stored, at the value that does what was done
# before they existed: a stored row without one ran with this value.
ADDED_FIELDS = {"row": {"oneshot": False},
                "recipe": {"dynamic": 0.0, "dynamic_reach": 3.0, "dynamic_every": 1, "reconstruct": 0}}


def same_config(stored: Any, current: dict[str, Any]) -> bool:
    """Whether a stored row ran the configuration ``current`` asks for, reading a field it lacks
    (added later, :data:`ADDED_FIELDS`) as the value that reproduces what ran before."""
    if not isinstance(stored, dict):
        return False
    seen = dict(current)
    for key, added in ADDED_FIELDS.items():
        if isinstance(stored.get(key), dict) and isinstance(current.get(key), dict):
            seen[key] = {k: v for k, v in current[key].items()
                         if k in stored[key] or k not in added or v != added[k]}
    return stored == seen


def _dense_state(cell: Cell, out: Path, loaders, log) -> dict[str, torch.Tensor]:
    """The dense weights of this cell, trained now (as the ``dense`` row) if not stored yet."""
    d = row_dir(out, cell)
    if not (d / "dense.json").exists() or not (d / "dense.safetensors").exists():
        (d / "dense.json").unlink(missing_ok=True)
        run_cell(cell, [ROWS[0]], out, log)
    return load_tensors(d / "dense.safetensors", "dense checkpoint")


def load_model(out: Path, dataset: str, budget: str, model: str, seed: int, row: str) -> nn.Module:
    """A stored grid model (``dense`` or ``pattern-phase2``) rebuilt with its weights."""
    b = BUDGETS[budget]
    cell = Cell(dataset, b, model, seed, None, "cpu", False)
    m = cell.build()
    m.load_state_dict(load_tensors(row_dir(out, cell) / f"{row}.safetensors", f"grid model {row}"))
    return m.eval()


def parse_row_spec(spec: str, row: str | None = None) -> tuple[str, int, str]:
    """``MODEL/seedN/ROW`` (or ``MODEL/seedN`` when ``row`` is given) -> (model, seed, row id):
    how other scripts name a stored grid model."""
    parts = spec.split("/")
    if len(parts) == 2 and row is not None:
        parts.append(row)
    try:
        model, seed, rid = parts
        return model, int(seed.removeprefix("seed")), rid
    except ValueError:
        raise InputError(f"a grid row is MODEL/seedN/ROW (e.g. vgg16_bn/seed1/pc-8x), got {spec!r}") from None


def save_grid_model(model: str, seed: int, row: str, dataset: str, budget: str, dest: Path) -> Path:
    """Save a stored grid model as a ``ps.save`` directory (what the timing harness and
    ``ps.load`` read); returns ``dest``."""
    ps.save(load_model(GRID_OUT, dataset, budget, model, seed, row), dest)
    return dest


# ------------------------------------------------------------------------------------ report

def collect(out: Path, dataset: str, budget: str) -> list[dict]:
    base = out / dataset / budget
    return [read_json(p, "grid row") for p in sorted(base.glob("*/seed*/*.json"))] if base.exists() else []


def _stats(v: list[float]) -> tuple[float, float, int]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else float("nan")), len(v)


def paired_interval(a: list[dict], b: list[dict]) -> tuple[float, float, int]:
    """Mean and 95% t-interval half-width, in points, of ``acc(a) - acc(b)`` paired by seed
    (rows of one seed share a dense parent, data subset and order, so the pairing removes
    most of the seed noise); half-width nan with fewer than two common seeds."""
    acc_b = {r["config"]["seed"]: r["acc"] for r in b}
    diffs = [(r["acc"] - acc_b[r["config"]["seed"]]) * 100 for r in a if r["config"]["seed"] in acc_b]
    if not diffs:
        return float("nan"), float("nan"), 0
    return (*_report.mean_ci95(diffs), len(diffs))


def verdict(a: list[dict], b: list[dict], bar: float) -> tuple[str, float, float]:
    """Does ``acc(a) - acc(b) >= bar`` points hold? ``holds`` when the whole paired 95% interval
    is at or above the bar, ``fails`` when it is entirely below, ``undecided`` when it spans
    the bar or fewer than two seeds are paired. Returns (word, mean, half-width)."""
    m, h, n = paired_interval(a, b)
    if n < 2:
        return "undecided", m, h
    if m - h >= bar:
        return "holds", m, h
    if m + h < bar:
        return "fails", m, h
    return "undecided", m, h


def _fmt_acc(v: list[float]) -> str:
    m, s, n = _stats(v)
    return f"{m * 100:.2f} ± {s * 100:.2f}" if n > 1 else f"{m * 100:.2f}"


METHODS = (("", ""), (" (one-shot)", "-oneshot"))  # (claim wording, row id suffix)
CLAIMS = [
    # (claim, row a, row b, bar: the claim is that acc(a) - acc(b) >= bar points)
    ("Budget check, not a paper claim: the dense parent has converged (the pruned rows' extra epochs "
     "add at most 0.3 points to it)", "dense", "dense-ft", -0.3),
    ("Phase-2 patterns keep accuracy (vs dense, loss at most 0.3 points)", "pattern-phase2", "dense", -0.3),
    ("... and not only because of extra epochs (vs dense-ft, at most 0.3 points)", "pattern-phase2", "dense-ft",
     -0.3),
    ("Designed Phase-2 library beats random 4-entry masks", "pattern-phase2", "pattern-random", 0.0),
    # each pattern + connectivity claim for the paper's ADMM rows and for the one-shot rows (what
    # ps.prune runs by default)
    *((f"Pattern + connectivity{how} at {r}x loses at most {bar} points (vs dense)", f"pc-{r}x{row}", "dense",
       -bar) for how, row in METHODS for r, bar in ((8, 0.3), (12, 1.0), (16, 1.0))),
    *((f"Pattern + connectivity{how} beats L1 filter pruning at {r}x by at least 1 point", f"pc-{r}x{row}",
       f"filter-{r}x", 1.0) for how, row in METHODS for r in RATES),
    *((f"Pattern + connectivity{how} within 0.5 points of unstructured magnitude at {r}x (paper: comparable)",
       f"pc-{r}x{row}", f"magnitude-{r}x", -0.5) for how, row in METHODS for r in RATES),
]


def by_model_row(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Stored rows grouped by (model, row id)."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        by.setdefault((r["config"]["model"], r["config"]["row"]["id"]), []).append(r)
    return by


def claim_verdicts(by: dict[tuple[str, str], list[dict]], model: str) -> list[tuple[str, str, str, str, str]]:
    """(claim, model, what was measured, verdict, word) for every claim of CLAIMS on ``model``;
    the word is verdict()'s (``holds``/``fails``/``undecided``, ``-`` when not run)."""
    out = []
    for claim, a, b, bar in CLAIMS:
        ra, rb = by.get((model, a)), by.get((model, b))
        if not ra or not rb:
            out.append((claim, model, "not run", "-", "-"))
            continue
        word, m, h = verdict(ra, rb, bar)
        status = {"holds": "supported", "fails": "not supported"}.get(word, "undecided")
        spread = "one seed" if math.isnan(h) else f"± {h:.2f}, {min(len(ra), len(rb))} seeds"
        out.append((claim, model, f"{a} - {b}: {m:+.2f} points ({spread}, paired, 95%)", status, word))
    return out


def render(results: list[dict], dataset: str, budget: Budget, models: list[str], runs_link: str) -> str:
    """The RESULTS.md section of one dataset and budget: a table per model, the claim verdicts,
    and a link to the page of every run (``runs_page``)."""
    by = by_model_row(results)
    sample = Cell(dataset, budget, models[0] if models else "resnet8", 0, None, "cpu", False)
    retrain_lr = sample.retrain_lr(Row("pc-8x", "pattern", 8.0, "phase2"))
    lines = [f"## Accuracy grid: {dataset}, budget `{budget.name}`", "",
             "Written by `benchmarks/accuracy.py`. Accuracy is top-1 on the full test set, mean ± "
             "sample standard deviation over seeds (n = seeds). The change against dense is paired by "
             "seed (each seed's row minus the same seed's dense parent), mean ± 95% interval half-width. "
             "The rate is measured from the weights: dense / non-zero weights over the pruned 3x3 convs "
             "(every 3x3 conv but the first).", "",
             f"Budget `{budget.name}`: {budget.subset or 'all'} training images, batch {budget.batch_size}, "
             f"dense {budget.dense_epochs} epochs (lr {budget.lr}); every other row then gets "
             f"{budget.prune_epochs} epochs (pattern rows: {budget.admm_iters} ADMM iterations x "
             f"{budget.admm_epochs} epochs at lr {budget.prune_lr} + {budget.retrain_epochs} masked "
             f"retraining at lr {retrain_lr:g}; `-oneshot` pattern rows and baselines: one projection, then "
             f"{budget.prune_epochs} epochs of masked retraining at lr {retrain_lr:g}; "
             f"dense-ft: {budget.prune_epochs} epochs at lr {budget.prune_lr}). "
             + ("Each seed draws its own training subset, initialisation and data order. " if budget.subset
                else "Each seed has its own initialisation and data order. ")
             + "The paper trains ~300-400 epochs on the full data at full width.", ""]
    if budget.gpu:
        lines += ["**This budget needs a GPU** (paper scale).", ""]
    claim_rows, unclaimed = [], []
    for model in models:
        got = {row: by.get((model, row.id), []) for row in ROWS}
        if not any(got.values()):
            continue
        width = next(v for v in got.values() if v)[0]["config"]["width"]
        dense = got[ROWS[0]]
        lines += [f"### {model} (width {width})", ""]
        table = []
        for row, rs in got.items():
            if not rs:
                continue
            accs = [r["acc"] for r in rs]
            rate = statistics.fmean(r["rate_3x3"] for r in rs)
            m, h, n = paired_interval(rs, dense) if dense and row.id != "dense" else (0.0, float("nan"), 0)
            delta = "-" if math.isnan(m) else f"{m:+.2f}" + (f" ± {h:.2f}" if n > 1 else " (one seed)" if n else "")
            table.append([row.id, f"{rate:.2f}x", _fmt_acc(accs), delta, str(len(rs)),
                          ", ".join(str(r["config"]["seed"]) for r in sorted(rs, key=lambda r: r["config"]["seed"]))])
        lines += [_report.md_table(["row", "3x3 rate", "accuracy %", "Δ vs dense, paired (points)", "n", "seeds"],
                                   table), ""]
        missing = [row.id for row, rs in got.items() if not rs]
        if missing:
            lines += [f"Not run for {model} at this budget: {', '.join(missing)}.", ""]
        for c in claim_verdicts(by, model):
            (claim_rows if c[4] != "-" else unclaimed).append(list(c[:4]))
    expected = len(ROWS) * budget.seeds * len(models)
    if len(results) < expected:
        lines += [f"{len(results)} of the budget's {expected} runs are stored ({len(models)} models x "
                  f"{len(ROWS)} rows x {budget.seeds} seeds); `python -m benchmarks.accuracy --dataset {dataset} "
                  f"--budget {budget.name}` resumes the rest.", ""]
    lines += ["### Which claims hold here", "",
              "Each claim is a bar on the difference between two rows, paired by seed (same parent, data "
              "and order). `supported`: the whole 95% t-interval of the paired difference clears the bar; "
              "`not supported`: the whole interval misses it; `undecided`: the interval spans the bar "
              "(more seeds would decide) or fewer than two seeds are paired.", "",
              _report.md_table(["claim", "model", "measured", "verdict"], claim_rows), ""]
    if unclaimed:
        lines += [f"Claims with a row not run at this budget: {len(unclaimed)} (model, claim) pairs.", ""]
    lines += [f"Every run (seed, accuracy, rate, time, commit, machine, command): "
              f"[{RUNS_PAGE}]({runs_link}).", ""]
    if not budget.gpu:
        lines += ["Paper-scale rows (full width, full data, ~400 epochs) need a GPU: "
                  f"`python -m benchmarks.accuracy --dataset {dataset} --budget paper --device cuda`"
                  + (" --data-root DIR" if dataset in ("cifar10", "imagenet") else "") + "."]
    return "\n".join(lines)


def runs_page(results: list[dict], dataset: str, budget: Budget) -> str:
    """Every stored run of one dataset and budget, with its provenance: the evidence behind the
    means in RESULTS.md, kept beside the row files so the summary page stays short."""
    lines = [f"# Accuracy grid runs: {dataset}, budget `{budget.name}`", "",
             "Written by `benchmarks/accuracy.py` from the row files in this directory "
             "(docs/RESULTS.md has the tables and verdicts).", ""]
    machines: dict[str, str] = {}
    commands: dict[str, str] = {}
    runs = []
    for r in sorted(results, key=lambda r: (r["config"]["model"], r["config"]["row"]["id"], r["config"]["seed"])):
        m = machines.setdefault(_report.machine_line(r["machine"]), f"M{len(machines) + 1}")
        c = commands.setdefault(r["command"], f"C{len(commands) + 1}")
        runs.append([r["config"]["model"], r["config"]["row"]["id"], str(r["config"]["seed"]),
                     f"{r['acc'] * 100:.2f}", f"{r['rate_3x3']:.2f}x", f"{r['rate_model']:.2f}x",
                     f"{r['seconds']:.0f}", r["date"], r["commit"], m, c])
    lines += [_report.md_table(["model", "row", "seed", "acc %", "3x3 rate", "model rate", "seconds",
                                "date", "commit", "machine", "command"], runs), ""]
    lines += [f"- {k}: {v}" for v, k in machines.items()]
    lines += [f"- {k}: `{v}`" for v, k in commands.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- CLI

def estimate(cells: list[Cell], rows: list[Row], log=print) -> float:
    """Seconds the grid would take, from timing a few training batches of each model here."""
    total = 0.0
    for model in sorted({c.model for c in cells}):
        cell = next(c for c in cells if c.model == model)
        train_loader, test_loader = cell.loaders()
        net = cell.build()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        batches = iter(train_loader)
        times = []
        for _ in range(4):
            x, y = next(batches)
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        per_batch = statistics.median(times[1:])
        b = cell.budget
        epochs = sum(b.dense_epochs if r.kind == "dense" else b.prune_epochs for r in rows)
        train_s = epochs * len(train_loader) * per_batch * 1.15  # ADMM terms and projections
        eval_s = len(rows) * len(test_loader) * per_batch / 3
        n = sum(1 for c in cells if c.model == model)
        log(f"{model}: {per_batch:.3f} s/batch x {len(train_loader)} batches; "
            f"{epochs} epochs per seed -> {(train_s + eval_s) * n / 3600:.1f} h for {n} seed(s)")
        total += (train_s + eval_s) * n
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    log(f"estimated total: {total / 3600:.1f} h on this machine (1-min load average {load:.1f} on "
        f"{os.cpu_count()} cores while timing: a busy machine inflates this)")
    return total


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(DATASETS))
    p.add_argument("--data-root", default=None, help="dataset directory (required for imagenet)")
    p.add_argument("--budget", default="small", choices=sorted(BUDGETS))
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated zoo names (known: {', '.join(psmodels.names())})")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the budget's)")
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1 "
                   "(parallel processes each take their own seeds)")
    p.add_argument("--rows", default="*", help="comma-separated row ids or globs, e.g. 'dense*,pc-*'")
    p.add_argument("--out", default=str(GRID_OUT),
                   help="row JSONs (committed: the evidence) and the kept checkpoints (git-ignored)")
    p.add_argument("--results", default=str(_report.RESULTS), help="markdown file to write the section into")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--estimate", action="store_true", help="time a few batches and print the run time")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from stored rows")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    if args.seeds is not None:
        if args.seeds < 1:
            raise InputError(f"--seeds must be >= 1, got {args.seeds}")
        budget = replace(budget, seeds=args.seeds)
    if args.first_seed < 0:
        raise InputError(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.dataset == "imagenet" and not args.data_root:
        raise InputError("--dataset imagenet needs --data-root (an ImageNet-style folder with train/ and val/)")
    models = [psmodels.canonical(m) for m in args.models.split(",") if m.strip()]
    patterns = [g.strip() for g in args.rows.split(",") if g.strip()]
    rows = [r for r in ROWS if any(fnmatch.fnmatch(r.id, g) for g in patterns)]
    if not rows:
        raise InputError(f"--rows {args.rows!r} matches no row; rows: {', '.join(r.id for r in ROWS)}")
    out = Path(args.out)
    command = _report.command_line(__file__, sys.argv[1:] if argv is None else argv)
    cells = [Cell(args.dataset, budget, m, s, args.data_root, args.device, not args.quiet, command)
             for m in models for s in range(args.first_seed, args.first_seed + budget.seeds)]
    if args.estimate:
        estimate(cells, rows)
        return 0
    if budget.gpu and args.device == "cpu" and not args.report_only:
        print(f"note: budget '{budget.name}' is paper scale and needs a GPU; running it on a CPU "
              f"would take weeks (see --estimate)", file=sys.stderr)
        return 2
    if not args.report_only:
        for cell in cells:
            run_cell(cell, rows, out)
    # every stored model of this dataset and budget, not only this run's: a grid run in pieces
    # (--models per process) must not drop the other pieces' tables from RESULTS.md
    results = collect(out, args.dataset, budget.name)
    stored = {r["config"]["model"] for r in results}
    shown = [m for m in (*DEFAULT_MODELS, *models) if m in stored or m in models]
    shown += sorted(stored - set(shown))
    page = out / args.dataset / budget.name / RUNS_PAGE
    planned = BUDGETS[args.budget]  # the report counts the budget's seeds, not this run's --seeds
    atomic_write_bytes(page, runs_page(results, args.dataset, planned).encode())
    link = os.path.relpath(page.resolve(), Path(args.results).resolve().parent)
    body = render(results, args.dataset, planned, list(dict.fromkeys(shown)), Path(link).as_posix())
    _report.update_section(f"accuracy-{args.dataset}-{budget.name}", body, Path(args.results))
    print(f"wrote {args.results} ({len(results)} rows)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PatsparseError as e:
        print(f"accuracy: error: {e}", file=sys.stderr)
        sys.exit(1)
