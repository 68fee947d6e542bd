"""Pattern libraries: the sets of 3x3 masks (exactly 4 ones) a pruned kernel may take.

A library is a ``(K, 3, 3)`` float tensor of 0/1 masks. Everything downstream (projection,
spec, compiler) refers to a pattern by its index in the library, so the order of a library is
part of its identity and is kept exactly when saved to and loaded from JSON.

Positions are row-major, 0..8, centre = 4 (see docs/PRUNING.md).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..checkpoint import read_json, write_json
from ..errors import FormatError, InputError

PATTERN_SIZE = 4  # non-zeros kept per 3x3 kernel
CENTRE = 4

# Designed Phase-2 library (paper section 4.2): 4 Gaussian 2x2 blocks touching the centre, then the
# 4 ELoG "T" shapes (centre + 3 of its 4 cross neighbours). Ids 0-3 Gaussian, 4-7 ELoG.
GAUSSIAN = ((0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8))
ELOG = ((1, 3, 4, 5), (1, 3, 4, 7), (1, 4, 5, 7), (3, 4, 5, 7))
# Phase 1 (12 patterns) is whatever extraction finds (patsparse.pruning.extraction); until a run
# on the user's model decides, the default is Phase 2 plus the four "edge + centre" masks (one
# full border row or column and the centre), which keep the centre like every Phase-2 mask.
PHASE1_EXTRA = ((0, 1, 2, 4), (0, 3, 4, 6), (2, 4, 5, 8), (4, 6, 7, 8))

NAMES = ("candidates", "phase1", "phase2", "phase3")


def pattern_scores(weight: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """Squared norm each pattern would keep, shape (O*I, K): the quantity the projection maximises."""
    flat = weight.detach().reshape(-1, 9)
    lib = library.to(dtype=flat.dtype, device=flat.device).reshape(-1, 9)
    return (flat * flat) @ lib.T


def masks_from_positions(positions: Iterable[Sequence[int]]) -> torch.Tensor:
    """Build a (K, 3, 3) 0/1 library from lists of kept row-major positions."""
    rows = []
    for i, pos in enumerate(positions):
        m = torch.zeros(9)
        for p in pos:
            if not 0 <= int(p) < 9:
                raise InputError(f"pattern {i}: position {p} is outside a 3x3 kernel (0..8)")
            m[int(p)] = 1.0
        rows.append(m.view(3, 3))
    if not rows:
        raise InputError("a pattern library needs at least one pattern")
    return torch.stack(rows)


def candidates(include_centre: bool = False) -> torch.Tensor:
    """All C(9,4) = 126 four-entry masks, or the C(8,3) = 56 that keep the centre (PatDNN)."""
    combos = itertools.combinations(range(9), PATTERN_SIZE)
    if include_centre:
        combos = (c for c in combos if CENTRE in c)
    return masks_from_positions(combos)


def positions(library: torch.Tensor) -> list[tuple[int, ...]]:
    """Kept row-major positions of every mask (the readable form used in JSON and reports)."""
    flat = library.reshape(library.shape[0], -1)
    return [tuple(int(p) for p in torch.nonzero(row).flatten()) for row in flat]


def validate_library(library: torch.Tensor, source: str = "library") -> torch.Tensor:
    """Check a library is (K,3,3), 0/1, exactly 4 ones per mask, no duplicates; return it as float.

    The error names the first bad mask index, because a hand-written JSON library is the usual
    source of mistakes.
    """
    if not isinstance(library, torch.Tensor):
        library = torch.as_tensor(library)
    if library.dim() != 3 or tuple(library.shape[1:]) != (3, 3) or library.shape[0] == 0:
        raise InputError(f"{source}: expected a (K, 3, 3) tensor of masks with K >= 1, "
                         f"got shape {tuple(library.shape)}")
    lib = library.detach().to(torch.float32).cpu()
    seen: dict[tuple[int, ...], int] = {}
    for i, m in enumerate(lib):
        if not bool(((m == 0) | (m == 1)).all()):
            raise InputError(f"{source}: mask {i} has entries other than 0 and 1: {m.tolist()}")
        ones = int(m.sum())
        if ones != PATTERN_SIZE:
            raise InputError(f"{source}: mask {i} has {ones} ones, a pattern needs exactly "
                             f"{PATTERN_SIZE}: {m.tolist()}")
        key = tuple(int(p) for p in torch.nonzero(m.flatten()).flatten())
        if key in seen:
            raise InputError(f"{source}: mask {i} duplicates mask {seen[key]} (positions {key})")
        seen[key] = i
    return lib.contiguous()


def save_library(library: torch.Tensor, path: str | os.PathLike, name: str = "") -> None:
    """Write a library as JSON: positions per mask (readable) plus the masks themselves."""
    lib = validate_library(library)
    write_json(path, {"format": "patsparse-pattern-library", "version": 1, "name": name,
                      "positions": [list(p) for p in positions(lib)],
                      "masks": lib.to(torch.int64).tolist()})


def load_library(path: str | os.PathLike) -> torch.Tensor:
    """Read a JSON library written by :func:`save_library` (or a bare list of 3x3 masks)."""
    data = read_json(path, "pattern library")
    masks = data.get("masks") if isinstance(data, dict) else data
    if masks is None and isinstance(data, dict) and "positions" in data:
        return validate_library(masks_from_positions(data["positions"]), f"library {path}")
    try:
        tensor = torch.tensor(masks, dtype=torch.float32)
    except (TypeError, ValueError) as e:
        raise FormatError(f"pattern library {path}: 'masks' is not a list of 3x3 masks: {e}") from None
    return validate_library(tensor, f"library {path}")


def pattern_library(name: str | os.PathLike | torch.Tensor = "phase2", *,
                    include_centre: bool = False) -> torch.Tensor:
    """Return a library as a (K, 3, 3) 0/1 float tensor.

    ``name`` is "candidates" (126 masks, or 56 with ``include_centre=True``), "phase1" (12),
    "phase2" (8: 4 Gaussian + 4 ELoG, the paper's designed library), "phase3" (4 ELoG), a path
    to a JSON library, or a tensor (validated and returned), so every API taking a library
    accepts all of these.
    """
    if isinstance(name, torch.Tensor):
        return validate_library(name)
    key = str(name).lower()
    if key == "candidates":
        return candidates(include_centre)
    if key == "phase2":
        return masks_from_positions(GAUSSIAN + ELOG)
    if key == "phase3":
        return masks_from_positions(ELOG)
    if key == "phase1":
        return masks_from_positions(GAUSSIAN + ELOG + PHASE1_EXTRA)
    path = Path(name)
    if path.suffix.lower() == ".json" or path.exists():
        return load_library(path)
    raise InputError(f"unknown pattern library {str(name)!r}: use one of {', '.join(NAMES)} "
                     f"or a path to a JSON library")


def library_name(library: torch.Tensor) -> str | None:
    """The built-in name of a library if it equals one exactly (same masks, same order)."""
    for n in ("phase1", "phase2", "phase3"):
        ref = pattern_library(n)
        if ref.shape == library.shape and torch.equal(ref, library.to(ref.dtype).cpu()):
            return n
    return None
