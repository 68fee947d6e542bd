"""Which kernel a pattern-pruned 3x3 conv runs: the pattern kernel, or a dense conv kernel
(Winograd, implicit GEMM) with the zeros in place. Untuned, the cost model decides
(kernels.DENSE_MARGIN); the tuner measures both families. Either way the result matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_export import check

import patsparse as ps
from patsparse.compiler.api import build_from_graph, capture
from patsparse.compiler.codegen.kernels import candidates, dense_schedule, generate
from patsparse.compiler.codegen.plan import plan_graph
from patsparse.compiler.target import TARGETS, detect

HOST = detect()
AVX512 = TARGETS["x86-64-avx512"]
# (row, col) taps of PatDNN-style 4-entry masks, the centre in each
MASKS = [((0, 1), (1, 0), (1, 1), (1, 2)), ((1, 0), (1, 1), (1, 2), (2, 1)),
         ((0, 1), (1, 1), (1, 2), (2, 1)), ((0, 0), (0, 1), (1, 0), (1, 1))]


def pattern_pruned(conv: nn.Conv2d, seed: int = 0) -> nn.Conv2d:
    """``conv`` with every kernel cut to one of MASKS (4 of 9 taps), drawn at random."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(MASKS), 3, 3), np.float32)
    for i, m in enumerate(MASKS):
        for r, c in m:
            masks[i, r, c] = 1
    pick = rng.integers(0, len(masks), conv.weight.shape[:2])
    with torch.no_grad():
        conv.weight.mul_(torch.from_numpy(masks[pick]))
    return conv


def net(channels: int) -> nn.Module:
    """Two pattern-pruned (2.25x) 3x3 convs of ``channels`` channels, a ReLU between."""
    torch.manual_seed(0)
    return nn.Sequential(pattern_pruned(nn.Conv2d(channels, channels, 3, padding=1)), nn.ReLU(),
                         pattern_pruned(nn.Conv2d(channels, channels, 3, padding=1), seed=1)).eval()


def family(model: nn.Module, x: torch.Tensor, target) -> list[str]:
    """The kernel family of each pattern-matched conv of ``model`` untuned on ``target``."""
    plan = plan_graph(capture(model, x[:1]), target=target, threads=2)
    kernels = [generate(s, None, target, 2) for s in plan.steps if s.kind == "pattern_conv"]
    return ["wino" if "wino" in k.schedule else "dense" if dense_schedule(k.schedule) else "pattern"
            for k in kernels]


def test_untuned_choice_follows_the_cost_model():
    """4 of 9 taps, 64 channels on a 32x32 plane: the pattern kernel (measured 1.08x faster than
    Winograd there, VGG-16 CIFAR). 256 channels on a 16x16 plane: Winograd F(4x4, 3x3) with the
    zeros in place (modelled 1.4x cheaper; 128 channels at 16x16, modelled 1.19x, measured 1.14-1.24x
    faster). On a 4x4 plane (few tiles, idle lanes) the pattern kernel stays."""
    assert family(net(64), torch.zeros(1, 64, 32, 32), AVX512) == ["pattern", "pattern"]
    assert family(net(256), torch.zeros(1, 256, 16, 16), AVX512) == ["wino", "wino"]
    assert family(net(256), torch.zeros(1, 256, 4, 4), AVX512) == ["pattern", "pattern"]


def test_tuner_measures_both_families():
    """A pattern layer's tuning candidates hold pattern schedules and dense ones (Winograd among
    them); the untuned default comes first when it is a dense one."""
    for channels, H, first_dense in ((64, 32, False), (256, 16, True)):
        plan = plan_graph(capture(net(channels), torch.zeros(1, channels, H, H)), target=AVX512, threads=2)
        cands = candidates(next(s for s in plan.steps if s.kind == "pattern_conv"), AVX512, 2)
        assert any("wino" in c for c in cands) and any("layout" in c for c in cands)
        assert dense_schedule(cands[0]) == first_dense


def test_either_path_matches_torch():
    """The host's untuned choice, and both pattern layers forced onto a Winograd schedule,
    compute what PyTorch computes."""
    model = net(32)
    x = torch.randn(2, 32, 20, 20)
    check(np.asarray(ps.compile(model, x[:1], threads=2)(x)).reshape(2, -1), model, x.numpy())
    plan = plan_graph(capture(model, x[:1]), target=HOST, threads=2)
    steps = [s for s in plan.steps if s.kind == "pattern_conv"]
    assert len(steps) == 2
    forced = {s.cname: next(c for c in candidates(s, HOST, 2) if "wino" in c) for s in steps}
    cm = build_from_graph(capture(model, x[:1]), threads=2, schedules=forced, target=HOST)
    assert sum("wino" in layer["schedule"] for layer in cm.manifest["layers"]) == 2
    check(np.asarray(cm(x)).reshape(2, -1), model, x.numpy())


@pytest.mark.slow
def test_tuned_compile_matches_torch():
    """With tune=True the measured faster family runs (either one); the result is PyTorch's."""
    model = net(16)
    x = torch.randn(1, 16, 24, 24)
    cm = ps.compile(model, x, threads=2, tune=True)
    check(np.asarray(cm(x)).reshape(1, -1), model, x.numpy())
