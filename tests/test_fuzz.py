"""Differential fuzzer: random networks of the supported ops, compiled and compared with PyTorch.

Why: the hand-written tests cover the shapes someone thought of; the generators have branches
for odd sizes, stride-2 tails, channel counts that are not a multiple of the vector width,
residuals, depthwise convs, pools and pattern-sparse layers, and their combinations. Each case
is drawn from its own seed, so a failure names the seed that reproduces it. A few dozen run by
default; ``-m slow`` runs 1,000 and prints the worst error.
"""

import random
from pathlib import Path

import isolated
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import patsparse as ps
from patsparse.pruning.projection import project_model

DEFAULT_CASES = 24
SLOW_CASES = 1000
TOLERANCE = 1e-4  # max abs error relative to max(1, max |reference|)
CASE_TIMEOUT_S = 300


class Block(nn.Module):
    """One random step: a conv (dense, depthwise or pattern-prunable; optional BN, residual,
    activation), a pool, or the classifier head."""

    def __init__(self, kind: str, mods: dict, act: str, residual: bool = False, pool: tuple = ()):
        super().__init__()
        self.kind, self.act, self.residual, self.pool = kind, act, residual, pool
        self.mods = nn.ModuleDict(mods)

    def forward(self, x):
        if self.kind == "conv":
            y = self.mods["conv"](x)
            if "bn" in self.mods:
                y = self.mods["bn"](y)
            if self.residual:
                y = y + x
            return torch.relu(y) if self.act == "relu" else F.relu6(y) if self.act == "relu6" else y
        if self.kind == "maxpool":
            return F.max_pool2d(x, *self.pool)
        if self.kind == "avgpool":
            return F.avg_pool2d(x, *self.pool)
        if self.kind == "gap":
            return self.mods["fc"](F.adaptive_avg_pool2d(x, 1).flatten(1))
        return self.mods["fc"](torch.flatten(x, 1))  # "flatten"


def _conv_block(rng: random.Random, c: int, h: int, w: int):
    choice = rng.random()
    act = rng.choice(["none", "relu", "relu", "relu6"])
    if choice < 0.25 and h >= 3 and w >= 3:  # depthwise 3x3
        stride = rng.choice([1, 1, 2])
        conv = nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=rng.random() < 0.7)
        return conv, act, False
    k = rng.choice([1, 3, 3, 3, 5]) if min(h, w) >= 5 else rng.choice([1, 3]) if min(h, w) >= 3 else 1
    stride = rng.choice([1, 1, 2])
    pad = rng.randint(0, k // 2) if rng.random() < 0.3 else k // 2
    residual = stride == 1 and pad == k // 2 and rng.random() < 0.3
    cout = c if residual else rng.choice([1, 2, 3, 5, 8, 13, 16, 24, 32])
    return nn.Conv2d(c, cout, k, stride=stride, padding=pad, bias=rng.random() < 0.7), act, residual


def random_net(seed: int) -> tuple[nn.Module, tuple[int, int, int]]:
    """A random network and its (C, H, W); deterministic in ``seed``."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    shape = (rng.choice([1, 2, 3, 4, 8]), rng.randint(4, 23), rng.randint(4, 23))
    c, h, w = shape
    blocks = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        if r < 0.75:
            conv, act, residual = _conv_block(rng, c, h, w)
            mods = {"conv": conv}
            if rng.random() < 0.3:
                bn = nn.BatchNorm2d(conv.out_channels)
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.data.uniform_(0.5, 1.5)
                bn.bias.data.uniform_(-0.2, 0.2)
                mods["bn"] = bn
            blocks.append(Block("conv", mods, act, residual))
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            c, h, w = conv.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif min(h, w) >= 3:
            kind = rng.choice(["maxpool", "avgpool"])
            k = rng.choice([2, 3])
            s = rng.choice([1, 2]) if kind == "maxpool" else k
            p = rng.randint(0, k // 2) if kind == "maxpool" else 0
            blocks.append(Block(kind, {}, "none", pool=(k, s, p)))
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    head = rng.random()
    if head < 0.4:
        blocks.append(Block("gap", {"fc": nn.Linear(c, rng.randint(1, 12))}, "none"))
    elif head < 0.7:
        blocks.append(Block("flatten", {"fc": nn.Linear(c * h * w, rng.randint(1, 12))}, "none"))
    net = nn.Sequential(*blocks).eval()
    threes = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
              and m.groups == 1 and m.in_channels * m.out_channels >= 4]
    if threes and rng.random() < 0.6:  # pattern + connectivity sparsity on some 3x3 convs
        try:
            project_model(net, rng.choice([2.25, 4.0, 8.0]), "phase2", layers=threes)
        except ps.InputError:  # a layer too small for that connectivity rate: patterns only
            project_model(net, 2.25, "phase2", layers=threes)
    return net, shape


def fuzz_error(seed: int) -> float:
    """Max abs error of the compiled network ``seed`` against PyTorch, relative as TOLERANCE is."""
    net, shape = random_net(seed)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32))
    with torch.no_grad():
        want = net(x)
    got = ps.compile(net, x[:1], threads=random.Random(seed).choice([1, 2]))(x)
    assert got.shape == want.shape, f"seed {seed}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("seed", range(DEFAULT_CASES))
def test_random_network_matches_pytorch(seed, one_thread):
    err = fuzz_error(seed)
    assert err <= TOLERANCE, f"seed {seed}: relative error {err:.3g}"


def _measure(seed: int, out: str) -> None:
    """A child process's work: the error of network ``seed``, written to ``out``."""
    torch.set_num_threads(1)
    Path(out).write_text(repr(fuzz_error(seed)))


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_thousand_random_networks(tmp_path):
    """Each network in its own process (isolated.py): a crash or a hang is reported with its
    seed instead of ending the run."""
    ctx = isolated.forkserver(["test_fuzz"])
    errors, broken = {}, {}
    for seed in range(DEFAULT_CASES, DEFAULT_CASES + SLOW_CASES):
        out = tmp_path / f"{seed}.txt"
        rc = isolated.run(ctx, _measure, (seed, str(out)), CASE_TIMEOUT_S)
        if rc == 0:
            errors[seed] = float(out.read_text())
        else:
            broken[seed] = "hang" if rc is None else f"signal {-rc}" if rc < 0 else "exception"
    worst = max(errors, key=errors.get)
    print(f"\n{len(errors)} random networks compiled and run: worst relative error {errors[worst]:.3g} "
          f"(seed {worst}), median {np.median(list(errors.values())):.3g}; crashed, hung or raised: {broken}")
    bad = {s: e for s, e in errors.items() if e > TOLERANCE}
    assert not broken and not bad, f"over {TOLERANCE}: {dict(list(bad.items())[:10])}; broken: {broken}"
