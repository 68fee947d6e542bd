"""The two baselines the paper compares pattern pruning against, at the same rate.

- Unstructured magnitude pruning (Han et al. 2015): keep the largest |w|, anywhere.
- Structured L1-norm filter pruning (Li et al. 2017): keep the filters of largest L1 norm,
  the same fraction in every layer.

Both prune the same layers as pattern pruning by default (every 3x3 conv but the first, every
1x1 conv but the first and the classifier, see :func:`patsparse.pruning.layers.select_layers`) and are retrained with the same masked-retraining
machinery (:class:`patsparse.pruning.masks.MaskEnforcer`), so a comparison at equal rate and equal
epochs differs only in *which* weights are kept.

Rate accounting is the one used for every row of the accuracy grid: dense weights / non-zero
weights over the pruned convs (:func:`measured_rate`). For filter pruning this counts only
the removed filters' own weights; a physically slimmed network would also drop the next layer's
kernels reading a removed channel. Here those kernels stay (their input is the BatchNorm shift
of a zeroed channel, a constant), which is the usual masked formulation and does not favour
the baseline.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..train.distill import Distillation
from .layers import select_layers
from .masks import MaskEnforcer

METHODS = ("magnitude", "filter")


def pruned_convs(model: nn.Module, layers: Sequence[str] | None = None) -> list[tuple[str, nn.Conv2d]]:
    """The convs a baseline prunes: the same selection as pattern pruning (3x3 and 1x1 convs)."""
    return [(n, m) for n, m, _ in select_layers(model, layers)]


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 1:
        raise InputError(f"rate must be a finite number >= 1 (dense weights / kept weights), got {rate!r}")


def magnitude_masks(model: nn.Module, rate: float, layers: Sequence[str] | None = None,
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """0/1 masks keeping the largest-magnitude weights so the pruned convs reach ``rate``.

    ``scope="layer"`` keeps round(n / rate) weights in each layer (the same per-layer rate as the
    pattern rows); ``"global"`` ranks all pruned layers' weights together (ties broken by order).
    """
    _check_rate(rate)
    convs = pruned_convs(model, layers)
    if scope == "layer":
        out = {}
        for name, m in convs:
            w = m.weight.detach().abs().flatten()
            out[name] = _top_mask(w, max(1, round(w.numel() / rate))).view_as(m.weight)
        return out
    if scope == "global":
        flat = torch.cat([m.weight.detach().abs().flatten() for _, m in convs])
        mask = _top_mask(flat, max(1, round(flat.numel() / rate)))
        out, start = {}, 0
        for name, m in convs:
            n = m.weight.numel()
            out[name] = mask[start:start + n].view_as(m.weight)
            start += n
        return out
    raise InputError(f"magnitude pruning scope must be 'layer' or 'global', got {scope!r}")


def _top_mask(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Exactly ``keep`` ones at the largest ``values`` (ties: the first index wins)."""
    mask = torch.zeros_like(values)
    mask[torch.topk(values, keep, sorted=False).indices] = 1.0
    return mask


def filter_masks(model: nn.Module, rate: float, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """0/1 masks zeroing whole output filters: in each pruned conv the filters of largest L1 norm
    are kept, about 1/``rate`` of them (at least one per layer).

    Per-layer counts are rounded so that the kept weights over all pruned convs come as close to
    total / rate as whole filters allow (within half of the smallest filter): rounding each layer
    alone would miss the rate by up to half a filter per layer.
    """
    _check_rate(rate)
    convs = pruned_convs(model, layers)
    sizes = [m.weight[0].numel() for _, m in convs]
    filters = [m.weight.shape[0] for _, m in convs]
    target = sum(s * f for s, f in zip(sizes, filters)) / rate
    counts = [max(1, math.floor(f / rate)) for f in filters]
    while True:  # add one filter at a time where the layer is furthest below its share
        kept = sum(s * c for s, c in zip(sizes, counts))
        room = [i for i in range(len(convs)) if counts[i] < filters[i] and kept + sizes[i] / 2 <= target]
        if not room:
            break
        i = min(room, key=lambda j: (counts[j] + 1) / filters[j])
        counts[i] += 1
    out = {}
    for (name, m), keep in zip(convs, counts):
        w = m.weight.detach()
        rows = _top_mask(w.abs().flatten(1).sum(1), keep)
        out[name] = rows.view(-1, 1, 1, 1).expand_as(w).clone()
    return out


def baseline_masks(model: nn.Module, method: str, rate: float, layers: Sequence[str] | None = None,
                   ) -> dict[str, torch.Tensor]:
    """Masks of ``method`` ("magnitude" or "filter") at ``rate``."""
    if method == "magnitude":
        return magnitude_masks(model, rate, layers)
    if method == "filter":
        return filter_masks(model, rate, layers)
    raise InputError(f"unknown baseline method {method!r}; choose one of {METHODS}")


def measured_rate(model: nn.Module, names: Iterable[str]) -> float:
    """Dense weights / non-zero weights over the named convs: the rate every grid row reports,
    computed from the weights themselves rather than from what a pruner says it did."""
    modules = dict(model.named_modules())
    total = kept = 0
    for name in names:
        if name not in modules:
            raise InputError(f"measured_rate: model has no layer named {name!r}")
        w = modules[name].weight.detach()
        total += w.numel()
        kept += int(torch.count_nonzero(w))
    if total == 0:
        raise InputError("measured_rate: no layers given")
    return total / kept if kept else math.inf


def prune_baseline(model: nn.Module, train_loader: Iterable, method: str, rate: float, *,
                   epochs: int = 1, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                   layers: Sequence[str] | None = None, device: str = "cpu", progress: bool = True,
                   distill: float = 0.0, distill_temperature: float = 4.0) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place by ``method`` at ``rate``, then retrain it for ``epochs`` with the
    masks held, by the pattern pruner's own retraining (:func:`~patsparse.pruning.api.masked_retrain`:
    optimizer, schedule and optional distillation from the unpruned model), so that equal
    epochs mean an equal budget. Returns the masks."""
    from .api import masked_retrain

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise InputError(f"epochs must be an int >= 0, got {epochs!r}")
    teacher = Distillation.frozen_copy(model, distill, distill_temperature) if distill > 0 else None
    masks = baseline_masks(model, method, rate, layers)
    model.to(device)
    if epochs:
        masked_retrain(model, train_loader, masks, epochs=epochs, lr=lr, momentum=momentum,
                       weight_decay=weight_decay, device=device, progress=progress, distill=teacher)
    else:
        MaskEnforcer(model, masks).remove()  # applies the masks once
    return masks
