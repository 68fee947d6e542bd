"""``patsparse.prune``: the one line that pattern-prunes a user's CNN.

Flow: plan layers and kernel budgets for the rate -> ADMM (pattern + connectivity) -> hard prune
with the final projections -> masked retraining -> verify the spec against the weights. The
model is pruned in place and returned with ``model.patsparse_spec`` (the sparsity spec),
``model.patsparse_recipe`` and ``model.patsparse_history`` (per-phase losses/accuracies) attached.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..patterns.library import pattern_library
from .admm import cosine_lr, make_optimizer, run_admm
from .layers import plan_layers
from .masks import MaskEnforcer
from .projection import prune_planned
from .recipe import PruneRecipe
from .spec import check_weights


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[patsparse prune] {msg}", flush=True)


def masked_retrain(model: nn.Module, loader: Iterable, spec: dict, *, epochs: int, lr: float,
                   momentum: float, weight_decay: float, device: str = "cpu", progress: bool = True,
                   eval_loader: Iterable | None = None, history: list | None = None) -> None:
    """Retrain the kept weights with cosine-decayed SGD while every pruned weight stays zero."""
    from ..train.loop import evaluate, train_epoch

    optimizer = make_optimizer(model, lr, momentum, weight_decay)
    with MaskEnforcer.from_spec(model, spec) as enforcer:
        for ep in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, ep, epochs)
            stats = train_epoch(model, loader, optimizer, device=device, after_step=enforcer.after_step,
                                progress=progress, desc=f"retrain {ep + 1}/{epochs}")
            record = {"phase": "retrain", "epoch": ep + 1, **stats}
            if eval_loader is not None:
                record["eval"] = evaluate(model, eval_loader, device=device)
            _log(progress, f"retrain epoch {ep + 1}/{epochs}: {_fmt(record)}")
            if history is not None:
                history.append(record)


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


def _fmt(record: dict) -> str:
    parts = []
    for k, v in record.items():
        if k in ("phase", "epoch", "iteration"):
            continue
        if isinstance(v, dict):
            parts.append(f"{k} acc {v.get('acc', float('nan')):.4f}")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
    return ", ".join(parts)


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


def prune(model: nn.Module, train_loader: Iterable, rate: float = 8, library: str | torch.Tensor = "phase2", *,
          epochs: int | None = None, admm_iters: int | None = None, retrain_epochs: int | None = None,
          rho: float | None = None, lr: float | None = None, layers: Sequence[str] | None = None,
          connectivity_balanced: bool = False, oneshot: bool = False, eval_loader: Iterable | None = None,
          device: str = "cpu", progress: bool = True, recipe: PruneRecipe | None = None,
          conv1x1: bool = False) -> nn.Module:
    """Pattern-prune ``model`` in place at a 3x3-conv compression ``rate`` and return it.

    ``train_loader`` is any re-iterable of ``(input, target)`` batches (cross-entropy loss).
    ``rate=2.25`` is pattern pruning only; a higher rate adds connectivity pruning that keeps
    ``2.25/rate`` of the kernels. ``epochs`` is the primal SGD epochs per ADMM iteration,
    ``admm_iters`` the ADMM iterations, ``retrain_epochs`` the masked retraining epochs. Unset
    knobs come from ``recipe`` (default :class:`PruneRecipe`), whose every field is documented.
    ``oneshot=True`` skips ADMM (projection only, then retraining if ``retrain_epochs``).
    Raises InputError for an unreachable rate, a model without prunable 3x3 convs, a bad
    library or knob, before any training.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"prune: model must be a torch.nn.Module, got {type(model).__name__}")
    r = _recipe_from_args(recipe, rate, library, epochs=epochs, admm_iters=admm_iters,
                          retrain_epochs=retrain_epochs, rho=rho, lr=lr,
                          layers=list(layers) if layers is not None else None,
                          connectivity_balanced=connectivity_balanced or None, oneshot=oneshot or None,
                          conv1x1=conv1x1 or None)
    lib = pattern_library(library if isinstance(library, torch.Tensor) else r.library)
    plans = plan_layers(model, r.rate, r.layers, r.conv1x1, r.connectivity_balanced)
    if r.seed is not None:
        torch.manual_seed(r.seed)
    model.to(device)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    _log(progress, f"pruning {len(plans)} layers at {r.rate}x with {lib.shape[0]} patterns "
                   f"({'one-shot' if r.oneshot else f'{r.admm_iters} ADMM iterations x {r.epochs} epochs'}, "
                   f"{r.retrain_epochs} retrain epochs)")
    if not r.oneshot:
        def on_iteration(it: int, record: dict) -> None:
            history.append({"phase": "admm", **record})
            _log(progress, f"ADMM iteration {it + 1}/{r.admm_iters}: {_fmt(record)}")

        run_admm(model, train_loader, plans, lib, admm_iters=r.admm_iters, epochs=r.epochs, rho=r.rho,
                 rho_growth=r.rho_growth, rho_max=r.rho_max, lr=r.lr, momentum=r.momentum,
                 weight_decay=r.weight_decay, device=device, progress=progress, on_iteration=on_iteration)
    spec = prune_planned(plans, lib, r.rate)
    recalibrate_batchnorm(model, train_loader, r.bn_batches, device)
    if eval_loader is not None:
        from ..train.loop import evaluate

        history.append({"phase": "hard-pruned", "eval": evaluate(model, eval_loader, device=device)})
        _log(progress, f"after hard pruning: {_fmt(history[-1])}")
    if r.retrain_epochs:
        masked_retrain(model, train_loader, spec, epochs=r.retrain_epochs, lr=r.retrain_lr or r.lr,
                       momentum=r.momentum, weight_decay=r.weight_decay, device=device,
                       progress=progress, eval_loader=eval_loader, history=history)
    check_weights(model, spec, "pruned model")  # the invariant the whole run promises
    model.patsparse_spec = spec
    model.patsparse_recipe = r
    model.patsparse_history = history
    _log(progress, f"done in {time.perf_counter() - t0:.1f}s")
    return model
