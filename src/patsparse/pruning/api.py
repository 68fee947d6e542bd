"""``patsparse.prune``: the one line that pattern-prunes a user's CNN.

Flow: plan layers and kernel budgets for the rate -> ADMM (pattern + connectivity) or dynamic
masks (when asked for) -> hard prune with the final projections -> refit the kept weights by
least squares (when asked for) -> masked retraining -> verify the spec against the weights. The
model is pruned in place and returned with ``model.patsparse_spec`` (the sparsity spec),
``model.patsparse_recipe`` and ``model.patsparse_history`` (per-phase losses/accuracies) attached.
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..patterns.library import pattern_library
from ..train.distill import Distillation
from ..train.resume import EpochCheckpoint
from .admm import run_admm
from .checkpoint import PruneCheckpoint
from .dynamic import run_dynamic
from .layers import LayerPlan, plan_layers
from .masks import MaskEnforcer
from .phase import count_batches, fmt, log, train_phase
from .projection import prune_planned
from .reconstruct import reconstruct as refit_layers, summary as refit_summary
from .recipe import PruneRecipe, method_for
from .spec import check_weights, spec_masks


def masked_retrain(model: nn.Module, loader: Iterable, masks: Mapping[str, torch.Tensor], *, epochs: int, lr: float,
                   momentum: float, weight_decay: float, warmup: float = 0.05, device: str = "cpu",
                   progress: bool = True, eval_loader: Iterable | None = None,
                   history: list | None = None, distill: Distillation | None = None,
                   output: Callable[[Any], torch.Tensor] | None = None,
                   checkpoint: EpochCheckpoint | None = None) -> None:
    """Retrain the kept weights (per-step cosine after a warm-up, optionally distilling from a
    teacher) while every weight that ``masks`` (layer name -> 0/1 tensor, e.g.
    :func:`~patsparse.pruning.spec.spec_masks` of a spec) zeroes stays zero. ``output`` picks the
    logits from a forward that returns a tuple or dict (``masks`` names layers of ``model``).
    ``checkpoint`` stores the state (and ``history``) after every epoch, and a stored state is
    continued from its next epoch."""
    net = model if output is None else _Selected(model, output)
    with MaskEnforcer(model, masks) as enforcer:
        train_phase(net, loader, "retrain", epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    warmup=warmup, device=device, progress=progress, eval_loader=eval_loader, history=history,
                    distill=distill, after_step=enforcer.after_step, checkpoint=checkpoint)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable, batches: int, device: str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/variance as the plain average over ``batches``
    training batches (forward only, no weight changes). Hard pruning shifts each pruned conv's
    output, so the statistics gathered on the unpruned weights are stale; returns the number of
    batches used (0 when the model has no BatchNorm)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: an exact mean over the batches seen
    model.train()
    used = 0
    try:
        for x, _ in loader:
            if used >= batches:
                break
            model(x.to(device))
            used += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return used


class _Selected(nn.Module):
    """A model whose forward returns a tuple or dict, seen through the caller's ``output``
    selector as one that returns the logits (the parameters are the model's own)."""

    def __init__(self, model: nn.Module, output: Callable[[Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.model(x))


class _FirstBatches:
    """The first ``n`` batches of a loader, re-iterable: the data a trial projection is scored
    on when the caller gave no evaluation loader."""

    def __init__(self, loader: Iterable, n: int):
        self.loader, self.n = loader, n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)


def _check_loader(model: nn.Module, loader: Iterable, r: PruneRecipe, device: str) -> PruneRecipe:
    """The recipe made concrete for ``loader`` (:meth:`PruneRecipe.for_loader`), after checking
    the loader is usable: not empty, enough SGD steps for one ADMM iteration, and batches on
    which the model returns a tensor of logits."""
    batches = count_batches(loader)
    if batches == 0:
        raise InputError("prune: the training loader is empty (0 batches); pruning needs training data")
    first = next(iter(loader), None)
    if not (isinstance(first, (tuple, list)) and len(first) == 2 and isinstance(first[0], torch.Tensor)):
        raise InputError(f"prune: the training loader must yield (input, target) tensor pairs, got "
                         f"{type(first).__name__}{f' of {len(first)}' if isinstance(first, (tuple, list)) else ''}")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(first[0][:2].to(device))
    model.train(was_training)
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        hint = "output=lambda out: out[0]" if isinstance(out, (tuple, list)) else "output=lambda out: out['logits']"
        raise InputError(f"prune: the model's forward returns a {kind}, not a tensor of logits; pass an "
                         f"output selector that picks the logits, e.g. prune(..., {hint})")
    r = r.for_loader(batches)
    if not r.oneshot and r.rho is None and (steps := batches * r.epochs) < r.min_steps():
        raise InputError(f"prune: the training loader has {batches} batch(es), so an ADMM iteration of "
                         f"{r.epochs} epoch(s) gets {steps} SGD steps; with momentum {r.momentum} the penalty "
                         f"needs at least {r.min_steps()} steps to pull the weights most of the way into the "
                         f"sparse sets; pass more data or more epochs per iteration (epochs=)")
    return r


@torch.no_grad()
def projection_gap(model: nn.Module, plans: Sequence[LayerPlan], library: torch.Tensor, data: Iterable,
                   bn_data: Iterable, bn_batches: int, device: str = "cpu") -> dict[str, float]:
    """Accuracy on ``data`` of the current weights and of their trial hard projection.

    The difference (``gap``) says how much accuracy hard pruning would cost if ADMM stopped
    now: a large gap at the end means the penalty did not pull the weights into the sparse sets
    and retraining will have to recover from a one-shot projection. The model is restored.
    """
    from ..train.loop import evaluate

    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        # both sides with freshly estimated BatchNorm statistics: the running ones lag weights
        # that the penalty moved quickly, which would make the projection look like a gain
        recalibrate_batchnorm(model, bn_data, bn_batches, device)
        before = evaluate(model, data, device=device)["acc"]
        prune_planned(plans, library, None)
        recalibrate_batchnorm(model, bn_data, bn_batches, device)
        after = evaluate(model, data, device=device)["acc"]
    finally:
        model.load_state_dict(saved)
    return {"acc": before, "projected_acc": after, "gap": before - after}


def _recipe_from_args(recipe: PruneRecipe | None, rate: Any, library: Any, **knobs: Any) -> PruneRecipe:
    """Merge keyword arguments into a recipe: a knob left unset (None) keeps the recipe's value;
    ``rate``/``library`` override an explicit recipe only when they differ from their defaults."""
    chosen = {k: v for k, v in knobs.items() if v is not None}
    if recipe is None or rate != 8:
        chosen["rate"] = rate
    if isinstance(library, torch.Tensor):
        chosen["library"] = "custom"  # the masks themselves are kept in the sparsity spec
    elif recipe is None or library != "phase2":
        chosen["library"] = library
    base = recipe.to_dict() if recipe is not None else {}
    return PruneRecipe(**{**base, **chosen}).validate()


def admm_summary(history: list[dict], r: PruneRecipe) -> list[str]:
    """Lines that say whether ADMM did its job: reach and projection gap per iteration, the
    layers furthest from their sparse sets, and a warning when the final gap is large."""
    admm = [h for h in history if h.get("phase") == "admm"]
    if not admm:
        return []
    lines = ["ADMM iteration  rho       reach  ||W-Z||/||W||  ||W-Y||/||W||  acc     projected  gap"]
    for h in admm:
        t = h.get("trial", {})
        lines.append(f"{h['iteration']:>14}  {h['rho']:<8.3g}  {h['reach']:<5.2f}  "
                     f"{h['residual_pattern']:<13.4f}  {h['residual_connectivity']:<13.4f}  "
                     f"{t.get('acc', float('nan')):<6.4f}  {t.get('projected_acc', float('nan')):<9.4f}  "
                     f"{t.get('gap', float('nan')) * 100:+.2f} points")
    worst = sorted(admm[-1]["layers"].items(), key=lambda kv: -max(kv[1].values(), default=0.0))[:3]
    lines.append("furthest from their sparse sets: " + ", ".join(
        f"{n} ({max(v.values(), default=0.0):.3f})" for n, v in worst))
    gap = admm[-1].get("trial", {}).get("gap")
    if gap is not None and gap > r.gap_warning:
        lines.append(f"warning: hard pruning after ADMM costs {gap * 100:.1f} points (gap_warning "
                     f"{r.gap_warning * 100:.1f}): ADMM did not bring the weights into the sparse sets; "
                     f"give it more steps (epochs, admm_iters) or a larger penalty_reach")
    return lines


def prune(model: nn.Module, train_loader: Iterable, rate: float = 8, library: str | torch.Tensor = "phase2", *,
          epochs: int | None = None, admm_iters: int | None = None, retrain_epochs: int | None = None,
          rho: float | None = None, lr: float | None = None, layers: Sequence[str] | None = None,
          connectivity_balanced: bool = False, oneshot: bool | None = None, eval_loader: Iterable | None = None,
          device: str = "cpu", progress: bool = True, recipe: PruneRecipe | None = None,
          conv1x1: str | None = None, distill: float | None = None, allocation: str | None = None,
          dynamic: float | None = None, output: Callable[[Any], torch.Tensor] | None = None,
          reconstruct: int | None = None, checkpoint: str | Path | None = None) -> nn.Module:
    """Pattern-prune ``model`` in place at a compression ``rate`` over its pruned layers and return it.

    ``train_loader`` is any re-iterable of ``(input, target)`` batches (cross-entropy loss).
    ``rate=2.25`` is pattern pruning only; a higher rate adds connectivity pruning that keeps
    ``2.25/rate`` of the kernels. ``conv1x1`` says how 1x1 convs are pruned: "grouped" (virtual
    3x3 kernels, the recipe's default), "connectivity" or "dense". By default the weights are
    projected once onto the pattern and connectivity sets and then retrained with masks for
    ``retrain_epochs`` (from the recipe's ``steps`` budget and the loader's length when unset: a
    small loader gets more passes). ``oneshot=False`` runs the paper's ADMM first: ``admm_iters``
    iterations of ``epochs`` primal SGD epochs each, with penalty ``rho``; setting any of those
    three selects ADMM by itself. ``dynamic`` (a fraction, e.g. 0.5) instead runs that fraction of
    the retraining epochs with dynamic masks, re-chosen from weights that keep training (SR-STE),
    before the masks freeze. ``distill`` the weight of distillation from the unpruned model
    (0 = off), ``allocation`` how kept kernels are spread over layers ("lamp" or "uniform").
    ``reconstruct`` (a number of training images, 0 = off) refits the kept weights after hard
    pruning by layer-wise least squares against the unpruned network's outputs
    (:mod:`~patsparse.pruning.reconstruct`).
    Unset knobs come from ``recipe`` (default :class:`PruneRecipe`), whose every field is
    documented. ``output`` picks the logits when
    the model's forward returns a tuple or dict. ``eval_loader`` is used for progress reports
    and to score the trial projection of every ADMM iteration (a few training batches otherwise).
    ``checkpoint``: a directory where the run stores its state after hard pruning and after every
    retraining epoch (:mod:`~patsparse.pruning.checkpoint`); a run stopped part-way and started
    again with the same arguments goes on from there (a stopped ADMM or dynamic-mask phase
    restarts). Delete the directory once the pruned model is saved.

    Raises InputError for an unreachable rate, a model without prunable convs, a bad
    library or knob, an empty or too small loader, or a forward that does not return logits,
    all before any training; DivergedError (the model holding its last good weights) if the
    loss becomes non-finite.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"prune: model must be a torch.nn.Module, got {type(model).__name__}")
    r = _recipe_from_args(recipe, rate, library, epochs=epochs, admm_iters=admm_iters,
                          retrain_epochs=retrain_epochs, rho=rho, lr=lr,
                          layers=list(layers) if layers is not None else None,
                          connectivity_balanced=connectivity_balanced or None,
                          oneshot=method_for(oneshot, {"epochs": epochs, "admm_iters": admm_iters, "rho": rho}),
                          conv1x1=conv1x1, distill=distill, allocation=allocation, dynamic=dynamic,
                          reconstruct=reconstruct)
    lib = pattern_library(library if isinstance(library, torch.Tensor) else r.library)
    plans = plan_layers(model, r.rate, r.layers, r.conv1x1, r.connectivity_balanced,
                        allocation=r.allocation, library=lib, min_layer_keep=r.min_layer_keep)
    model.to(device)
    net = model if output is None else _Selected(model, output)
    r = _check_loader(net, train_loader, r, device)
    batches = count_batches(train_loader)
    if r.seed is not None:
        torch.manual_seed(r.seed)
    teacher = Distillation.frozen_copy(net, r.distill, r.distill_temperature) if r.distill > 0 else None
    trial_data = eval_loader if eval_loader is not None else _FirstBatches(train_loader, 20)
    bn_trial = min(r.bn_batches, 20)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    method = (f"{r.admm_iters} ADMM iterations x {r.epochs} epochs" if not r.oneshot else
              f"dynamic masks fixed after {r.dynamic_epochs} epochs" if r.dynamic else "one-shot")
    log(progress, f"pruning {len(plans)} layers at {r.rate}x with {lib.shape[0]} patterns "
                   f"({method}, {r.retrain_epochs} retrain epochs, {r.allocation} allocation, "
                   f"distillation {'off' if teacher is None else r.distill})")
    state = PruneCheckpoint(checkpoint, r, model, lib, train_loader, batches) if checkpoint is not None else None
    if state is not None and state.pruned:
        spec, history = state.load_pruned(model, teacher.teacher if teacher is not None else None)
        log(progress, f"going on from {state.dir}: hard pruning was done, retraining continues")
    else:
        if not r.oneshot:
            steps = batches * r.epochs

            def on_iteration(it: int, record: dict) -> None:
                record["reach"] = r.reach(record["rho"], steps)
                record["trial"] = projection_gap(net, plans, lib, trial_data, train_loader, bn_trial, device)
                history.append({"phase": "admm", **record})
                log(progress, f"ADMM iteration {it + 1}/{r.admm_iters}: {fmt(record)}, "
                               f"projection gap {record['trial']['gap'] * 100:+.2f} points")

            run_admm(net, train_loader, plans, lib, rhos=r.rho_schedule(steps), epochs=r.epochs, lr=r.lr,
                     momentum=r.momentum, weight_decay=r.weight_decay, device=device, progress=progress,
                     distill=teacher, progressive=r.progressive, on_iteration=on_iteration)
        if r.dynamic:
            run_dynamic(net, train_loader, plans, lib, epochs=r.dynamic_epochs, lr=r.retrain_rate, momentum=r.momentum,
                        weight_decay=r.weight_decay, warmup=r.warmup, reach=r.dynamic_reach, every=r.dynamic_every,
                        progressive=r.progressive, device=device, progress=progress, eval_loader=eval_loader,
                        history=history, distill=teacher)
        before = copy.deepcopy(model) if r.reconstruct else None  # the refit's target
        spec = prune_planned(plans, lib, r.rate)
        if before is not None:
            record = refit_layers(model, before, spec, train_loader, r.reconstruct, device)
            history.append({"phase": "reconstruct", **record})
            log(progress, refit_summary(record))
        recalibrate_batchnorm(net, train_loader, r.bn_batches, device)
        if eval_loader is not None:
            from ..train.loop import evaluate

            history.append({"phase": "hard-pruned", "eval": evaluate(net, eval_loader, device=device)})
            log(progress, f"after hard pruning: {fmt(history[-1])}")
        if state is not None:
            state.save_pruned(model, spec, teacher.teacher if teacher is not None else None, history)
    if r.retrain_epochs > r.dynamic_epochs:
        masked_retrain(model, train_loader, spec_masks(spec), epochs=r.retrain_epochs - r.dynamic_epochs,
                       lr=r.retrain_rate,
                       momentum=r.momentum, weight_decay=r.weight_decay, warmup=r.warmup, device=device,
                       progress=progress, eval_loader=eval_loader, history=history, distill=teacher,
                       output=output, checkpoint=state.retrain if state is not None else None)
    check_weights(model, spec, "pruned model")  # the invariant the whole run promises
    model.patsparse_spec = spec
    model.patsparse_recipe = r
    model.patsparse_history = history
    for line in admm_summary(history, r):
        log(progress or line.startswith("warning"), line)
    # over every run of it when resumed: the checkpoint's clock started before ADMM
    seconds = state.retrain.elapsed() if state is not None else time.perf_counter() - t0
    history.append({"phase": "done", "seconds": seconds})
    log(progress, f"done in {seconds:.1f}s")
    return model
