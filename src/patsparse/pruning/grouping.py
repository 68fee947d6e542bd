"""1x1 convs seen as virtual 3x3 kernels: the grouping every pruning step and the spec share.

In a 1x1 conv with weight (O, I, 1, 1), the input channels [9g, 9g+9) of one filter form
virtual kernel g, in row-major order (channel 9g + p is position p of the 3x3 mask). The last
group of a layer whose I is not a multiple of 9 has r = I - 9(G-1) channels and uses every
library mask cut to its first r positions. Why this exact layout: it is the paper's "group 1x1
kernels into 3x3", fixed so that a model pruned by any tool compiles the same way.

Laying a layer out as zero-padded rows of 9 lets the 3x3 code run unchanged: a padded entry
is zero, so the energy a cut mask keeps is the energy the full mask keeps on the padded row.
"""

from __future__ import annotations

import torch
from torch import nn

from ..patterns.library import PATTERN_SIZE

GROUP = 9  # channels per virtual 3x3 kernel


def group_count(in_channels: int) -> int:
    """Virtual kernels per filter: ceil(I / 9)."""
    return -(-int(in_channels) // GROUP)


def grouping_problem(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot be pattern-pruned in virtual 3x3 kernels, or None when it can."""
    if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != (1, 1):
        return "not a 1x1 Conv2d"
    if conv.groups != 1:
        return f"a grouped conv (groups={conv.groups}): virtual kernels are defined on ungrouped 1x1 convs only"
    if conv.in_channels < GROUP:
        return f"{conv.in_channels} input channels, fewer than the {GROUP} of one virtual 3x3 kernel"
    return None


def grouped_rows(weight: torch.Tensor) -> torch.Tensor:
    """A (O, I, 1, 1) weight as (O, G, 9) virtual kernels, the short last group zero-padded."""
    o, i = weight.shape[:2]
    flat = weight.reshape(o, i)
    pad = group_count(i) * GROUP - i
    if pad:
        flat = torch.cat([flat, flat.new_zeros(o, pad)], dim=1)
    return flat.view(o, -1, GROUP)


def kernel_rows(weight: torch.Tensor, grouped: bool) -> torch.Tensor:
    """A layer's kernels as (O, K, S) rows: virtual 3x3 kernels of a 1x1 conv when ``grouped``
    (K = G, S = 9), else the conv's own kernels (K = I, S = kh * kw)."""
    return grouped_rows(weight) if grouped else weight.flatten(2)


def from_kernel_rows(rows: torch.Tensor, shape: torch.Size | tuple[int, ...], grouped: bool) -> torch.Tensor:
    """Inverse of :func:`kernel_rows`: the padding of a short last group is dropped."""
    o, i = shape[:2]
    if grouped:
        return rows.reshape(o, -1)[:, :i].reshape(shape)
    return rows.reshape(shape)


def cut_sizes(library: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Entries each library mask keeps in a layer's last group (4 when that group is full)."""
    r = int(in_channels) - (group_count(in_channels) - 1) * GROUP
    return library.reshape(library.shape[0], GROUP)[:, :r].sum(dim=1)


def group_costs(library: torch.Tensor, out_channels: int, in_channels: int) -> torch.Tensor:
    """Weights every virtual kernel of a layer keeps once pruned, (O * G,) float, filter-major.

    Full groups keep 4; the short last group is counted at its largest cut mask, the one the
    projection picks unless the weights favour positions that only smaller cut masks keep, so
    a budget built on these counts is met or exceeded.
    """
    g = group_count(in_channels)
    cost = torch.full((out_channels, g), float(PATTERN_SIZE))
    cost[:, -1] = float(cut_sizes(library, in_channels).max())
    return cost.flatten()
