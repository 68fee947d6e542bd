"""The CPU form of a grouped 1x1 layer (compiler/grouped.py): per filter block, one list of
(input channel, weight) steps, as XNNPACK's sparse 1x1 (f32-spmm) kernels walk their weights.

Why not the FKW1 runs the 3x3 pattern kernel reads: there a kernel's taps are nine pixels of a
plane and reuse loads across the tile, but a virtual kernel's four taps are four channels that
nothing else in the filter reads, so a (filter, mask) loop buys no reuse; it only costs a loop
and a mispredicted exit per mask per filter (8-9 masks, 0-3 kernels each at 8x), which cost
more than the filter's FMAs. Flattened, a filter is one loop whose trip count is its tap count.

``fb`` filters (sorted by tap count, so a block's lengths are close) step together: step s of a
block holds tap s of each of its filters, shorter filters padded with zero weights. The block's
filters then keep ``fb`` x tile accumulators in flight, which hides the FMA latency with a tile
of few vectors, and pay one loop exit for ``fb`` filters. Each (filter block, channel block) is
a contiguous run of steps (channels ascending in a filter), so a tile can sweep its input
channels in ``gb``-group blocks that stay in cache.

One float32 array, 16-float-aligned sections (integers as int32 bit patterns)::

    perm[F]         output channel of each padded filter (-1: padding, stored nowhere)
    seg[NFB*NB+1]   first step of each (filter block, channel block), blocks in that order
    cost[NFB+1]     first step of each filter block (balanced thread splits)
    offs[S*fb]      where each entry's input channel starts in the tile's panel, in floats
    wts[S*fb]       each entry's weight (0 for padding)

The kernel's code depends only on the section sizes, which depend on the sparsity alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from .reorder import LayerSparsity, mask_taps
from .storage import ALIGN, _pad, check_masks

SECTIONS = ("perm", "seg", "cost", "offs", "wts")
MAX_PANEL = 1 << 31  # offsets are int32


def filter_channels(sp: LayerSparsity) -> list[np.ndarray]:
    """The input channels each filter reads, ascending: 9g + t for each kept kernel (g, mask)."""
    taps = [np.array(mask_taps(m), dtype=np.int64) for m in sp.masks]
    out = []
    for row in sp.kernel_mask:
        gs = np.flatnonzero(row >= 0)
        out.append(np.sort(np.concatenate([9 * g + taps[row[g]] for g in gs])) if gs.size else
                   np.zeros(0, np.int64))
    return out


def checked_rows(weight: np.ndarray, sp: LayerSparsity, where: str) -> np.ndarray:
    """A (O, I, 1, 1) ``weight`` as (O, I) float32 rows, an InputError naming the kernel if it
    has a non-zero outside the sparsity ``sp`` (the code would drop it)."""
    w = np.asarray(weight, dtype=np.float32).reshape(weight.shape[0], -1)
    check_masks(sp, np.pad(w, ((0, 0), (0, 9 * sp.kernel_mask.shape[1] - w.shape[1])))
                .reshape(sp.kernel_mask.shape + (9,)), where)
    return w


@dataclass(frozen=True)
class GatherPlan:
    """Which entry of the weight each step reads, and the sections' offsets (in floats)."""

    fb: int
    gb: int
    nb: int
    perm: np.ndarray   # (F,) output channel of each padded filter, -1 for padding
    seg: np.ndarray    # (NFB * NB + 1,)
    chan: np.ndarray   # (S * fb,) input channel of each entry
    src: np.ndarray    # (S * fb,) output channel of each entry's weight, -1 for padding
    offsets: dict

    @property
    def F(self) -> int:
        return int(self.perm.size)

    @property
    def blocks(self) -> int:
        return self.F // self.fb

    @property
    def size(self) -> int:
        return self.offsets["wts"] + _pad(self.chan.size)

    def pack(self, weight: np.ndarray, sp: LayerSparsity, panel_ld: int, where: str) -> np.ndarray:
        """The layer's array for a (O, I, 1, 1) ``weight`` with sparsity ``sp``; a tile's panel
        holds input channel c of channel block b at (c - 9 gb b) * ``panel_ld`` floats."""
        w = checked_rows(weight, sp, where)
        if (9 * self.gb * panel_ld) >= MAX_PANEL:
            raise UnsupportedError(f"{where}: a panel of {9 * self.gb * panel_ld} floats is too large")
        out = np.zeros(self.size, dtype=np.float32)
        ints, o = out.view(np.int32), self.offsets
        ints[o["perm"]: o["perm"] + self.F] = self.perm
        ints[o["seg"]: o["seg"] + self.seg.size] = self.seg
        ints[o["cost"]: o["cost"] + self.blocks + 1] = self.seg[::self.nb]
        ints[o["offs"]: o["offs"] + self.chan.size] = (self.chan % (9 * self.gb)) * panel_ld
        real = self.src >= 0
        out[o["wts"]: o["wts"] + self.chan.size][real] = w[self.src[real], self.chan[real]]
        return out


def gather_plan(sp: LayerSparsity, *, fb: int, gb: int) -> GatherPlan:
    """Filter blocks of ``fb`` and channel blocks of ``gb`` groups for a layer with sparsity ``sp``."""
    O, G = sp.kernel_mask.shape
    gb = max(1, min(gb, G))
    nb = -(-G // gb)
    chans = filter_channels(sp)
    order = sorted(range(O), key=lambda f: -chans[f].size)  # stable: equal counts keep their order
    F = -(-O // fb) * fb
    perm = np.array(order + [-1] * (F - O), dtype=np.int32)
    seg, chan, src = [0], [], []
    for k in range(F // fb):
        block = [int(f) for f in perm[k * fb:(k + 1) * fb]]
        for b in range(nb):
            lo = 9 * gb * b
            parts = [chans[f][(chans[f] >= lo) & (chans[f] < lo + 9 * gb)] if f >= 0 else np.zeros(0, np.int64)
                     for f in block]
            n = max(p.size for p in parts)
            grid_c = np.full((n, fb), lo, dtype=np.int64)  # padding reads the block's first channel
            grid_s = np.full((n, fb), -1, dtype=np.int64)
            for i, (f, p) in enumerate(zip(block, parts)):
                grid_c[:p.size, i], grid_s[:p.size, i] = p, f
            chan.append(grid_c.ravel())
            src.append(grid_s.ravel())
            seg.append(seg[-1] + n)
    sizes = {"perm": F, "seg": len(seg), "cost": F // fb + 1, "offs": seg[-1] * fb}
    offsets, at = {}, ALIGN
    for name in SECTIONS[:-1]:
        offsets[name] = at
        at += _pad(sizes[name])
    offsets["wts"] = at
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
    return GatherPlan(fb, gb, nb, perm, np.array(seg, dtype=np.int32), cat(chan), cat(src), offsets)
