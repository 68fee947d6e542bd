"""Pattern-aware ADMM (paper section 5.1), scaled form.

For every pruned layer with weight W, auxiliary variables Z (pattern set) and Y (connectivity
set) and scaled duals U, V. One ADMM iteration is:

1. primal: SGD epochs on  loss(W) + sum_layers rho/2 ||W - Z + U||_F^2 + rho/2 ||W - Y + V||_F^2
   (squared Frobenius norms: the gradient of the penalty is rho (W - Z + U), a pull that grows
   with the distance, which is what makes the weights drift into the constraint sets);
2. proximal: Z = project_pattern(W + U), Y = project_connectivity(W + V);
3. dual: U += W - Z, V += W - Y;
4. rho grows (``recipe.rho_growth``) up to ``recipe.rho_max``; the scaled duals are rescaled by
   old/new rho so the unscaled dual is unchanged (standard ADMM with a varying penalty).

Hard pruning and masked retraining follow (see :mod:`patsparse.pruning.api`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .layers import CONNECTIVITY, PATTERN, PATTERN_AND_CONNECTIVITY, LayerPlan
from .projection import project_connectivity, project_pattern


@dataclass
class _LayerVars:
    plan: LayerPlan
    z: torch.Tensor | None = None
    u: torch.Tensor | None = None
    y: torch.Tensor | None = None
    v: torch.Tensor | None = None
    pattern_ids: torch.Tensor | None = None


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
            if p.mode in (PATTERN, PATTERN_AND_CONNECTIVITY):
                lv.z, lv.pattern_ids = project_pattern(w, library)
                lv.u = torch.zeros_like(w)
            if p.mode in (CONNECTIVITY, PATTERN_AND_CONNECTIVITY):
                lv.y = project_connectivity(w, p.keep, p.balanced)[0]
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
    def update(self) -> dict[str, float]:
        """Proximal steps then dual updates; returns the relative primal residuals
        ||W - Z|| / ||W|| and ||W - Y|| / ||W|| summed over layers (how far from feasible)."""
        num_z = num_y = den = 0.0
        for lv in self.layers:
            w = lv.plan.module.weight.detach()
            den += float(w.pow(2).sum())
            if lv.z is not None:
                lv.z, lv.pattern_ids = project_pattern(w + lv.u, self.library)
                lv.u += w - lv.z
                num_z += float((w - lv.z).pow(2).sum())
            if lv.y is not None:
                lv.y = project_connectivity(w + lv.v, lv.plan.keep, lv.plan.balanced)[0]
                lv.v += w - lv.y
                num_y += float((w - lv.y).pow(2).sum())
        den = math.sqrt(den) or 1.0
        return {"residual_pattern": math.sqrt(num_z) / den, "residual_connectivity": math.sqrt(num_y) / den}

    def pattern_counts(self) -> torch.Tensor:
        """How many kernels currently select each library pattern (from Z), over all layers."""
        counts = torch.zeros(self.library.shape[0], dtype=torch.long)
        for lv in self.layers:
            if lv.pattern_ids is not None:
                counts += torch.bincount(lv.pattern_ids.flatten().cpu(), minlength=len(counts))
        return counts


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=momentum > 0)


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay from ``base`` at epoch 0 towards 0 (the last epoch is small but non-zero)."""
    return base * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def run_admm(model: nn.Module, loader: Iterable, plans: Sequence[LayerPlan], library: torch.Tensor,
             *, admm_iters: int, epochs: int, rho: float, rho_growth: float, rho_max: float,
             lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, device: str = "cpu",
             progress: bool = True, loss_fn: Callable | None = None,
             on_iteration: Callable[[int, dict[str, Any]], None] | None = None) -> ADMMState:
    """Run ``admm_iters`` ADMM iterations of ``epochs`` primal epochs each; returns the state
    (Z, U, Y, V and pattern choices) for hard pruning or pattern counting."""
    from ..train.loop import train_epoch

    state = ADMMState(plans, library, rho)
    optimizer = make_optimizer(model, lr, momentum, weight_decay)
    kwargs = {} if loss_fn is None else {"loss_fn": loss_fn}
    for it in range(admm_iters):
        state.set_rho(min(rho * rho_growth ** it, rho_max))
        stats: dict[str, Any] = {}
        for ep in range(epochs):
            stats = train_epoch(model, loader, optimizer, device=device, extra_loss=state.penalty,
                                progress=progress, desc=f"ADMM {it + 1}/{admm_iters} epoch {ep + 1}/{epochs}",
                                **kwargs)
        residuals = state.update()
        record = {"iteration": it + 1, "rho": state.rho, **stats, **residuals}
        if on_iteration is not None:
            on_iteration(it, record)
    return state
