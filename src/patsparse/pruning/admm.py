"""Pattern-aware ADMM (paper section 5.1), scaled form.

For every pruned layer with weight W, auxiliary variables Z (pattern set) and Y (connectivity
set) and scaled duals U, V. One ADMM iteration is:

1. primal: SGD epochs on  loss(W) + sum_layers rho/2 ||W - Z + U||_F^2 + rho/2 ||W - Y + V||_F^2
   (squared Frobenius norms: the gradient of the penalty is rho (W - Z + U), a pull that grows
   with the distance, which is what makes the weights drift into the constraint sets);
2. proximal: Z = project_pattern(W + U), Y = project_connectivity(W + V) (a 1x1 conv's
   kernels being its virtual 3x3 kernels, :mod:`patsparse.pruning.grouping`);
3. dual: U += W - Z, V += W - Y;
4. rho follows a schedule (:meth:`PruneRecipe.rho_schedule`, derived from the run's own step
   count so the penalty acts at any budget); the scaled duals are rescaled by old/new rho so the
   unscaled dual is unchanged (standard ADMM with a varying penalty).

With ``progressive`` connectivity the kept-kernel count of every layer shrinks geometrically
over the iterations to its target, so the first iterations do not pull towards a set that
later iterations will leave anyway.

Hard pruning and masked retraining follow (see :mod:`patsparse.pruning.api`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import DivergedError
from ..train.distill import Distillation
from .layers import CONNECTIVITY, PATTERN, LayerPlan, scheduled_keep
from .projection import project_connectivity, project_pattern


@dataclass
class _LayerVars:
    plan: LayerPlan
    z: torch.Tensor | None = None
    u: torch.Tensor | None = None
    y: torch.Tensor | None = None
    v: torch.Tensor | None = None
    pattern_ids: torch.Tensor | None = None
    keep: int | None = None  # kernels the connectivity set keeps now (== plan.keep at the end)


class ADMMState:
    """The auxiliary and dual variables of every pruned layer, plus rho.

    Z starts as the projection of the current weights and U at zero (likewise Y, V), so the
    penalty is zero for weights already in the constraint sets.
    """

    def __init__(self, plans: Sequence[LayerPlan], library: torch.Tensor, rho: float):
        self.library = library
        self.rho = float(rho)
        self.layers: list[_LayerVars] = []
        for p in plans:
            w = p.module.weight.detach()
            lv = _LayerVars(p)
            if p.mode != CONNECTIVITY:
                lv.z, lv.pattern_ids = project_pattern(w, library)
                lv.u = torch.zeros_like(w)
            if p.mode != PATTERN:
                lv.keep = p.keep
                lv.y = project_connectivity(w, p.keep, p.balanced, p.grouped)[0]
                lv.v = torch.zeros_like(w)
            self.layers.append(lv)

    @torch.no_grad()
    def set_rho(self, rho: float) -> None:
        """Change rho, rescaling the scaled duals so the unscaled dual rho*U stays the same
        (Boyd et al. 2011, 3.4.1); without this every rho increase inflates the duals, Z runs
        away from W and the residual grows instead of shrinking."""
        rho = float(rho)
        if rho != self.rho:
            for lv in self.layers:
                for dual in (lv.u, lv.v):
                    if dual is not None:
                        dual.mul_(self.rho / rho)
            self.rho = rho

    @torch.no_grad()
    def set_progress(self, fraction: float) -> None:
        """Keep ``(plan.keep / kernels) ** fraction`` of every connectivity layer's kernels:
        all of them at 0, the planned count at 1; Y is re-projected with the new count."""
        for lv in self.layers:
            p = lv.plan
            if lv.y is None:
                continue
            keep = scheduled_keep(p, fraction, "geometric")
            if keep != lv.keep:
                lv.keep = keep
                lv.y = project_connectivity(p.module.weight.detach() + lv.v, keep, p.balanced, p.grouped)[0]

    def penalty(self, model: nn.Module | None = None) -> torch.Tensor:
        """sum rho/2 ||W - Z + U||^2 + rho/2 ||W - Y + V||^2 (differentiable in W).

        Signature fits the training loop's ``extra_loss(model)`` callback.
        """
        total = None
        for lv in self.layers:
            w = lv.plan.module.weight
            for aux, dual in ((lv.z, lv.u), (lv.y, lv.v)):
                if aux is not None:
                    term = (w - aux + dual).pow(2).sum()
                    total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """Proximal steps then dual updates. Returns the relative primal residuals
        ||W - Z|| / ||W|| and ||W - Y|| / ||W|| over all layers (how far from feasible), and
        per layer under ``"layers"``."""
        num_z = num_y = den = 0.0
        per_layer: dict[str, dict[str, float]] = {}
        for lv in self.layers:
            w = lv.plan.module.weight.detach()
            sq = float(w.pow(2).sum())
            den += sq
            rec = per_layer[lv.plan.name] = {}
            if lv.z is not None:
                lv.z, lv.pattern_ids = project_pattern(w + lv.u, self.library)
                lv.u += w - lv.z
                d = float((w - lv.z).pow(2).sum())
                num_z += d
                rec["pattern"] = math.sqrt(d / sq) if sq else 0.0
            if lv.y is not None:
                lv.y = project_connectivity(w + lv.v, lv.keep, lv.plan.balanced, lv.plan.grouped)[0]
                lv.v += w - lv.y
                d = float((w - lv.y).pow(2).sum())
                num_y += d
                rec["connectivity"] = math.sqrt(d / sq) if sq else 0.0
        den = math.sqrt(den) or 1.0
        return {"residual_pattern": math.sqrt(num_z) / den, "residual_connectivity": math.sqrt(num_y) / den,
                "layers": per_layer}

    def pattern_counts(self, grouped: bool | None = None) -> torch.Tensor:
        """How many kernels currently select each library pattern (from Z), over all layers,
        or only over the grouped 1x1 convs' virtual kernels (``grouped=True``) or only over 3x3
        kernels (``grouped=False``)."""
        counts = torch.zeros(self.library.shape[0], dtype=torch.long)
        for lv in self.layers:
            if lv.pattern_ids is not None and grouped in (None, lv.plan.grouped):
                counts += torch.bincount(lv.pattern_ids.flatten().cpu(), minlength=len(counts))
        return counts


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=momentum > 0)


def geometric_rhos(rho: float, growth: float, cap: float, iters: int) -> list[float]:
    """``rho * growth ** it`` capped at ``cap``, for ``iters`` iterations: an explicit schedule."""
    return [min(rho * growth ** it, cap) for it in range(iters)]


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay from ``base`` at epoch 0 towards 0 (the last epoch is small but non-zero)."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over ``warmup`` of the ``steps``, then cosine to zero.

    Why per step: with a short budget (a few epochs of a small loader) a per-epoch schedule
    spends a whole epoch at each of a handful of rates; the warm-up lets momentum rebuild after
    hard pruning has moved the weights, instead of taking the first steps at the full rate.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, steps, warmup))


def warmup_cosine_factor(step: int, steps: int, warmup: float) -> float:
    """The multiple of the base learning rate :func:`warmup_cosine` gives at ``step``."""
    ramp = max(1, round(warmup * steps))
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, steps - ramp))))


def _first_nonfinite(plans: Sequence[LayerPlan]) -> str | None:
    for p in plans:
        if not bool(torch.isfinite(p.module.weight).all()):
            return p.name
    return None


def run_admm(model: nn.Module, loader: Iterable, plans: Sequence[LayerPlan], library: torch.Tensor,
             *, rhos: Sequence[float], epochs: int, lr: float, momentum: float = 0.9,
             weight_decay: float = 5e-4, device: str = "cpu", progress: bool = True,
             loss_fn: Callable | None = None, distill: Distillation | None = None,
             progressive: bool = False,
             on_iteration: Callable[[int, dict[str, Any]], None] | None = None) -> ADMMState:
    """Run one ADMM iteration of ``epochs`` primal epochs per entry of ``rhos`` (its penalty
    weight); returns the state (Z, U, Y, V and pattern choices) for hard pruning or counting.

    A non-finite loss stops the run with :class:`DivergedError` naming the iteration and the
    first layer whose weights went non-finite; the model is first put back to the weights it
    had at the start of that iteration, so nothing earlier is lost.
    """
    from ..train.loop import reshuffle, train_epoch

    iters = len(rhos)
    state = ADMMState(plans, library, rhos[0])
    optimizer = make_optimizer(model, lr, momentum, weight_decay)
    kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
    for it, rho in enumerate(rhos):
        state.set_rho(rho)
        if progressive:
            state.set_progress((it + 1) / iters)
        good = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stats: dict[str, Any] = {}
        try:
            for ep in range(epochs):
                reshuffle(loader, it * epochs + ep)
                stats = train_epoch(model, loader, optimizer, device=device, extra_loss=state.penalty,
                                    progress=progress, distill=distill,
                                    desc=f"ADMM {it + 1}/{iters} epoch {ep + 1}/{epochs}", **kwargs)
        except DivergedError as e:
            layer = _first_nonfinite(plans)
            model.load_state_dict(good)
            where = f"layer {layer} went non-finite first" if layer else "the pruned weights stayed finite"
            raise DivergedError(f"ADMM iteration {it + 1}/{iters} (rho {rho:.3g}) diverged: {e}; {where}. "
                                f"The model holds its weights from the start of that iteration; lower "
                                f"lr or penalty_reach") from None
        residuals = state.update()
        record = {"iteration": it + 1, "rho": state.rho, **stats, **residuals}
        if on_iteration is not None:
            on_iteration(it, record)
    return state
