"""How an int8 conv's weights become 4-way dot products ("quads").

A quad is four (input channel, tap) entries. For every quad in use, the kernel first lays out
the four input codes of each output position side by side (one int32 lane: ``Q[g][q]``), so
each kept weight quad is ONE 4-way int8 dot product per output position (vpdpbusd / sdot) into
that output channel's int32 accumulator. Two ways to form quads, chosen per layer by cost:

* ``pattern``: one kernel's four taps (a 4-entry pattern is exactly one quad; fewer taps join
  the layer's most common 4-mask that covers them, more are split into several quads). Pruned
  kernels cost nothing. The quads of one input channel and mask are shared by every filter
  that uses them.
* ``channel``: four input channels at one tap (dense layers, 1x1 convs): no lane wasted on a
  dense kernel's ninth tap.

The cost model counts dot products (one per kept quad of each filter) plus 4 per quad laid
out (the layout pass writes each quad's codes once per output position, about four vector
operations per vector of quads).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

LAYOUT_COST = 4


@dataclass(frozen=True)
class Quads:
    """One conv's quads: ``entries`` (G, 4, 3) int32 rows (channel, dy, dx); per filter f its
    kernels ``kptr[f]:kptr[f+1]`` of ``group`` (index into entries) and ``word`` (the four int8
    weights as one little-endian int32, byte i the weight of entry i)."""

    kind: str
    entries: np.ndarray
    kptr: np.ndarray
    group: np.ndarray
    word: np.ndarray


def _popcount(bits: np.ndarray) -> np.ndarray:
    return np.array([bin(int(b)).count("1") for b in bits.ravel()], np.int64).reshape(bits.shape)


def _tap_bits(w: np.ndarray) -> np.ndarray:
    """(F, C) bit masks of each kernel's nonzero taps (bit t: tap t = dy * k + dx)."""
    f, c, k, _ = w.shape
    nz = (w.reshape(f, c, k * k) != 0).astype(np.int64)
    return (nz << np.arange(k * k)).sum(axis=2)


def _pattern_chunks(bits: int, common: list[int], taps: int) -> list[tuple[int, ...]]:
    """The quads (four taps each) covering one kernel's nonzero taps ``bits``: the kernel's own
    4-mask, else the most common 4-mask that covers it, else its taps four at a time, the last
    quad filled with taps it does not use (zero weights) or, when it uses them all, with
    repeats of its first tap (weight 0: ``_words``)."""
    n = bin(bits).count("1")
    cover = bits if n == 4 else next((m for m in common if m & bits == bits), None) if n < 4 else None
    if cover is not None:
        return [tuple(t for t in range(taps) if cover >> t & 1)]
    on = [t for t in range(taps) if bits >> t & 1]
    off = [t for t in range(taps) if not bits >> t & 1]
    chunks = [on[i:i + 4] for i in range(0, len(on), 4)]
    last = chunks[-1] + off[:4 - len(chunks[-1])]
    chunks[-1] = last + [last[0]] * (4 - len(last))
    return [tuple(ch) for ch in chunks]


def _words(w: np.ndarray, f: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """int32 weight words of filters ``f`` (K,) on quads ``entries`` (K, 4, 3); an entry that
    repeats an earlier one of its quad (padding) gets weight 0."""
    b = w[f[:, None], entries[:, :, 0], entries[:, :, 1], entries[:, :, 2]].astype(np.int8)
    for i in range(1, 4):
        dup = np.zeros(len(f), bool)
        for j in range(i):
            dup |= (entries[:, i] == entries[:, j]).all(axis=1)
        b[dup, i] = 0
    return np.ascontiguousarray(b).view("<i4").reshape(-1)


def _build(w: np.ndarray, kind: str, entries: np.ndarray, kern_f: np.ndarray, kern_g: np.ndarray) -> Quads:
    order = np.lexsort((kern_g, kern_f))
    kern_f, kern_g = kern_f[order], kern_g[order]
    kptr = np.searchsorted(kern_f, np.arange(w.shape[0] + 1)).astype(np.int32)
    word = _words(w, kern_f, entries[kern_g]) if len(kern_f) else np.zeros(0, np.int32)
    return Quads(kind, entries.astype(np.int32).reshape(-1, 4, 3), kptr, kern_g.astype(np.int32),
                 word.astype(np.int32))


def pattern_quads(w: np.ndarray) -> Quads:
    """Quads of kernels' taps (kernels of at least 2x2)."""
    f_, c_, k, _ = w.shape
    bits = _tap_bits(w)
    fours = Counter(int(b) for b in bits[_popcount(bits) == 4].ravel())
    common = [m for m, _ in fours.most_common()]
    keys: dict[tuple[int, tuple[int, ...]], int] = {}
    kern_f, kern_g = [], []
    for f, c in zip(*np.nonzero(bits)):
        for m in _pattern_chunks(int(bits[f, c]), common, k * k):
            kern_f.append(f)
            kern_g.append(keys.setdefault((int(c), m), len(keys)))
    entries = np.array([[(c, t // k, t % k) for t in taps] for c, taps in keys],
                       np.int64).reshape(-1, 4, 3)
    return _build(w, "pattern", entries, np.array(kern_f, np.int64), np.array(kern_g, np.int64))


def channel_quads(w: np.ndarray) -> Quads:
    """Quads of four input channels at one tap."""
    f_, c_, k, _ = w.shape
    cq = (c_ + 3) // 4
    chans = np.minimum(np.arange(cq * 4).reshape(cq, 4), c_ - 1)  # the last quad repeats its last channel
    chans[cq - 1, c_ - 4 * (cq - 1):] = chans[cq - 1, 0]  # (repeats get weight 0: _words)
    entries = np.array([[(c, t // k, t % k) for c in chans[j]] for t in range(k * k) for j in range(cq)],
                       np.int64).reshape(-1, 4, 3)
    pad = np.zeros((f_, cq * 4, k * k), bool)
    pad[:, :c_] = w.reshape(f_, c_, k * k) != 0
    used = pad.reshape(f_, cq, 4, k * k).any(axis=2).transpose(0, 2, 1).reshape(f_, -1)  # (F, taps * cq)
    kern_f, kern_g = np.nonzero(used)
    return _build(w, "channel", entries, kern_f.astype(np.int64), kern_g.astype(np.int64))


def cost(q: Quads) -> int:
    return len(q.group) + LAYOUT_COST * len(q.entries)


def conv_quads(w: np.ndarray) -> Quads:
    """The cheaper quads of a conv's int8 weights (F, C, k, k)."""
    ch = channel_quads(w)
    pc = _popcount(_tap_bits(w))
    if w.shape[2] == 1 or ((pc + 3) // 4).sum() >= len(ch.group):  # patterns cannot win: skip building them
        return ch
    return min((pattern_quads(w), ch), key=cost)
