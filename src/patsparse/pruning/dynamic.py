"""Dynamic masks: the pattern and connectivity masks keep being re-chosen while the weights train
(SR-STE, Zhou et al., ICLR 2021, with the pattern + connectivity projection in place of N:M).

Why: a one-shot projection decides from the dense weights alone which 4 taps of every kernel
and which kernels survive, and masked retraining can never revise that choice. Here the model
keeps dense weights W; every forward runs on their projection proj(W) (the projection of
:func:`~patsparse.pruning.projection.prune_layer`, with each layer plan's kernel budget), the
gradient at proj(W) is applied to W (straight-through), so a pruned weight that the loss wants
back can grow into the mask, and a decay ``lambda * (1 - mask) * W`` pulls the pruned entries
towards zero so the choice settles. The masks are re-derived from W every ``every`` steps.
Optionally the connectivity budget tightens gradually over the phase (cubic, Zhu & Gupta 2017),
so early steps keep every kernel and train towards the patterns alone.

Mechanics: between optimizer steps the model's weights hold proj(W) and :class:`DynamicMasks`
holds W. ``before_step`` (after backward, so the gradient was taken at proj(W)) puts W back and
adds the decay to the gradient; ``after_step`` (after the optimizer step) takes the new W,
re-derives the masks when due and writes proj(W) again. Leaving the context puts W back; the
caller then hard-prunes it and retrains with fixed masks (:func:`patsparse.pruning.api.prune`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..train.distill import Distillation
from .admm import warmup_cosine_factor
from .layers import PATTERN, LayerPlan, scheduled_keep
from .phase import count_batches, train_phase
from .projection import prune_layer
from .spec import PRUNED, layer_entry, layer_mask


class DynamicMasks:
    """Dense weights, current masks and the straight-through step of every planned layer.

    ``decay`` is lambda, ``every`` the optimizer steps between re-derivations of the masks, and
    ``ramp`` (optional) maps the step count to the fraction of the gradual connectivity schedule
    reached (:func:`~patsparse.pruning.layers.scheduled_keep`, "cubic"); without it every layer
    keeps its planned budget from the start. On entry the masks are derived from the model's
    weights and the weights replaced by their projection.
    """

    def __init__(self, plans: Sequence[LayerPlan], library: torch.Tensor, decay: float, every: int = 1,
                 ramp: Callable[[int], float] | None = None):
        self.plans, self.library = list(plans), library
        self.decay, self.every, self.ramp = float(decay), int(every), ramp
        self.steps = 0
        self.changed = 0  # kernels whose mask changed since the last epoch_info()
        self.dense = [p.module.weight.detach().clone() for p in self.plans]
        self.ids: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.derive()
        self.project()

    def budget(self, plan: LayerPlan) -> LayerPlan:
        """``plan`` with the kernel count its connectivity keeps at the current step."""
        if self.ramp is None or plan.mode == PATTERN:
            return plan
        return dataclasses.replace(plan, keep=scheduled_keep(plan, self.ramp(self.steps), "cubic"))

    @torch.no_grad()
    def derive(self) -> None:
        """Masks from the dense weights: those of their projection (``prune_layer``)."""
        ids = [prune_layer(w, self.budget(p), self.library)[1] for p, w in zip(self.plans, self.dense)]
        self.changed += sum(int((new != old).sum()) for new, old in zip(ids, self.ids))
        self.ids = ids
        self.masks = [layer_mask(layer_entry(p.module, p.mode, i), self.library).to(w.device, w.dtype)
                      for p, i, w in zip(self.plans, ids, self.dense)]

    @torch.no_grad()
    def project(self) -> None:
        """Write proj(W) = W * mask into the model's weights."""
        for p, w, m in zip(self.plans, self.dense, self.masks):
            p.module.weight.copy_(w * m)

    @torch.no_grad()
    def before_step(self, model: nn.Module | None = None) -> None:
        """Training-loop callback between backward and the optimizer step: the gradient, taken at
        proj(W), gets the decay ``lambda * (1 - mask) * W`` and is applied to W, put back."""
        for p, w, m in zip(self.plans, self.dense, self.masks):
            weight = p.module.weight
            if weight.grad is not None and self.decay:
                weight.grad.add_((1 - m) * w, alpha=self.decay)
            weight.copy_(w)

    @torch.no_grad()
    def after_step(self, model: nn.Module | None = None) -> None:
        """Training-loop callback after the optimizer step: keep the new W, re-derive the masks
        every ``every`` steps, and project again for the next forward."""
        self.steps += 1
        for p, w in zip(self.plans, self.dense):
            w.copy_(p.module.weight)
        if self.steps % self.every == 0:
            self.derive()
        self.project()

    def epoch_info(self) -> dict[str, Any]:
        """For the history: the fraction of kernels whose mask (pattern, or kept/pruned) changed
        since the last call, and the fraction of kernels the masks keep now."""
        kernels = sum(ids.numel() for ids in self.ids)
        kept = sum(int((ids != PRUNED).sum()) for ids in self.ids)
        info = {"mask_changes": self.changed / kernels, "kept": kept / kernels}
        self.changed = 0
        return info

    @torch.no_grad()
    def restore(self) -> None:
        """Put the dense weights W back into the model."""
        for p, w in zip(self.plans, self.dense):
            p.module.weight.copy_(w)

    def __enter__(self) -> "DynamicMasks":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def decay_for_reach(reach: float, lr: float, momentum: float, steps: int, warmup: float) -> float:
    """The decay lambda under which a pruned weight, pulled by the decay alone through ``steps``
    SGD steps of the warm-up + cosine schedule at base rate ``lr``, keeps about exp(-reach) of
    its value: each step removes ``lr_t * lambda / (1 - momentum)`` of it once momentum has
    built up. Stated as a reach, the decay means the same at any budget."""
    lr_sum = lr * sum(warmup_cosine_factor(s, steps, warmup) for s in range(steps))
    return reach * (1 - momentum) / max(lr_sum, 1e-12)


def run_dynamic(net: nn.Module, loader: Iterable, plans: Sequence[LayerPlan], library: torch.Tensor, *,
                epochs: int, lr: float, momentum: float, weight_decay: float, warmup: float, reach: float,
                every: int = 1, progressive: bool = False, device: str = "cpu", progress: bool = True,
                eval_loader: Iterable | None = None, history: list | None = None,
                distill: Distillation | None = None) -> None:
    """Train ``net`` for ``epochs`` epochs with dynamic masks on the ``plans``' layers; the model
    ends with its dense weights W (the caller hard-prunes them). ``reach`` sets the decay
    (:func:`decay_for_reach`); ``progressive`` tightens connectivity from every kernel to the
    plans' budgets over the phase (cubic)."""
    steps = epochs * count_batches(loader)
    decay = decay_for_reach(reach, lr, momentum, steps, warmup)
    ramp = (lambda step: step / steps) if progressive else None
    with DynamicMasks(plans, library, decay, every, ramp) as masks:
        train_phase(net, loader, "dynamic", epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    warmup=warmup, device=device, progress=progress, eval_loader=eval_loader, history=history,
                    distill=distill, before_step=masks.before_step, after_step=masks.after_step,
                    epoch_info=masks.epoch_info)
