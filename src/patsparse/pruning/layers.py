"""Which conv layers are pruned, how, and how many kernels each keeps for a requested rate.

Rules (paper section 7 and PatDNN):
- every 3x3 ``nn.Conv2d`` is pruned except the model's first conv (the input layer, kept dense
  as in the paper): regular and grouped 3x3 convs get pattern + connectivity pruning, depthwise
  3x3 convs (one input channel per group) get patterns only (a depthwise filter has one kernel,
  so removing kernels would remove whole channels);
- 1x1 convs get connectivity pruning only when asked (``conv1x1=True`` or named in ``layers``).

``rate`` is the compression rate of the pruned 3x3 convs: dense weights / kept weights over those
layers (for a model whose pruned 3x3 convs are all depthwise, e.g. MobileNet-V2, a rate above
2.25 comes from its 1x1 convs and counts over depthwise + 1x1 convs). Patterns alone keep 4 of 9 weights (2.25x); the remaining factor comes from connectivity
pruning, whose kernel budget is solved globally so that pattern-only (depthwise) layers are
accounted for, then spread over layers either uniformly (the paper: the same fraction everywhere)
or by LAMP scores (Lee et al., ICLR 2021, applied to kernel energies: one global ranking in which
each kernel's energy is divided by the energy of the kernels at least as strong in its own layer,
so layers with many redundant kernels give up more), and rounded by largest remainder so the
rate is met closely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..patterns.library import pattern_scores

PATTERN_RATE = 9 / 4  # what pattern pruning alone gives on a 3x3 kernel
PATTERN_AND_CONNECTIVITY = "pattern+connectivity"
PATTERN = "pattern"
CONNECTIVITY = "connectivity"
MODES = (PATTERN_AND_CONNECTIVITY, PATTERN, CONNECTIVITY)


@dataclass
class LayerPlan:
    """One pruned layer: its mode and (for connectivity) the number of kernels kept in it.

    ``keep`` is a kernel count for the whole layer; in balanced mode it is a multiple of the
    number of filters (the same count per filter).
    """

    name: str
    module: nn.Conv2d
    mode: str
    keep: int | None = None
    balanced: bool = False

    @property
    def kernels(self) -> int:
        w = self.module.weight
        return int(w.shape[0] * w.shape[1])


def is_3x3(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)


def is_1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)


def is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.weight.shape[1] == 1


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """All ``nn.Conv2d`` of a model, in registration order (the forward order for zoo models)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _mode(m: nn.Conv2d) -> str:
    if is_3x3(m):
        return PATTERN if is_depthwise(m) else PATTERN_AND_CONNECTIVITY
    return CONNECTIVITY


def select_layers(model: nn.Module, layers: Sequence[str] | None = None,
                  conv1x1: bool = False) -> list[tuple[str, nn.Conv2d, str]]:
    """``(name, conv, mode)`` of the layers to prune; ``layers`` names them explicitly.

    Raises InputError for an unknown or unprunable name, or when nothing is left to prune.
    """
    convs = conv_layers(model)
    if layers is None:
        chosen = [(n, m) for i, (n, m) in enumerate(convs)
                  if i > 0 and (is_3x3(m) or (conv1x1 and is_1x1(m)))]
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
                                 f"(patterns) and 1x1 (connectivity) convs can be pruned")
            chosen.append((name, m))
    if not any(is_3x3(m) for _, m in chosen):
        raise InputError(f"no prunable 3x3 conv in {type(model).__name__}: pattern pruning needs "
                         f"3x3 Conv2d layers (the first conv stays dense unless named in layers=)")
    return [(n, m, _mode(m)) for n, m in chosen]


def _allocate(targets: list[float], units: list[int], caps: list[int], total: int) -> list[int]:
    """Integer kernel counts per layer, multiples of ``units``, >= 1 unit, <= cap, summing as
    close to ``total`` as possible (largest remainder first)."""
    counts = [max(1, min(c, math.floor(t / u))) for t, u, c in zip(targets, units, caps)]
    left = total - sum(n * u for n, u in zip(counts, units))
    order = sorted(range(len(targets)), key=lambda i: counts[i] - targets[i] / units[i])
    for i in order:
        if left <= 0:
            break
        if counts[i] < caps[i] and units[i] <= 2 * left:
            counts[i] += 1
            left -= units[i]
    return [n * u for n, u in zip(counts, units)]


def lamp_shares(energies: Sequence[torch.Tensor], total: int, floors: Sequence[int]) -> list[int]:
    """Kernels kept per layer when ``total`` kernels are chosen by one global LAMP ranking.

    ``energies[l]`` holds the squared norm each kernel of layer ``l`` would keep; every layer
    keeps at least ``floors[l]`` (its strongest kernels). A kernel's LAMP score is its energy over
    the summed energy of the kernels of its layer that are at least as strong, which makes the
    scores comparable across layers whatever their scale.
    """
    scores, owners, counts = [], [], []
    for layer, (e, floor) in enumerate(zip(energies, floors)):
        e = e.detach().flatten().double().sort().values  # ascending
        tail = e.flip(0).cumsum(0).flip(0).clamp_min(1e-300)
        s = e / tail
        counts.append(min(floor, e.numel()))
        rest = s[: e.numel() - counts[-1]]  # the floor keeps the strongest, i.e. the last ones
        scores.append(rest)
        owners.append(torch.full_like(rest, layer, dtype=torch.long))
    left = total - sum(counts)
    if left > 0:
        allowed = torch.cat(scores)
        top = torch.topk(allowed, min(left, allowed.numel()), sorted=False).indices
        for layer, n in zip(*torch.cat(owners)[top].unique(return_counts=True)):
            counts[int(layer)] += int(n)
    return counts


def plan_layers(model: nn.Module, rate: float, layers: Sequence[str] | None = None,
                conv1x1: bool = False, balanced: bool = False, allocation: str = "uniform",
                library: torch.Tensor | None = None, min_layer_keep: float = 0.25) -> list[LayerPlan]:
    """Decide each pruned layer's mode and kernel budget for a 3x3-conv compression ``rate``.

    ``allocation="lamp"`` spreads the connectivity budget by :func:`lamp_shares` over the
    energy each kernel keeps after pattern projection onto ``library``, with no layer below
    ``min_layer_keep`` of its uniform share; ``"uniform"`` keeps the same fraction everywhere.
    """
    if allocation not in ("uniform", "lamp"):
        raise InputError(f"allocation must be 'uniform' or 'lamp', got {allocation!r}")
    if allocation == "lamp" and library is None:
        raise InputError("allocation='lamp' needs the pattern library (the energies are measured after projection)")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise InputError(f"rate must be a number, got {rate!r}")
    if rate < PATTERN_RATE - 1e-9:
        raise InputError(f"rate {rate} cannot be reached: pattern pruning alone already gives "
                         f"{PATTERN_RATE}x on 3x3 convs, so the rate must be >= 2.25")
    chosen = select_layers(model, layers, conv1x1)
    plans = [LayerPlan(n, m, mode, balanced=balanced) for n, m, mode in chosen]
    pattern_only = sum(p.kernels for p in plans if p.mode == PATTERN)
    conn = [p for p in plans if p.mode == PATTERN_AND_CONNECTIVITY]
    conn_kernels = sum(p.kernels for p in conn)
    keep_fraction = PATTERN_RATE / rate
    if conn_kernels:
        # kept 3x3 weights = 4 * (pattern-only kernels + kept kernels) = 9 * all kernels / rate
        target = 9 * (pattern_only + conn_kernels) / rate / 4 - pattern_only
        if target < 1 - 1e-9:
            best = 9 * (pattern_only + conn_kernels) / (4 * (pattern_only + len(conn)))
            raise InputError(f"rate {rate} cannot be reached: the depthwise (pattern-only) layers "
                             f"alone keep too many weights; the highest reachable rate is about {best:.2f}")
        fraction = min(1.0, target / conn_kernels)
        units = [p.module.weight.shape[0] if balanced else 1 for p in conn]
        caps = [p.kernels // u for p, u in zip(conn, units)]
        shares = [fraction * p.kernels for p in conn]
        if allocation == "lamp":
            energies = [pattern_scores(p.module.weight, library).max(dim=1).values for p in conn]
            floors = [max(u, math.ceil(min_layer_keep * s)) for s, u in zip(shares, units)]
            shares = [float(n) for n in lamp_shares(energies, round(target), floors)]
        counts = _allocate(shares, units, caps, round(target))
        kept = sum(counts)
        reached = 9 * (pattern_only + conn_kernels) / (4 * (pattern_only + kept))
        if reached < rate * 0.98:
            minimum = sum(units)
            rate_of = lambda n: 9 * (pattern_only + conn_kernels) / (4 * (pattern_only + n))  # noqa: E731
            if kept <= minimum:
                raise InputError(f"rate {rate} cannot be reached with these layers: keeping at least one "
                                 f"kernel {'per filter' if balanced else 'per layer'} limits the rate to "
                                 f"about {rate_of(minimum):.2f} ({len(conn)} layers, {conn_kernels} kernels)")
            fewer = max(minimum, kept - min(units))
            raise InputError(f"rate {rate} cannot be met within 2%: kernels are kept whole, and keeping "
                             f"{kept} or {fewer} of {conn_kernels} kernels gives {rate_of(kept):.2f}x or "
                             f"{rate_of(fewer):.2f}x; ask for a rate near one of those")
        for p, c in zip(conn, counts):
            p.keep = c
    elif rate > PATTERN_RATE * 1.02:
        return _plan_depthwise_model(model, rate, layers, balanced)
    for p in plans:
        if p.mode == CONNECTIVITY:
            o, i = p.module.weight.shape[:2]
            per = i if balanced else o * i
            n = max(1, min(per, round(keep_fraction * per)))
            p.keep = n * o if balanced else n
    return plans


def _plan_depthwise_model(model: nn.Module, rate: float, layers: Sequence[str] | None,
                          balanced: bool) -> list[LayerPlan]:
    """MobileNet-style models: every pruned 3x3 conv is depthwise (patterns only, 2.25x), so a
    higher rate can only come from the 1x1 convs. They are connectivity-pruned (automatically
    when ``layers`` is not given) and ``rate`` counts over all pruned convs: depthwise 3x3 + 1x1.
    """
    chosen = select_layers(model, layers, conv1x1=layers is None)
    plans = [LayerPlan(n, m, mode, balanced=balanced) for n, m, mode in chosen]
    ones = [p for p in plans if p.mode == CONNECTIVITY]
    if not ones:
        raise InputError(f"rate {rate} cannot be reached: the pruned 3x3 convs are all depthwise "
                         f"(patterns only, 2.25x) and no 1x1 conv is pruned")
    dense = sum(p.module.weight.numel() for p in plans)
    fixed = sum(4 * p.kernels for p in plans if p.mode == PATTERN)
    per_kernel = [p.module.weight[0, 0].numel() for p in ones]
    target = dense / rate - fixed  # weights the 1x1 convs may keep
    floor = sum(c * (p.module.weight.shape[0] if balanced else 1) for p, c in zip(ones, per_kernel))
    if target < floor:
        best = dense / (fixed + floor)
        raise InputError(f"rate {rate} cannot be reached: the depthwise 3x3 convs keep 4/9 of their "
                         f"weights and the 1x1 convs at least one kernel {'per filter' if balanced else 'each'}; "
                         f"the highest reachable rate is about {best:.2f}")
    fraction = min(1.0, target / sum(p.module.weight.numel() for p in ones))
    for p in ones:
        o, i = p.module.weight.shape[:2]
        per = i if balanced else o * i
        n = max(1, min(per, round(fraction * per)))
        p.keep = n * o if balanced else n
    return plans
