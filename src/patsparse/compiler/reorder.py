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


_FOUR_MASKS = tuple(sum(1 << p for p in c) for c in combinations(range(9), PATTERN_TAPS))


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
    bits = (w.reshape(F, C, 9) != 0).astype(np.int64) @ (1 << np.arange(9, dtype=np.int64))
    pop = np.zeros(512, dtype=np.int64)
    for m in range(512):
        pop[m] = bin(m).count("1")
    npop = pop[bits]
    # 4-entry masks in use, most common first: kernels with fewer non-zeros join one of them
    four, freq = np.unique(bits[npop == PATTERN_TAPS], return_counts=True)
    preferred = [int(m) for m in four[np.argsort(-freq, kind="stable")]] + list(_FOUR_MASKS)
    cover: dict[int, int] = {}
    for m in np.unique(bits[(npop > 0) & (npop < PATTERN_TAPS)]):
        cover[int(m)] = next(p for p in preferred if p & int(m) == int(m))
    final = bits.copy()
    for small, big in cover.items():
        final[bits == small] = big
    final[npop > PATTERN_TAPS] = FULL_MASK
    final[npop == 0] = -1
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


def reorder(sp: LayerSparsity) -> Reordered:
    """Filter-kernel reorder of one layer (see the module docstring)."""
    km = sp.kernel_mask
    F, C = km.shape
    P = len(sp.masks)
    hist = np.stack([(km == p).sum(axis=1) for p in range(P)], axis=1) if P else np.zeros((F, 0), int)
    count = hist.sum(axis=1)
    # sort by kernel count (desc), then by the per-mask histogram (desc), then channel for ties
    keys = [np.arange(F)] + [-hist[:, p] for p in reversed(range(P))] + [-count]
    perm = np.lexsort(keys).astype(np.int32)
    inv = np.empty(F, dtype=np.int64)
    inv[perm] = np.arange(F)
    f_idx, c_idx = np.nonzero(km >= 0)
    p_idx = km[f_idx, c_idx].astype(np.int64)
    order = np.lexsort((c_idx, p_idx, inv[f_idx]))  # by reordered filter, then mask, then channel
    cidx_arr = c_idx[order].astype(np.int32)
    # run (i, p) starts after all kernels of earlier (filter, mask) pairs
    per_run = np.zeros(F * P, dtype=np.int64)
    np.add.at(per_run, inv[f_idx] * P + p_idx, 1)
    runs = np.concatenate([[0], np.cumsum(per_run)]).astype(np.int32)
    taps = sp.taps_per_kernel()
    cost = np.concatenate([[0], np.cumsum(taps[perm].sum(axis=1))]).astype(np.int64)
    return Reordered(perm, runs, cidx_arr, cost)
