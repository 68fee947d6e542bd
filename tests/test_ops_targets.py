"""The new op kinds (activation family fused and standalone, standalone BatchNorm, ceil-mode /
dilated / pad-excluding pools, broadcasting binary ops, concat and split; padding, resize,
pixel / channel shuffle, softmax, constant operands) rendered for other
targets: the portable dialect at 4 and 16 lanes on this host, and aarch64 NEON cross-compiled
and run under qemu (skipped, naming the package, where the tools are missing)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_export import build_and_run, check, need_aarch64
from test_ops_movement import Movement

import patsparse as ps
from patsparse.compiler.target import generic_vectors


class AllOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.gate = nn.Conv2d(8, 8, 1)
        self.prelu = nn.PReLU(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.hardswish(self.bn0(x))
        y = F.silu(self.c1(x))
        a, b = y.split(4, 1)
        y = torch.cat([F.elu(self.c2(a)), torch.tanh(b)], 1)
        y = y * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(y, 1))) - F.gelu(y)
        y = F.max_pool2d(self.prelu(y), 3, 2, 1, 2, True)
        y = F.avg_pool2d(F.leaky_relu(y, 0.1), 3, 2, 1, True, False)
        return F.softplus(self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.clamp(y, -1, 2), 1), 1)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = AllOps().eval()
    m.bn0.running_mean.uniform_(-0.5, 0.5)
    m.bn0.running_var.uniform_(0.5, 1.5)
    return m


def _movement() -> nn.Module:
    torch.manual_seed(0)
    return Movement().eval()


# (model, one input's shape): the op kinds of test_ops_*.py
MODELS = {"all_ops": (_model, (3, 19, 23)), "movement": (_movement, (3, 9, 7))}


@pytest.mark.parametrize("which", sorted(MODELS))
@pytest.mark.parametrize("lanes,registers", [(4, 16), (16, 32)])
def test_new_ops_on_generic_vectors(lanes, registers, which):
    make, shape = MODELS[which]
    m = make()
    x = torch.randn(2, *shape)
    cm = ps.compile(m, x[:1], threads=2, strict=True, target=generic_vectors(lanes, registers))
    check(np.asarray(cm(x)).reshape(2, -1), m, x.numpy())


@pytest.mark.parametrize("which", sorted(MODELS))
def test_new_ops_on_aarch64_under_qemu(tmp_path, which):
    prefix = need_aarch64()
    make, shape = MODELS[which]
    m = make()
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    out = ps.export(m, torch.from_numpy(x[:1]), tmp_path / "proj", target="aarch64-linux-gnu")
    check(build_and_run(out, x, prefix), m, x)
