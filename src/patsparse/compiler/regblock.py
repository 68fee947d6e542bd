"""The register-blocked form of a grouped 1x1 layer (compiler/grouped.py): which input channels a
block of filters loads per virtual kernel group, and which of them each filter multiplies by which
weight, all fixed at compile time (codegen/grouped_reg.py unrolls it).

Why: the gather lists (gather.py) pair every weight with its own input load, because a virtual
kernel's channels serve no other tap of the filter. They do serve the other filters that keep a
kernel of the same group, though: ``fb`` filters that each keep some of group g's nine channels
read at most nine vectors between them. Loaded once into registers, the nine feed every filter of
the block, the mask picking registers at compile time, so no load, offset or loop exit is paid
per weight. No equal sparsity across filters is needed (what XNNPACK's N>1 spmm kernels require).

The weights are one float array in the order the code reads them: filter blocks outer, then
channel blocks of ``gb`` groups, groups and filters ascending, each kernel's taps in mask order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gather import checked_rows
from .reorder import LayerSparsity, mask_taps


@dataclass(frozen=True)
class GroupStep:
    """One group g of a (filter block, channel block): the mask positions loaded (ascending) and
    the block's products, (filter index in the block, position, weight index) each."""

    group: int
    positions: tuple[int, ...]
    fmas: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class RegPlan:
    """A layer's filter blocks (output channels, ascending), their steps per channel block
    ``steps[k][b]``, and each weight's (output channel, input channel)."""

    fb: int
    gb: int
    nb: int
    filters: tuple[tuple[int, ...], ...]
    steps: tuple[tuple[tuple[GroupStep, ...], ...], ...]
    src: np.ndarray   # (S,) output channel of weight s
    chan: np.ndarray  # (S,) input channel of weight s

    @property
    def blocks(self) -> int:
        return len(self.filters)

    @property
    def size(self) -> int:
        return int(self.src.size)

    def cost(self) -> list[int]:
        """Products before each filter block (prefix sums, ``blocks + 1`` entries): ps_split's
        balance for threads that share a tile's filter blocks."""
        n = [sum(len(s.fmas) for b in blk for s in b) for blk in self.steps]
        return [int(x) for x in np.concatenate([[0], np.cumsum(n, dtype=np.int64)])]

    def pack(self, weight: np.ndarray, sp: LayerSparsity, panel_ld: int, where: str) -> np.ndarray:
        """The layer's weights for a (O, I, 1, 1) ``weight`` with sparsity ``sp``, in code order
        (``panel_ld``, GatherPlan.pack's, is unused: the code holds the input offsets)."""
        w = checked_rows(weight, sp, where)
        return w[self.src, self.chan].astype(np.float32) if self.size else np.zeros(1, np.float32)


def reg_plan(sp: LayerSparsity, *, fb: int, gb: int) -> RegPlan:
    """Filter blocks of ``fb`` consecutive output channels and channel blocks of ``gb`` groups
    for a layer with sparsity ``sp``."""
    O, G = sp.kernel_mask.shape
    gb = max(1, min(gb, G))
    nb = -(-G // gb)
    taps = [mask_taps(m) for m in sp.masks]
    filters = tuple(tuple(range(k, min(O, k + fb))) for k in range(0, O, fb))
    steps: list[list[tuple[GroupStep, ...]]] = [[] for _ in filters]
    src: list[int] = []
    chan: list[int] = []
    for k, blk in enumerate(filters):
        for b in range(nb):
            groups = []
            for g in range(b * gb, min(G, (b + 1) * gb)):
                fmas = []
                for i, f in enumerate(blk):
                    m = int(sp.kernel_mask[f, g])
                    for p in taps[m] if m >= 0 else ():
                        fmas.append((i, p, len(src)))
                        src.append(f)
                        chan.append(9 * g + p)
                if fmas:
                    groups.append(GroupStep(g, tuple(sorted({p for _, p, _ in fmas})), tuple(fmas)))
            steps[k].append(tuple(groups))
    return RegPlan(fb, gb, nb, filters, tuple(tuple(s) for s in steps),
                   np.array(src, dtype=np.int64), np.array(chan, dtype=np.int64))
