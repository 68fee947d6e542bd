"""Euclidean projections onto the pattern set and the connectivity set (the ADMM proximal steps).

Both are vectorised over a whole layer: a VGG-16 has 1.6 million 3x3 kernels, so a Python loop
over kernels is not an option. Pattern projection keeps, for every kernel, the library mask that
preserves the largest squared L2 norm (the argmax of ``(w*w) @ masks``, first index on ties).
Connectivity projection keeps the kernels of largest L2 norm, per layer or the same number per
filter ("filter-balanced", which gives the compiler equal work per filter).

A 1x1 conv's kernels are its virtual 3x3 kernels (:mod:`patsparse.pruning.grouping`): laid out
as zero-padded rows of 9, they go through the same code, and the short last group of a layer
whose input channels are not a multiple of 9 gets the cut mask that keeps the most energy.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..patterns.library import pattern_library
from .grouping import GROUP, from_kernel_rows, kernel_rows
from .layers import CONNECTIVITY, PATTERN, LayerPlan, plan_layers
from .spec import PRUNED, layer_entry, make_spec

# Largest (kernels x patterns) score block computed at once: bounds memory for 126 candidates
# on a VGG-16 layer (2.4M kernels x 126 x 4 bytes would be 1.2 GB) while staying vectorised.
_SCORE_BLOCK = 1 << 22


def _shape(weight: object) -> object:
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__


def _check_pattern_weight(weight: torch.Tensor, what: str) -> bool:
    """Validate a weight for pattern projection; True when it is a 1x1 conv (grouped)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or tuple(weight.shape[2:]) not in ((3, 3), (1, 1)):
        raise InputError(f"{what}: expected a conv weight of shape (O, I, 3, 3), or (O, I, 1, 1) for "
                         f"virtual 3x3 kernels, got {_shape(weight)}")
    grouped = tuple(weight.shape[2:]) == (1, 1)
    if grouped and weight.shape[1] < GROUP:
        raise InputError(f"{what}: a 1x1 conv weight needs at least {GROUP} input channels to form a virtual "
                         f"3x3 kernel, got {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise InputError(f"{what}: weight has non-finite values (NaN or inf)")
    return grouped


def project_pattern(weight: torch.Tensor, library: torch.Tensor | str = "phase2",
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Project every 3x3 kernel (or every virtual 3x3 kernel of a 1x1 conv) onto its best
    library pattern.

    Returns ``(projected, pattern_ids)``: ``projected`` has the shape of ``weight`` with only the
    entries of the chosen mask kept; ``pattern_ids`` is (O, K) long, the chosen mask's index, K
    being I for 3x3 kernels and ceil(I / 9) for a 1x1 conv. The short last group of a 1x1 conv
    keeps the cut mask of largest kept energy, which may hold fewer than 4 entries.
    An all-zero kernel gets id 0 (it is the connectivity projection that marks kernels pruned).
    """
    grouped = _check_pattern_weight(weight, "project_pattern")
    lib = pattern_library(library)
    w = weight.detach()
    rows = kernel_rows(w, grouped)
    flat = rows.reshape(-1, 9)
    lib_flat = lib.to(dtype=w.dtype, device=w.device).reshape(-1, 9)
    n = flat.shape[0]
    step = max(1, _SCORE_BLOCK // lib_flat.shape[0])
    ids = torch.empty(n, dtype=torch.long, device=w.device)
    for start in range(0, n, step):  # blocks of kernels, not single kernels: bounded memory
        chunk = flat[start:start + step]
        ids[start:start + step] = ((chunk * chunk) @ lib_flat.T).argmax(dim=1)
    projected = from_kernel_rows(flat * lib_flat[ids], w.shape, grouped)
    return projected, ids.view(rows.shape[:2])


def kernels_to_keep(keep: int | float, out_channels: int, in_channels: int,
                    balanced: bool = False, what: str = "layer") -> int:
    """How many kernels per filter (balanced) or per layer (not) a ``keep`` argument means.

    ``keep`` is a fraction in (0, 1] (a float) or a count of kernels in the layer (an int).
    """
    total = out_channels * in_channels
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise InputError(f"{what}: keep must be an int count or a float fraction, got {keep!r}")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise InputError(f"{what}: keep fraction must be in (0, 1], got {keep}")
        count = keep * (in_channels if balanced else total)
        return max(1, min(in_channels if balanced else total, int(round(count))))
    if not 1 <= keep <= total:
        raise InputError(f"{what}: keep count must be in [1, {total}] kernels, got {keep}")
    if balanced:
        return max(1, int(round(keep / out_channels)))
    return int(keep)


def project_connectivity(weight: torch.Tensor, keep: int | float, balanced: bool = False,
                         grouped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the kernels of largest L2 norm and zero the rest.

    ``keep``: a fraction of kernels (float in (0, 1]) or a count (int). ``balanced=True`` keeps
    the same number in every filter (output channel). ``grouped=True`` takes a 1x1 conv's
    virtual 3x3 kernels (whole groups of 9 input channels) as its kernels. Returns
    ``(projected, kept)`` with ``kept`` an (O, K) bool mask. Ties are broken by position
    (stable sort), so the result is deterministic.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise InputError(f"project_connectivity: expected a conv weight (O, I, kh, kw), got {_shape(weight)}")
    if grouped and (tuple(weight.shape[2:]) != (1, 1) or weight.shape[1] < GROUP):
        raise InputError(f"project_connectivity: grouped=True needs a 1x1 conv weight with at least {GROUP} "
                         f"input channels, got {tuple(weight.shape)}")
    w = weight.detach()
    rows = kernel_rows(w, grouped)
    o, i = rows.shape[:2]
    k = kernels_to_keep(keep, o, i, balanced, "project_connectivity")
    norms = rows.norm(dim=2)
    if balanced:
        order = torch.sort(norms, dim=1, descending=True, stable=True).indices[:, :k]
        kept = torch.zeros(o, i, dtype=torch.bool, device=w.device)
        kept.scatter_(1, order, True)
    else:
        order = torch.sort(norms.flatten(), descending=True, stable=True).indices[:k]
        kept = torch.zeros(o * i, dtype=torch.bool, device=w.device)
        kept[order] = True
        kept = kept.view(o, i)
    return from_kernel_rows(rows * kept[:, :, None].to(w.dtype), w.shape, grouped), kept


def prune_layer(weight: torch.Tensor, plan: LayerPlan, library: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-prune one layer's weight per its plan: pattern projection, then keep the ``plan.keep``
    kernels (virtual kernels for a grouped 1x1 conv) of largest remaining norm. Returns
    ``(projected, kernel_ids)`` (-1 = pruned).

    The one place that turns a plan into final weights, shared by one-shot projection and the
    hard-pruning step that ends ADMM.
    """
    if plan.mode == CONNECTIVITY:
        projected, kept = project_connectivity(weight, plan.keep, plan.balanced)
        return projected, torch.where(kept, 0, PRUNED)
    projected, ids = project_pattern(weight, library)
    if plan.mode != PATTERN:
        projected, kept = project_connectivity(projected, plan.keep, plan.balanced, plan.grouped)
        ids = torch.where(kept, ids, PRUNED)
    return projected, ids


def prune_planned(plans: Sequence[LayerPlan], library: torch.Tensor, rate: float | None) -> dict:
    """Hard-prune every planned layer in place and return the sparsity spec."""
    entries = {}
    with torch.no_grad():
        for p in plans:
            projected, ids = prune_layer(p.module.weight, p, library)
            p.module.weight.copy_(projected)
            entries[p.name] = layer_entry(p.module, p.mode, ids)
    return make_spec(library, entries, rate)


def project_model(model: nn.Module, rate: float = 8.0, library: torch.Tensor | str = "phase2",
                  layers: Sequence[str] | None = None, *, balanced: bool = False,
                  conv1x1: str = "grouped", allocation: str = "uniform") -> dict:
    """One-shot pattern (+ connectivity) pruning of a model in place, without training.

    Useful to make pattern-sparse models at a given rate quickly (benchmarks, experiments);
    accuracy needs :func:`patsparse.prune`. ``layers`` and ``conv1x1`` select the layers as in
    :func:`~patsparse.pruning.layers.select_layers`; ``allocation`` spreads the kept kernels over layers
    as in :func:`~patsparse.pruning.layers.plan_layers` (uniform by default: the same fraction
    in every layer, so that speed measurements do not depend on the weights' values). Returns
    the sparsity spec, also attached to the model as ``model.patsparse_spec``.
    """
    lib = pattern_library(library)
    plans = plan_layers(model, rate, layers, conv1x1, balanced, allocation=allocation, library=lib)
    spec = prune_planned(plans, lib, rate)
    model.patsparse_spec = spec
    return spec
