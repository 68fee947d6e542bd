"""Which conv layers are pruned, how, and how many kernels each keeps for a requested rate.

Rules (paper section 7 and PatDNN):
- every 3x3 ``nn.Conv2d`` is pruned except the model's first conv (the input layer, kept dense
  as in the paper): regular and grouped 3x3 convs get pattern + connectivity pruning, depthwise
  3x3 convs (one input channel per group) get patterns only (a depthwise filter has one kernel,
  so removing kernels would remove whole channels);
- 1x1 convs, per ``conv1x1``: "grouped" (the default) prunes every 1x1 conv but the first conv
  and the classifier in virtual 3x3 kernels (:mod:`patsparse.pruning.grouping`): patterns on
  every group of 9 input channels, connectivity on whole groups; "connectivity" prunes the same
  convs by connectivity alone (single weights, no patterns); "dense" leaves 1x1 convs dense.
  The classifier is the model's last ``nn.Conv2d`` when it is 1x1 (registration order, the
  order the first-conv rule also uses): it computes the classes (all-conv nets) or feeds only
  the classifier head (MobileNet-V2's ``features.18.0``, ResNet-50's ``layer4.2.conv3``), so no
  other conv reads its output. A 1x1 conv that cannot form virtual kernels (fewer than 9 input
  channels, or groups > 1) stays dense with a warning naming it, or is an InputError when named
  in ``layers``.

``rate`` is the compression rate over every pruned layer: their dense weights / their kept
weights (3x3, depthwise 3x3 and 1x1 convs together). Patterns keep 4 of 9 weights per kernel
(2.25x); depthwise layers keep exactly that; the remaining factor comes from connectivity
pruning, whose budget (in weights) is spread over the other layers either uniformly (the paper:
the same fraction of kernels everywhere) or by LAMP scores (Lee et al., ICLR 2021, applied to
kernel energies: one global ranking in which each kernel's energy is divided by the energy of
the kernels at least as strong in its own layer, so layers with many redundant kernels give up
more), and rounded by largest remainder so the rate is met closely. A virtual kernel counts as
one kernel; the short last group of a 1x1 conv counts at its largest cut mask.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..patterns.library import PATTERN_SIZE, pattern_library, pattern_scores
from .grouping import group_costs, group_count, grouping_problem, kernel_rows

PATTERN_RATE = 9 / 4  # what pattern pruning alone gives on a 3x3 kernel
PATTERN_AND_CONNECTIVITY = "pattern+connectivity"
PATTERN = "pattern"
CONNECTIVITY = "connectivity"
GROUPED = "grouped1x1"  # a 1x1 conv: patterns on virtual 3x3 kernels, connectivity on whole groups
MODES = (PATTERN_AND_CONNECTIVITY, PATTERN, CONNECTIVITY, GROUPED)
CONV1X1 = ("grouped", "connectivity", "dense")


@dataclass
class LayerPlan:
    """One pruned layer: its mode and (for connectivity) the number of kernels kept in it.

    ``keep`` is a kernel count for the whole layer (virtual kernels for a grouped 1x1 conv);
    in balanced mode it is a multiple of the number of filters (the same count per filter).
    """

    name: str
    module: nn.Conv2d
    mode: str
    keep: int | None = None
    balanced: bool = False

    @property
    def grouped(self) -> bool:
        """Pattern-pruned in virtual 3x3 kernels: a 1x1 conv in a pattern mode."""
        return is_1x1(self.module) and self.mode != CONNECTIVITY

    @property
    def kernels(self) -> int:
        o, i = self.module.weight.shape[:2]
        return int(o * (group_count(i) if self.grouped else i))


SCHEDULES = ("geometric", "cubic")


def scheduled_keep(plan: LayerPlan, fraction: float, schedule: str) -> int:
    """Kernels a connectivity layer keeps at ``fraction`` (0 -> 1, clamped) of a gradual schedule
    from all its kernels to ``plan.keep``, never fewer than ``plan.keep``.

    "geometric": the kept fraction is ``(keep / kernels) ** fraction`` (ADMM's per-iteration
    schedule); "cubic" (Zhu & Gupta 2017): the pruned share of the target grows as
    ``1 - (1 - fraction) ** 3``, fast while the weights are far from trained into the masks and
    slowly near the end, so the last changes are small. Both give ``plan.keep`` at 1.
    """
    f = min(1.0, max(0.0, float(fraction)))
    if schedule == "geometric":
        keep = plan.kernels * (plan.keep / plan.kernels) ** f
    elif schedule == "cubic":
        keep = plan.kernels - (plan.kernels - plan.keep) * (1 - (1 - f) ** 3)
    else:
        raise InputError(f"connectivity schedule must be one of {SCHEDULES}, got {schedule!r}")
    return max(plan.keep, round(keep))


def is_3x3(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)


def is_1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)


def is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.weight.shape[1] == 1


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """All ``nn.Conv2d`` of a model, in registration order (the forward order for zoo models)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _mode(m: nn.Conv2d, conv1x1: str) -> str:
    if is_3x3(m):
        return PATTERN if is_depthwise(m) else PATTERN_AND_CONNECTIVITY
    return GROUPED if conv1x1 == "grouped" else CONNECTIVITY


def select_layers(model: nn.Module, layers: Sequence[str] | None = None,
                  conv1x1: str = "grouped") -> list[tuple[str, nn.Conv2d, str]]:
    """``(name, conv, mode)`` of the layers to prune; ``layers`` names them explicitly (a named
    1x1 conv is pruned as ``conv1x1`` says, which then must not be "dense").

    Raises InputError for an unknown or unprunable name, or when nothing is left to prune.
    """
    if conv1x1 not in CONV1X1:
        raise InputError(f"conv1x1 must be one of {CONV1X1}, got {conv1x1!r}")
    convs = conv_layers(model)
    if layers is None:
        classifier = len(convs) - 1 if convs and is_1x1(convs[-1][1]) else None
        chosen, dense = [], []
        for i, (n, m) in enumerate(convs):
            if i == 0 or i == classifier or not (is_3x3(m) or (is_1x1(m) and conv1x1 != "dense")):
                continue
            problem = grouping_problem(m) if is_1x1(m) and conv1x1 == "grouped" else None
            if problem:
                dense.append(f"{n} ({problem})")
            else:
                chosen.append((n, m))
        if dense:
            warnings.warn(f"patsparse: {len(dense)} 1x1 conv(s) left dense, they cannot form virtual 3x3 "
                          f"kernels: {', '.join(dense[:8])}{' ...' if len(dense) > 8 else ''}", stacklevel=2)
    else:
        if isinstance(layers, str):
            layers = [layers]
        by_name = dict(convs)
        chosen = []
        for name in layers:
            m = by_name.get(name)
            if m is None:
                known = [n for n, c in convs if is_3x3(c) or is_1x1(c)]
                raise InputError(f"layer {name!r} is not a Conv2d of the model; prunable convs: "
                                 f"{known[:12]}{' ...' if len(known) > 12 else ''}")
            if not (is_3x3(m) or is_1x1(m)):
                raise InputError(f"layer {name!r} has kernel size {tuple(m.kernel_size)}; only 3x3 "
                                 f"(patterns) and 1x1 (virtual 3x3 kernels or connectivity) convs can be pruned")
            if is_1x1(m) and conv1x1 == "dense":
                raise InputError(f"layer {name!r} is a 1x1 conv but conv1x1='dense'; use 'grouped' or "
                                 f"'connectivity' to prune it")
            problem = grouping_problem(m) if is_1x1(m) and conv1x1 == "grouped" else None
            if problem:
                raise InputError(f"layer {name!r} cannot be pruned in virtual 3x3 kernels: {problem}; "
                                 f"leave it out of layers= or use conv1x1='connectivity'")
            chosen.append((name, m))
    modes = [(n, m, _mode(m, conv1x1)) for n, m in chosen]
    if not any(mode != CONNECTIVITY for _, _, mode in modes):
        raise InputError(f"no prunable 3x3 conv or groupable 1x1 conv in {type(model).__name__}: pattern pruning "
                         f"needs 3x3 Conv2d layers or 1x1 convs with at least 9 input channels (the first conv "
                         f"and a last 1x1 conv stay dense unless named in layers=)")
    return modes


def kernel_costs(plan: LayerPlan, library: torch.Tensor) -> torch.Tensor:
    """Weights each kernel of a planned layer keeps when it is kept, (kernels,) float: 4 for a
    3x3 pattern kernel, a 1x1 conv's virtual kernels per :func:`group_costs`, kh * kw for
    connectivity alone."""
    o, i, kh, kw = plan.module.weight.shape
    if plan.grouped:
        return group_costs(library, o, i)
    return torch.full((plan.kernels,), float(PATTERN_SIZE if plan.mode != CONNECTIVITY else kh * kw))


def kernel_energies(plan: LayerPlan, library: torch.Tensor) -> torch.Tensor:
    """Squared norm each kernel of a layer keeps once pruned: after pattern projection onto
    ``library``, or the whole kernel's for connectivity alone."""
    rows = kernel_rows(plan.module.weight.detach(), plan.grouped)
    if plan.mode == CONNECTIVITY:
        return rows.pow(2).sum(dim=2).flatten()
    return pattern_scores(rows, library).max(dim=1).values


def _step_costs(costs: torch.Tensor, unit: int) -> list[float]:
    """Kept weights of a layer after 0, 1, 2, ... steps of ``unit`` kernels, its costliest kernels
    first: connectivity keeps the strongest kernels, and the short last group of a 1x1 conv,
    with fewer channels, is rarely among them, so this is what the layer keeps, or a bit more."""
    cum = costs.double().sort(descending=True).values.cumsum(0)[unit - 1::unit]
    return [0.0, *cum.tolist()]


def _allocate(targets: list[float], units: list[int], kept: list[list[float]], budget: float,
              ceiling: float) -> list[int]:
    """Integer kernel counts per layer, multiples of ``units``, >= 1 unit, whose kept weights
    (``kept[l][steps]``, from :func:`_step_costs`) come as close to ``budget`` as possible
    without passing ``ceiling`` when a step can be avoided: rounded down first, then steps
    added by largest remainder (or removed, smallest first, when rounding down already spends
    more than the budget)."""
    caps = [len(k) - 1 for k in kept]
    counts = [max(1, min(c, math.floor(t / u))) for t, u, c in zip(targets, units, caps)]
    left = budget - sum(k[n] for k, n in zip(kept, counts))
    order = sorted(range(len(targets)), key=lambda i: counts[i] - targets[i] / units[i])
    moved = True
    while moved and left > 0:  # passes over the layers, largest remainder first
        moved = False
        for i in order:
            step = kept[i][counts[i] + 1] - kept[i][counts[i]] if counts[i] < caps[i] else math.inf
            if 0 < left and step <= 2 * left and budget - left + step <= ceiling:
                counts[i] += 1
                left -= step
                moved = True
    moved = True
    while moved and left < 0:
        moved = False
        for i in reversed(order):
            step = kept[i][counts[i]] - kept[i][counts[i] - 1] if counts[i] > 1 else math.inf
            if left < 0 and step <= -2 * left:
                counts[i] -= 1
                left += step
                moved = True
    return [n * u for n, u in zip(counts, units)]


def lamp_shares(energies: Sequence[torch.Tensor], total: float, floors: Sequence[int],
                costs: Sequence[torch.Tensor] | None = None) -> list[int]:
    """Kernels kept per layer when kernels are taken by one global LAMP ranking until their
    summed cost reaches ``total`` (each kernel costs 1 when ``costs`` is None: ``total`` kernels).

    ``energies[l]`` holds the squared norm each kernel of layer ``l`` would keep and
    ``costs[l]`` the weights it would keep; every layer keeps at least ``floors[l]`` (its
    strongest kernels). A kernel's LAMP score is its energy over the summed energy of the
    kernels of its layer that are at least as strong, which makes the scores comparable across
    layers whatever their scale.
    """
    scores, owners, prices, counts = [], [], [], []
    spent = 0.0
    for layer, (e, floor) in enumerate(zip(energies, floors)):
        e = e.detach().flatten().double()
        c = torch.ones_like(e) if costs is None else costs[layer].detach().flatten().double()
        e, order = e.sort(stable=True)  # ascending
        c = c[order]
        tail = e.flip(0).cumsum(0).flip(0).clamp_min(1e-300)
        s = e / tail
        counts.append(min(floor, e.numel()))
        rest = e.numel() - counts[-1]  # the floor keeps the strongest, i.e. the last ones
        spent += float(c[rest:].sum())
        scores.append(s[:rest])
        prices.append(c[:rest])
        owners.append(torch.full((rest,), layer, dtype=torch.long))
    left = total - spent
    if left > 0:
        allowed, price = torch.cat(scores), torch.cat(prices)
        order = torch.sort(allowed, descending=True, stable=True).indices
        top = order[torch.cumsum(price[order], 0) <= left + 1e-9]
        for layer, n in zip(*torch.cat(owners)[top].unique(return_counts=True)):
            counts[int(layer)] += int(n)
    return counts


def plan_layers(model: nn.Module, rate: float, layers: Sequence[str] | None = None,
                conv1x1: str = "grouped", balanced: bool = False, allocation: str = "uniform",
                library: torch.Tensor | None = None, min_layer_keep: float = 0.25) -> list[LayerPlan]:
    """Decide each pruned layer's mode and kernel budget for a compression ``rate`` over the
    pruned layers (``layers`` and ``conv1x1`` select them as in :func:`select_layers`).

    ``library`` (default phase2) sizes the short groups of 1x1 convs and, with
    ``allocation="lamp"``, gives the energies: the connectivity budget is spread by
    :func:`lamp_shares` over the energy each kernel keeps after pattern projection, with no
    layer below ``min_layer_keep`` of its uniform share; ``"uniform"`` keeps the same fraction
    of kernels everywhere.
    """
    if allocation not in ("uniform", "lamp"):
        raise InputError(f"allocation must be 'uniform' or 'lamp', got {allocation!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise InputError(f"rate must be a number, got {rate!r}")
    if rate < PATTERN_RATE - 1e-9:
        raise InputError(f"rate {rate} cannot be reached: pattern pruning alone already gives "
                         f"{PATTERN_RATE}x on 3x3 convs, so the rate must be >= 2.25")
    lib = pattern_library("phase2") if library is None else library
    plans = [LayerPlan(n, m, mode, balanced=balanced) for n, m, mode in select_layers(model, layers, conv1x1)]
    dense = sum(p.module.weight.numel() for p in plans)
    fixed = sum(float(kernel_costs(p, lib).sum()) for p in plans if p.mode == PATTERN)  # depthwise: exact
    conn = [p for p in plans if p.mode != PATTERN]
    budget = dense / rate - fixed  # weights the connectivity layers may keep
    if not conn:
        if dense / fixed < rate * 0.98:
            raise InputError(f"rate {rate} cannot be reached: every pruned conv is depthwise 3x3 (patterns only, "
                             f"{dense / fixed:.2f}x); prune the 1x1 convs too (conv1x1='grouped')")
        return plans
    costs = [kernel_costs(p, lib) for p in conn]
    units = [p.module.weight.shape[0] if balanced else 1 for p in conn]
    steps = [_step_costs(c, u) for c, u in zip(costs, units)]
    rate_of = lambda kept: dense / (fixed + kept)  # noqa: E731  kept: weights of the connectivity layers
    minimum = sum(k[1] for k in steps)
    if budget < minimum * (1 - 1e-9):
        what = "depthwise (pattern-only) layers keep" if fixed > dense / rate else "layers keep"
        raise InputError(f"rate {rate} cannot be reached: the {what} too many weights with at least one kernel "
                         f"{'per filter' if balanced else 'per layer'} kept; the highest reachable rate is "
                         f"about {rate_of(minimum):.2f}")
    fraction = min(1.0, budget / sum(k[-1] for k in steps))
    shares = [fraction * p.kernels for p in conn]
    if allocation == "lamp":
        energies = [kernel_energies(p, lib) for p in conn]
        floors = [max(u, math.ceil(min_layer_keep * s)) for s, u in zip(shares, units)]
        shares = [float(n) for n in lamp_shares(energies, budget, floors, costs)]
    counts = _allocate(shares, units, steps, budget, dense / (rate * 0.98) - fixed)
    kept = sum(k[n // u] for k, n, u in zip(steps, counts, units))
    if rate_of(kept) < rate * 0.98:
        if kept <= minimum * (1 + 1e-9):
            raise InputError(f"rate {rate} cannot be reached with these layers: keeping at least one kernel "
                             f"{'per filter' if balanced else 'per layer'} limits the rate to about "
                             f"{rate_of(minimum):.2f} ({len(conn)} layers, {sum(p.kernels for p in conn)} kernels)")
        drops = [(k[n // u] - k[n // u - 1], u) for k, n, u in zip(steps, counts, units) if n > u]
        step, unit = min(drops)
        raise InputError(f"rate {rate} cannot be met within 2%: kernels are kept whole, and keeping "
                         f"{sum(counts)} or {sum(counts) - unit} of {sum(p.kernels for p in conn)} kernels "
                         f"gives {rate_of(kept):.2f}x or {rate_of(kept - step):.2f}x; ask for a rate near one of those")
    for p, c in zip(conn, counts):
        p.keep = c
    return plans
