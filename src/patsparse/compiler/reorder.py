"""Read a 3x3 layer's sparsity from its weights, then reorder filters and kernels (PatDNN's FKR).

The compiler never trusts a spec for what is zero: it looks at the weights. Each 3x3 kernel is
  * pruned   - all nine weights are zero (never stored, never computed);
  * pattern  - its non-zeros fit a 4-entry mask (a kernel with fewer than 4 non-zeros is given
               the layer's most common 4-mask that covers it, so it shares that mask's code path);
  * dense    - anything else: the full 9-tap mask, a code path of its own.
So a dense model, or one pruned by another tool, compiles through the same path.

Filter-kernel reorder: filters are sorted by kernel count and then by their per-mask histogram,
so filters with the same amount and kind of work sit next to each other (threads split the
filter range by cost and get equal work; neighbouring filters run the same code). Inside a
filter, kernels are sorted by mask and then input channel, so each mask is one contiguous run:
the generated code loops over a run with that mask's taps at compile-time offsets and never
branches on the pattern. ``perm`` keeps the original output channel of every reordered filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..errors import InputError

FULL_MASK = 0x1FF  # all nine taps: the dense-kernel path
PATTERN_TAPS = 4


def mask_taps(mask: int) -> tuple[int, ...]:
    """Kernel positions (3*row + col) set in a 9-bit mask, ascending: the order weights are stored."""
    return tuple(p for p in range(9) if mask >> p & 1)


_POPCOUNT = np.array([bin(m).count("1") for m in range(512)], dtype=np.int64)
_FOUR_MASKS = tuple(sum(1 << p for p in c) for c in combinations(range(9), PATTERN_TAPS))


def nonzero_bits(weight: np.ndarray) -> np.ndarray:
    """(F, C) int64: bit p set where kernel position p (3*row + col) is non-zero."""
    F, C = weight.shape[:2]
    packed = np.packbits(weight.reshape(F, C, 9) != 0, axis=-1, bitorder="little")
    return packed[..., 0].astype(np.int64) | (packed[..., 1].astype(np.int64) << 8)


@dataclass(frozen=True)
class LayerSparsity:
    """What the weights of one 3x3 conv say: the masks in use and each kernel's mask.

    ``masks`` is sorted (so generated code is deterministic); ``kernel_mask[f, c]`` is an index
    into it, or -1 for a pruned kernel.
    """

    masks: tuple[int, ...]
    kernel_mask: np.ndarray  # (F, C) int32

    @property
    def n_kernels(self) -> int:
        return int((self.kernel_mask >= 0).sum())

    def taps_per_kernel(self) -> np.ndarray:
        """Taps computed per kernel, (F, C), 0 where pruned."""
        taps = np.array([len(mask_taps(m)) for m in self.masks] + [0], dtype=np.int64)
        return taps[self.kernel_mask]  # index -1 picks the trailing 0

    def counts(self) -> dict[str, int]:
        """Kernels by kind: pruned / pattern / dense (for reports and the manifest)."""
        km = self.kernel_mask
        dense = [i for i, m in enumerate(self.masks) if m == FULL_MASK]
        n_dense = int(np.isin(km, dense).sum()) if dense else 0
        n_pruned = int((km < 0).sum())
        return {"pruned": n_pruned, "pattern": int(km.size - n_pruned - n_dense), "dense": n_dense}


def analyse(weight: np.ndarray, where: str = "conv") -> LayerSparsity:
    """Classify every kernel of a (F, C, 3, 3) weight; ``where`` names the layer in errors."""
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise InputError(f"{where}: expected a (out, in, 3, 3) weight, got shape {tuple(w.shape)}")
    if not np.isfinite(w).all():
        raise InputError(f"{where}: weight has non-finite values (NaN or inf)")
    F, C = w.shape[:2]
    bits = nonzero_bits(w)
    npop = _POPCOUNT[bits]
    # 4-entry masks in use, most common first: kernels with fewer non-zeros join one of them
    four, freq = np.unique(bits[npop == PATTERN_TAPS], return_counts=True)
    preferred = [int(m) for m in four[np.argsort(-freq, kind="stable")]] + list(_FOUR_MASKS)
    to_final = np.arange(512, dtype=np.int64)  # raw non-zero mask -> the mask it is computed with
    to_final[0] = -1
    to_final[_POPCOUNT > PATTERN_TAPS] = FULL_MASK
    for m in np.unique(bits[(npop > 0) & (npop < PATTERN_TAPS)]):
        to_final[m] = next(p for p in preferred if p & int(m) == int(m))
    final = to_final[bits]
    masks = tuple(sorted(int(m) for m in np.unique(final[final >= 0])))
    lut = np.full(513, -1, dtype=np.int32)
    for i, m in enumerate(masks):
        lut[m] = i
    return LayerSparsity(masks, lut[final].astype(np.int32))


@dataclass(frozen=True)
class Reordered:
    """Result of filter-kernel reorder for one layer.

    ``perm[i]`` is the original output channel of reordered filter ``i``. ``runs`` has
    ``F * P + 1`` entries (P = number of masks): kernels of filter ``i`` with mask ``p`` are
    ``runs[i*P + p] : runs[i*P + p + 1]`` in the kernel list; ``cidx`` holds each kernel's input
    channel. ``cost`` is the prefix sum of taps per filter (length F + 1), used to split filters
    across threads with equal work.
    """

    perm: np.ndarray
    runs: np.ndarray
    cidx: np.ndarray
    cost: np.ndarray

    def kernels(self, n_masks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(original filter, input channel, mask index) of every stored kernel, in storage order."""
        run_id = np.repeat(np.arange(self.runs.size - 1), np.diff(self.runs))
        return self.perm[run_id // n_masks].astype(np.int64), self.cidx.astype(np.int64), run_id % n_masks


def reorder(sp: LayerSparsity) -> Reordered:
    """Filter-kernel reorder of one layer (see the module docstring)."""
    km = sp.kernel_mask
    F, C = km.shape
    P = len(sp.masks)
    valid = km >= 0
    f_idx, c_idx = np.nonzero(valid)  # row-major: channels ascending inside each filter
    p_idx = km[valid].astype(np.int64)
    hist = np.bincount(f_idx * P + p_idx, minlength=F * P).reshape(F, P)
    count = hist.sum(axis=1)
    # sort by kernel count (desc), then by the per-mask histogram (desc), then channel for ties
    keys = [np.arange(F)] + [-hist[:, p] for p in reversed(range(P))] + [-count]
    perm = np.lexsort(keys).astype(np.int32)
    inv = np.empty(F, dtype=np.int64)
    inv[perm] = np.arange(F)
    # storage order: reordered filter, then mask run, then channel (stable sort keeps channels)
    order = np.argsort(inv[f_idx] * P + p_idx, kind="stable")
    cidx_arr = c_idx[order].astype(np.int32)
    runs = np.concatenate([[0], np.cumsum(hist[perm].ravel())]).astype(np.int32)
    taps = sp.taps_per_kernel()
    cost = np.concatenate([[0], np.cumsum(taps[perm].sum(axis=1))]).astype(np.int64)
    return Reordered(perm, runs, cidx_arr, cost)
