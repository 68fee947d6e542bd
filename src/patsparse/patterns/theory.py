"""Why the Phase-2 patterns: the interpolation identities of the paper's section 4.

Summing the four Gaussian masks gives the binomial 3x3 Gaussian ``[[1,2,1],[2,4,2],[1,2,1]]``
(16x the normalised one): interpolating those patterns over a layer's kernels forms a Gaussian
filter (equation 2). Summing the four ELoG "T" masks gives the centre-weighted cross
``[[0,3,0],[3,4,3],[0,3,0]]``, the support of the enhanced Laplacian-of-Gaussian (equation 8).
These are exact integer identities, so they are checked exactly rather than approximately.
"""

from __future__ import annotations

import os

import torch

from .library import ELOG, GAUSSIAN, masks_from_positions, positions, validate_library

GAUSSIAN_SUM = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
ELOG_SUM = torch.tensor([[0.0, 3.0, 0.0], [3.0, 4.0, 3.0], [0.0, 3.0, 0.0]])


def gaussian_masks() -> torch.Tensor:
    """The four Gaussian masks (2x2 blocks touching the centre)."""
    return masks_from_positions(GAUSSIAN)


def elog_masks() -> torch.Tensor:
    """The four ELoG masks (centre plus three of its four cross neighbours)."""
    return masks_from_positions(ELOG)


def interpolation(masks: torch.Tensor) -> torch.Tensor:
    """The sum of a set of masks: the filter their interpolation over kernels forms."""
    return validate_library(masks).sum(dim=0)


def check_identities() -> dict[str, bool]:
    """Evaluate both identities; ``{"gaussian": True, "elog": True}`` when the theory holds."""
    return {"gaussian": bool(torch.equal(interpolation(gaussian_masks()), GAUSSIAN_SUM)),
            "elog": bool(torch.equal(interpolation(elog_masks()), ELOG_SUM))}


def plot_library(library: torch.Tensor, path: str | os.PathLike, title: str = "",
                 counts: list[int] | None = None) -> None:
    """Draw every mask of a library as a small 3x3 grid (optionally with its use count) to a
    PNG, so a user can see at a glance what an extracted library looks like."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lib = validate_library(library)
    k = lib.shape[0]
    cols = min(k, 8)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows + 0.4), squeeze=False)
    pos = positions(lib)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.axis("off")
            continue
        ax.imshow(lib[i].numpy(), cmap="Greys", vmin=0, vmax=1)
        label = f"#{i} {''.join(map(str, pos[i]))}"
        if counts is not None:
            label += f"\n{counts[i]}"
        ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)


def plot_identities(path: str | os.PathLike) -> None:
    """Plot the two masks sets beside the filters their sums form (paper section 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(8, 3.6))
    for row, (name, masks, total) in enumerate((("Gaussian", gaussian_masks(), GAUSSIAN_SUM),
                                                ("ELoG", elog_masks(), ELOG_SUM))):
        for j in range(4):
            axes[row, j].imshow(masks[j].numpy(), cmap="Greys", vmin=0, vmax=1)
            axes[row, j].set_title(f"{name} {j}", fontsize=8)
        axes[row, 4].imshow(total.numpy(), cmap="viridis")
        for (r, c), v in zip(((r, c) for r in range(3) for c in range(3)), total.flatten().tolist()):
            axes[row, 4].text(c, r, str(int(v)), ha="center", va="center", color="white", fontsize=8)
        axes[row, 4].set_title("sum", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)
