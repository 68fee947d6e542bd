"""How activations live in memory inside generated code (the contract every kernel honours).

Padded planar layout, one image at a time: C planes; each plane is (H + 2*pad) rows of ``ld``
floats, ``ld`` a multiple of 16 (one AVX-512 vector) and every plane starting on a 64-byte
boundary. The halo (``pad`` rows/columns around the interior, plus the tail of each row) is
zero and no kernel ever writes it, so a consumer's zero padding is free: a 3x3 kernel reads
its neighbours without bounds checks. Element (c, h, w) lives at ``index(c, h, w)``.

Why this layout: pattern kernels vectorise along output width with four taps at compile-time
offsets (PatDNN); a padded plane makes every tap a plain load at a constant offset. Producers
write straight into their consumer's layout, so there is no separate layout-conversion pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VEC = 16  # floats per AVX-512 vector; row and plane strides are multiples of it


def spatial(shape: tuple) -> tuple[int, int, int]:
    """The (C, H, W) a per-image shape is stored as: itself, a 1-D signal (C, L) as (C, 1, L), a
    vector of n as (n, 1, 1)."""
    if len(shape) == 2:
        return (int(shape[0]), 1, int(shape[1]))
    return tuple(shape) if len(shape) == 3 else (int(np.prod(shape)), 1, 1)


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclass(frozen=True)
class Layout:
    """Layout of one activation tensor (per image) in generated code."""

    C: int
    H: int
    W: int
    pad: int = 1

    @property
    def ld(self) -> int:
        """Row stride in floats."""
        return round_up(self.W + 2 * self.pad, VEC)

    @property
    def ps(self) -> int:
        """Plane stride in floats."""
        return round_up((self.H + 2 * self.pad) * self.ld, VEC)

    @property
    def size(self) -> int:
        """Floats per image."""
        return self.C * self.ps

    @property
    def origin(self) -> int:
        """Offset of interior element (0, 0) inside a plane."""
        return self.pad * self.ld + self.pad

    def index(self, c: int, h: int, w: int) -> int:
        return c * self.ps + (h + self.pad) * self.ld + (w + self.pad)
