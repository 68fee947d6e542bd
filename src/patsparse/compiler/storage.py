"""Compact storage of one pattern-sparse 3x3 layer, in the spirit of PatDNN's FKW format.

One float32 array (the kernel reads it through a single pointer), made of 16-float-aligned
sections; integer sections hold int32 bit patterns, except ``cidx`` (uint16, two per word)::

    header[16]  magic, version, F, C, P, K, n_weights, then the section offsets below
    perm[F]     original output channel of each reordered filter
    runs[F*P+1] start of each (filter, mask) run in the kernel list; a filter's runs are
                consecutive, so the mask of a kernel is implied by its position: no per-kernel
                pattern id is stored
    cidx[K]     input channel of each kernel (uint16): the only per-kernel index. 16 bits
                because at batch 1 the small-plane layers stream their weights from memory:
                20 -> 18 bytes per 4-tap kernel
    cost[F+1]   prefix sum of taps per filter (int32), for balanced thread splits
    wptr[F]     offset of each filter's first weight in ``weights``
    weights     the kernels' non-zero taps, kernel after kernel, taps ascending by position
                (4 per pattern kernel, 9 per dense kernel): no per-weight index

Against CSR (one column index per non-zero) this is one index per kernel: 4x fewer indices
at 2.25x and far fewer at higher rates. docs/COMPILER.md describes it for users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, InputError, UnsupportedError
from .reorder import LayerSparsity, Reordered, mask_taps, nonzero_bits

MAGIC = 0x46_4B_57_31  # "FKW1"
VERSION = 2  # 2: cidx is uint16 (1: int32)
MAX_CHANNELS = 1 << 16  # what a uint16 cidx can name
ALIGN = 16  # floats: every section starts on a 64-byte boundary
SECTIONS = ("perm", "runs", "cidx", "cost", "wptr", "weights")


def _pad(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class FKWLayout:
    """Offsets (in floats) of each section of a packed layer: the generated C hard-codes them."""

    F: int
    C: int
    P: int
    K: int
    n_weights: int
    offsets: dict

    @property
    def size(self) -> int:
        return self.offsets["weights"] + _pad(self.n_weights)


def plan(sp: LayerSparsity, ro: Reordered) -> FKWLayout:
    """Section offsets for a layer with this sparsity and reorder."""
    F, C = sp.kernel_mask.shape
    P, K = len(sp.masks), int(ro.cidx.size)
    n_weights = int(sp.taps_per_kernel().sum())
    sizes = {"perm": F, "runs": F * P + 1, "cidx": (K + 1) // 2, "cost": F + 1, "wptr": F}
    offsets, at = {}, ALIGN
    for name in SECTIONS[:-1]:
        offsets[name] = at
        at += _pad(sizes[name])
    offsets["weights"] = at
    return FKWLayout(F, C, P, K, n_weights, offsets)


def check_masks(sp: LayerSparsity, w: np.ndarray, where: str) -> None:
    """InputError naming the layer, filter and input channel of the first kernel of ``w``
    (F, C, 9) with a non-zero outside the mask ``sp`` gives it (the code would drop it)."""
    allowed = np.array(list(sp.masks) + [0], dtype=np.int64)[sp.kernel_mask]  # -1 (pruned) -> 0
    stray = (nonzero_bits(w) & ~allowed) != 0
    if stray.any():
        f, c = np.argwhere(stray)[0]
        raise InputError(f"{where}: kernel (filter {f}, input channel {c}) has non-zeros outside "
                         f"the mask it was compiled for; recompile with these weights")


def pack(sp: LayerSparsity, ro: Reordered, weight: np.ndarray, where: str = "conv") -> np.ndarray:
    """Pack ``weight`` (F, C, 3, 3) in the compact format.

    The weight must have the sparsity ``sp`` was read from: a non-zero outside its kernel's mask
    is an InputError naming the layer, filter and input channel (the code would silently drop it).
    """
    w = np.asarray(weight, dtype=np.float32).reshape(sp.kernel_mask.shape + (9,))
    if max(sp.kernel_mask.shape) > MAX_CHANNELS:
        raise UnsupportedError(f"{where}: {sp.kernel_mask.shape[0]} filters x {sp.kernel_mask.shape[1]} "
                               f"channels; the compact format indexes at most {MAX_CHANNELS} channels")
    lay = plan(sp, ro)
    out = np.zeros(lay.size, dtype=np.float32)
    ints = out.view(np.int32)
    head = [MAGIC, VERSION, lay.F, lay.C, lay.P, lay.K, lay.n_weights] + [lay.offsets[s] for s in SECTIONS]
    ints[: len(head)] = head
    o = lay.offsets
    ints[o["perm"]: o["perm"] + lay.F] = ro.perm
    ints[o["runs"]: o["runs"] + ro.runs.size] = ro.runs
    out.view(np.uint16)[2 * o["cidx"]: 2 * o["cidx"] + lay.K] = ro.cidx
    ints[o["cost"]: o["cost"] + lay.F + 1] = ro.cost
    check_masks(sp, w, where)
    f_idx, c_idx, p_idx = ro.kernels(lay.P)
    ntaps = np.array([len(mask_taps(m)) for m in sp.masks], dtype=np.int64)[p_idx]
    woff = np.concatenate([[0], np.cumsum(ntaps)])
    wts = out[o["weights"]:]
    for p, m in enumerate(sp.masks):
        sel = np.flatnonzero(p_idx == p)
        t = np.array(mask_taps(m))
        wts[woff[sel][:, None] + np.arange(t.size)] = w[f_idx[sel][:, None], c_idx[sel][:, None], t]
    # first weight of each reordered filter
    first_k = ro.runs[np.arange(lay.F) * lay.P] if lay.P else np.zeros(lay.F, np.int64)
    ints[o["wptr"]: o["wptr"] + lay.F] = woff[first_k]
    return out


def unpack(packed: np.ndarray, masks: tuple[int, ...]) -> np.ndarray:
    """Rebuild the dense (F, C, 3, 3) weight from a packed layer (checks the header)."""
    ints = np.asarray(packed, dtype=np.float32).view(np.int32)
    if ints.size < ALIGN or ints[0] != MAGIC or ints[1] != VERSION:
        raise FormatError(f"packed layer: bad magic or version (not an FKW1 version {VERSION} array)")
    F, C, P, K, _ = (int(x) for x in ints[2:7])
    o = dict(zip(SECTIONS, (int(x) for x in ints[7:7 + len(SECTIONS)])))
    if P != len(masks):
        raise FormatError(f"packed layer has {P} masks, caller gave {len(masks)}")
    perm = ints[o["perm"]: o["perm"] + F]
    runs = ints[o["runs"]: o["runs"] + F * P + 1]
    cidx = np.asarray(packed, dtype=np.float32).view(np.uint16)[2 * o["cidx"]: 2 * o["cidx"] + K]
    wptr = ints[o["wptr"]: o["wptr"] + F]
    wts = np.asarray(packed, dtype=np.float32)[o["weights"]:]
    dense = np.zeros((F, C, 9), dtype=np.float32)
    for i in range(F):
        at = wptr[i]
        for p in range(P):
            t = np.array(mask_taps(masks[p]))
            for k in range(runs[i * P + p], runs[i * P + p + 1]):
                dense[perm[i], cidx[k], t] = wts[at: at + t.size]
                at += t.size
    return dense.reshape(F, C, 3, 3)
