"""Activation-aware saliency: how much each weight matters given the inputs it multiplies.

Why: the projections keep the weights of largest magnitude, but a weight's contribution to a
conv's output is the weight times its input, so a large weight on an input channel that is
nearly always small (a BatchNorm with a small gain before it, a channel a ReLU mostly zeroes)
matters less than a smaller weight on a busy channel. Scoring weight ``w`` by ``w^2 E[x^2]``,
with ``x`` the input value it multiplies, is the diagonal of the layer's output-error Hessian
(Optimal Brain Damage, LeCun et al. 1990; Wanda, Sun et al. 2023, for LLMs): removing ``w``
adds ``w^2 E[x^2]`` to the expected squared output error when the inputs are uncorrelated.

This module measures ``E[x^2]`` for every pruned conv on a few training images of the unpruned
model, one value per weight position (input channel and tap: border taps see the zero padding
less often), broadcast to the weight's shape. The projections then choose patterns, kernels and
per-layer budgets on ``w * sqrt(E[x^2])`` instead of ``w``; the kept weights keep their values.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerPlan
from .reconstruct import calibration_batches


def _tap_sums(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over images and output positions of ``x^2`` at every (input channel, tap) of ``conv``,
    (C, kh, kw) float64, and the number of terms: the diagonal of im2col's ``X X^T`` without
    unfolding (one strided slice per tap)."""
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    sq = F.pad(x.detach().double(), conv._reversed_padding_repeated_twice, mode=mode).pow(2)
    (kh, kw), (dh, dw), (sh, sw) = conv.kernel_size, conv.dilation, conv.stride
    ho = (sq.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (sq.shape[3] - dw * (kw - 1) - 1) // sw + 1
    sums = sq.new_zeros(sq.shape[1], kh, kw)
    for u in range(kh):
        for v in range(kw):
            tap = sq[:, :, u * dh:u * dh + (ho - 1) * sh + 1:sh, v * dw:v * dw + (wo - 1) * sw + 1:sw]
            sums[:, u, v] = tap.sum(dim=(0, 2, 3))
    return sums, sq.shape[0] * ho * wo


def to_weight_shape(moments: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """(C, kh, kw) input moments as the conv weight's (O, C / groups, kh, kw): filter ``o`` of
    group ``g`` reads input channels ``[g C/groups, (g+1) C/groups)``."""
    o, g = conv.out_channels, conv.groups
    per_group = moments.reshape(g, -1, *moments.shape[1:])
    return per_group.repeat_interleave(o // g, dim=0)


@torch.no_grad()
def input_moments(model: nn.Module, plans: Sequence[LayerPlan], loader: Iterable, images: int,
                  device: str = "cpu") -> dict[str, torch.Tensor]:
    """``E[x^2]`` of the input every weight of every planned conv multiplies, over the loader's
    first ``images`` images run through ``model`` in eval mode, as a tensor of the weight's
    shape and dtype per conv name, scaled to mean 1 per layer (only ratios within a layer
    matter to the projections and to the layer-normalised allocation). A conv the forward never
    reaches gets no entry (its weights are scored by magnitude)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Conv2d, args: tuple) -> None:
            s, n = _tap_sums(module, args[0])
            sums[name] = s if name not in sums else sums[name] + s
            counts[name] = counts.get(name, 0) + n
        return record

    handles = [p.module.register_forward_pre_hook(hook(p.name)) for p in plans]
    was_training = model.training
    model.eval()
    try:
        for x in calibration_batches(loader, images):
            model(x.to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = {}
    for p in plans:
        if p.name in sums:
            m = to_weight_shape(sums[p.name] / counts[p.name], p.module)
            out[p.name] = (m / m.mean().clamp_min(1e-300)).to(p.module.weight.dtype)
    return out
