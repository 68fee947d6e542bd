"""Figure-5-style grids: the same images through a dense network and its pattern-pruned twin.

One row per image; the first column is the image, then one column per (method, network) panel.
Saliency maps are drawn as |value| max over channels, each panel clipped at its own 99th
percentile (so one hot pixel does not wash out the rest); inverted representations are images
and are drawn as such. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .metrics import to_array, to_map


@dataclass
class Panel:
    """One cell of the grid: ``kind`` is "saliency" (a map, shown as |value|) or "image"."""

    data: np.ndarray | torch.Tensor
    kind: str = "saliency"
    note: str = ""   # printed under the panel, e.g. a metric value


def to_display(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image for imshow: (H, W) or (H, W, 3) scaled to [0, 1] from (C, H, W) / (1, C, H, W)
    / (H, W) data of any range (per-image min-max)."""
    a = to_array(x)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def saliency_display(x: np.ndarray | torch.Tensor, clip_percentile: float = 99.0) -> np.ndarray:
    m = to_map(x)
    top = np.percentile(m, clip_percentile)
    return np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m)


def saliency_grid(images: Sequence[np.ndarray | torch.Tensor], columns: Sequence[str],
                  panels: Sequence[Sequence[Panel]], path: str | os.PathLike, *,
                  row_labels: Sequence[str] | None = None, title: str = "", cell_inches: float = 1.6) -> Path:
    """Save the grid to ``path`` (PNG/PDF by extension) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(panels) != len(images):
        raise InputError(f"saliency_grid: {len(images)} images but {len(panels)} panel rows")
    for i, row in enumerate(panels):
        if len(row) != len(columns):
            raise InputError(f"saliency_grid: row {i} has {len(row)} panels for {len(columns)} columns")
        for j, p in enumerate(row):
            if p.kind not in ("saliency", "image"):
                raise InputError(f"saliency_grid: panel ({i}, {j}) has unknown kind {p.kind!r}")
    n_rows, n_cols = len(images), len(columns) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols, cell_inches * n_rows * 1.12),
                             squeeze=False)
    for i, (img, row) in enumerate(zip(images, panels)):
        shown = to_display(img)
        axes[i][0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        if row_labels:
            axes[i][0].set_title(row_labels[i], fontsize=7)
        for j, p in enumerate(row, start=1):
            ax = axes[i][j]
            if p.kind == "saliency":
                ax.imshow(saliency_display(p.data), cmap="gray")
            else:
                d = to_display(p.data)
                ax.imshow(d, cmap="gray" if d.ndim == 2 else None)
            if i == 0:
                ax.set_title(columns[j - 1], fontsize=7)
            if p.note:
                ax.set_xlabel(p.note, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    height = cell_inches * n_rows * 1.12
    if title:
        fig.suptitle(title, fontsize=9)
    # leave a band of ~0.4 inch on top for the title, whatever the number of rows
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height) if title else None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
