"""Read a 1x1 conv's sparsity as virtual 3x3 kernels (the grouping of pruning/grouping.py).

Input channels [9g, 9g + 9) of a filter form virtual kernel g, channel 9g + p at mask position
p. Seen that way, a (O, I, 1, 1) weight is a (O, G, 3, 3) one, and everything the 3x3 pattern
path has applies unchanged: kernels are pruned, pattern (4 channels of one mask) or dense,
filter-kernel reorder sorts them into (filter, mask) runs, and FKW1 stores them with the group
index in ``cidx``. Like the 3x3 path, the compiler reads this from the weights alone, so a model
pruned by any tool with this grouping compiles to the sparse kernel and a dense one does not.

The last group of a layer whose I is not a multiple of 9 has r < 9 channels. A kernel there
keeps only the positions below r of its mask (a cut mask, fewer taps): the kernel never reads
a channel past the layer's last.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..pruning.grouping import GROUP, group_count, grouped_rows
from .reorder import LayerSparsity, analyse

# a 1x1 conv goes to the grouped kernel when it computes at most this share of its dense
# products. Why a share, and two: per product the grouped kernel loads an input vector (a
# kernel's four channels serve that kernel alone) where the dense GEMM reuses each load across
# a register tile of output channels, so it costs more per product than the dense GEMM, and
# more so the larger the input it gathers from. Measured per layer against the dense GEMM
# (AVX-512, one thread, MobileNet-V2 and ResNet-50 at 2.25x, density 0.44-0.48): an expand conv
# from few channels (32-160 inputs, at least twice as many outputs) costs 1.6-2.0x the dense
# GEMM per product, so it wins up to a density of 0.5; every other shape (ResNet-50's expands
# from 256-512 channels included) costs 2.2-3.8x, so it wins below 0.33. At 8x (density
# 0.1-0.12) every 1x1 conv of both networks runs 1.5-4x faster grouped.
GROUPED_MAX_DENSITY = 0.33
EXPAND_MAX_DENSITY = 0.5
EXPAND_MAX_INPUTS = 160
# the register-blocked kernel (codegen/grouped_reg.py) loads a group's inputs once for up to 22
# filters, and layers it takes go grouped up to density 0.5. It is unrolled, one FMA instruction
# per kept weight, so a layer's code is as large as its weights and cold at every call of a
# model: with layers of up to 32k weights (20-90 KB of code on 7x7-28x28 planes) MobileNet-V2
# 2.25x ran 0.91x as fast as without it, though each such layer called back to back ran 1.3-3.8x
# faster than the gather kernel (AVX-512, one thread, contended; docs/bench/grouped1x1.md). Small
# layers on large planes won (32 -> 16 at 112x112: 2.1x; fused expands of 680-1500 weights:
# 1.13x), so it takes layers of at most REGISTER_MAX_FMAS kept weights.
REGISTER_MAX_FMAS = 2048
REGISTER_MAX_DENSITY = 0.5


def max_density(out_channels: int, in_channels: int) -> float:
    """The density up to which a (out, in, 1, 1) conv runs the grouped kernel (see above)."""
    expand = out_channels >= 2 * in_channels and in_channels <= EXPAND_MAX_INPUTS
    return EXPAND_MAX_DENSITY if expand else GROUPED_MAX_DENSITY


def register_ok(fmas: int, nv: int = 1) -> bool:
    """Whether a layer of ``fmas`` kept weights gets the register-blocked kernel at tile ``nv``."""
    return 0 < fmas * nv <= REGISTER_MAX_FMAS


def virtual_weight(weight: np.ndarray, where: str = "conv") -> np.ndarray:
    """A (O, I, 1, 1) weight as (O, G, 3, 3) virtual kernels, the short last group zero-padded."""
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise InputError(f"{where}: expected a (out, in, 1, 1) weight, got shape {tuple(w.shape)}")
    if w.shape[1] < GROUP:
        raise InputError(f"{where}: {w.shape[1]} input channels, fewer than the {GROUP} of one "
                         f"virtual 3x3 kernel")
    return grouped_rows(torch.from_numpy(w)).numpy().reshape(w.shape[0], -1, 3, 3)


def analyse_grouped(weight: np.ndarray, where: str = "conv") -> LayerSparsity:
    """Classify every virtual kernel of a (O, I, 1, 1) weight (see the module docstring);
    ``kernel_mask`` is (O, G) and the masks of the last group's kernels are cut to its length."""
    w = np.asarray(weight, dtype=np.float32)
    sp = analyse(virtual_weight(w, where), where)
    r = w.shape[1] - (group_count(w.shape[1]) - 1) * GROUP
    if r == GROUP:
        return sp
    cut = (1 << r) - 1
    final = np.array(list(sp.masks) + [-1], dtype=np.int64)[sp.kernel_mask]  # -1: pruned
    last = final[:, -1]
    final[:, -1] = np.where(last >= 0, last & cut, -1)
    masks = tuple(sorted(int(m) for m in np.unique(final[final >= 0])))
    km = np.where(final >= 0, np.searchsorted(np.array(masks, dtype=np.int64), final), -1)
    return LayerSparsity(masks, km.astype(np.int32))


def grouped_density(sp: LayerSparsity, in_channels: int) -> float:
    """Share of a layer's dense products the grouped kernel computes."""
    return kept_weights(sp) / max(1, sp.kernel_mask.shape[0] * in_channels)


def kept_weights(sp: LayerSparsity | None) -> int:
    """Products per pixel of a layer with grouped sparsity ``sp`` (its kept weights); 0 for None."""
    return 0 if sp is None else int(sp.taps_per_kernel().sum())


def grouped_sparsity(weight: np.ndarray, where: str = "conv") -> LayerSparsity | None:
    """The virtual-kernel sparsity of a 1x1 weight when the grouped kernel should run it (at
    least 9 input channels, density at most ``max_density``, or REGISTER_MAX_DENSITY for a layer
    the register-blocked kernel takes), else None (dense path)."""
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[1] < GROUP:
        return None
    sp = analyse_grouped(w, where)
    limit = max(max_density(*w.shape[:2]), REGISTER_MAX_DENSITY if register_ok(kept_weights(sp)) else 0.0)
    return sp if grouped_density(sp, w.shape[1]) <= limit else None
