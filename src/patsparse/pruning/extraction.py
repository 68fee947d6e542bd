"""Pattern library extraction (paper sections 5.2 and 7.1).

Start from all candidate masks (126, or the 56 that keep the centre); for each target size of a
schedule (default 32 -> 12 -> 8 -> 4): run a few ADMM iterations of pattern pruning with the
current library so kernels drift toward the patterns that suit them, count how many kernels
select each pattern, and keep the most used ones. The result holds each phase's library (sorted
by use, so id 0 is the most used pattern), the use counts (the paper's Figure 4), and how many of
the 8-pattern library coincide with the designed Phase-2 library.

Extraction trains a copy of the model (``inplace=False``): it is a way to choose a library,
after which ``patsparse.prune(model, ..., library=result.library(8))`` prunes for real.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..patterns.library import candidates, pattern_library, positions
from .admm import geometric_rhos, run_admm
from .layers import CONNECTIVITY, PATTERN, LayerPlan, select_layers

DEFAULT_SCHEDULE = (32, 12, 8, 4)


@dataclass
class ExtractionStep:
    """One step: the library the ADMM ran with, how often each of its patterns was selected by
    3x3 kernels (``counts``) and by the virtual 3x3 kernels of 1x1 convs (``group_counts``),
    and the library kept for the next step (the ``size`` most used, most used first)."""

    library: torch.Tensor
    counts: torch.Tensor
    size: int
    kept: torch.Tensor
    group_counts: torch.Tensor | None = None

    @property
    def next_library(self) -> torch.Tensor:
        return self.library[self.kept]


@dataclass
class ExtractionResult:
    steps: list[ExtractionStep] = field(default_factory=list)
    model: nn.Module | None = None

    def library(self, size: int) -> torch.Tensor:
        """The extracted library of ``size`` patterns (InputError if the schedule had no such size)."""
        for s in self.steps:
            if s.size == size:
                return s.next_library
        raise InputError(f"no extraction step produced a {size}-pattern library "
                         f"(schedule: {[s.size for s in self.steps]})")

    @property
    def libraries(self) -> dict[int, torch.Tensor]:
        return {s.size: s.next_library for s in self.steps}

    def phase2_overlap(self) -> int | None:
        """How many patterns of the extracted 8-pattern library are in the designed Phase 2."""
        if not any(s.size == 8 for s in self.steps):
            return None
        return overlap(self.library(8), pattern_library("phase2"))

    def summary(self) -> str:
        lines = []
        for s in self.steps:
            lines.append(f"{s.library.shape[0]:>3} -> {s.size:<3} kept {_shares(s.library, s.counts, s.size)}")
            if s.group_counts is not None and int(s.group_counts.sum()):
                lines.append(f"{'':>10}1x1 groups prefer {_shares(s.library, s.group_counts, s.size)}")
        ov = self.phase2_overlap()
        if ov is not None:
            lines.append(f"{ov} of the extracted 8 patterns coincide with the designed Phase-2 library")
        return "\n".join(lines)


def _shares(library: torch.Tensor, counts: torch.Tensor, top: int) -> str:
    """The ``top`` most used masks with their share of the counts, e.g. ``1345:31.0%``."""
    pos = positions(library)
    total = int(counts.sum()) or 1
    order = torch.argsort(counts, descending=True, stable=True)[:top].tolist()
    return ", ".join(f"{''.join(map(str, pos[i]))}:{100 * int(counts[i]) / total:.1f}%" for i in order)


def overlap(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of masks two libraries share (order ignored)."""
    return len(set(positions(a)) & set(positions(b)))


def top_patterns(counts: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the ``size`` most selected patterns, most used first (ties: lower index)."""
    return torch.argsort(counts, descending=True, stable=True)[:size]


def extract_library(model: nn.Module, loader: Iterable, schedule: Sequence[int] = DEFAULT_SCHEDULE, *,
                    include_centre: bool = False, start: torch.Tensor | str | None = None,
                    admm_iters: int = 2, epochs: int = 1, rho: float = 1e-3, rho_growth: float = 3.0,
                    rho_max: float = 0.1, lr: float = 0.01, layers: Sequence[str] | None = None,
                    conv1x1: str = "grouped", device: str = "cpu", progress: bool = True,
                    inplace: bool = False) -> ExtractionResult:
    """Run the extraction schedule on (a copy of) ``model`` and return every phase's library
    (``layers`` and ``conv1x1`` select the convs as in pruning; connectivity-only ones are left out)."""
    lib = candidates(include_centre) if start is None else pattern_library(start)
    sizes = list(schedule)
    if not sizes or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise InputError(f"extraction schedule must be positive ints, got {schedule!r}")
    if any(b >= a for a, b in zip([lib.shape[0], *sizes], sizes)):
        raise InputError(f"extraction schedule must strictly decrease from the {lib.shape[0]} starting "
                         f"patterns, got {list(schedule)}")
    if not inplace:
        model = copy.deepcopy(model)
    model.to(device)
    # extraction is about patterns only: every selected conv with patterns, in pattern mode
    plans = [LayerPlan(n, m, PATTERN) for n, m, mode in select_layers(model, layers, conv1x1) if mode != CONNECTIVITY]
    result = ExtractionResult(model=model)
    for size in sizes:
        if progress:
            print(f"[patsparse extract] {lib.shape[0]} -> {size} patterns", flush=True)
        state = run_admm(model, loader, plans, lib, rhos=geometric_rhos(rho, rho_growth, rho_max, admm_iters),
                         epochs=epochs, lr=lr, device=device, progress=progress)
        counts, groups = state.pattern_counts(grouped=False), state.pattern_counts(grouped=True)
        deciding = counts if int(counts.sum()) else groups
        step = ExtractionStep(lib, counts, size, top_patterns(deciding, size), groups)
        result.steps.append(step)
        lib = step.next_library
    return result


def plot_extraction(result: ExtractionResult, path: str | os.PathLike, top: int = 32) -> None:
    """Pattern-use histogram per step (the paper's Figure 4): bars sorted by use, the patterns
    kept for the next step highlighted, each labelled with its kept positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.steps)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.4 * n + 0.3), squeeze=False)
    for ax, s in zip(axes[:, 0], result.steps):
        order = torch.argsort(s.counts, descending=True, stable=True)[:top].tolist()
        pos = positions(s.library)
        total = max(1, int(s.counts.sum()))
        heights = [100 * int(s.counts[i]) / total for i in order]
        colors = ["tab:blue" if rank < s.size else "tab:gray" for rank in range(len(order))]
        ax.bar(range(len(order)), heights, color=colors)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(["".join(map(str, pos[i])) for i in order], rotation=90, fontsize=7)
        ax.set_ylabel("% of kernels")
        ax.set_title(f"library of {s.library.shape[0]} patterns: blue = {s.size} kept", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)
