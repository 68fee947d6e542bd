"""Pooling with ceil_mode, count_include_pad=False and dilated max pooling, through the whole
compiler from a traced module and from an ONNX file, against PyTorch."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import patsparse as ps
from patsparse.errors import UnsupportedError


def assert_close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * scale, f"max abs error {err} > 1e-4 * {scale}"


class Pools(nn.Module):
    """SqueezeNet's ceil-mode max pools, both average-pool divisors, a dilated max pool, one
    after a ReLU conv (the layout's halo may pad it) and the functional forms."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.p1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.p2 = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.p3 = nn.MaxPool2d(3, 1, 1, dilation=2)
        self.p4 = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x):
        x = self.p1(torch.relu(self.c1(x)))
        x = self.p2(self.c2(x))
        x = self.p3(x)
        x = F.avg_pool2d(x, 3, 1, 1, False, False)
        return self.p4(F.max_pool2d(x, 2, 2, 0, 1, True))


@pytest.mark.parametrize("size", [(17, 23), (16, 16)])
def test_pools_torch_and_onnx(size, tmp_path):
    torch.manual_seed(0)
    m = Pools().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want = m(x)
    assert_close(ps.compile(m, x[:1], threads=2)(x), want)
    path = tmp_path / "p.onnx"
    torch.onnx.export(m, x[:1], str(path), dynamo=False, opset_version=17)
    assert_close(ps.compile(str(path), threads=2)(x), want)


def test_unsupported_pool_forms_name_the_layer():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(2, divisor_override=3))
    with pytest.raises(UnsupportedError, match="'1'.*divisor_override"):
        ps.compile(m, torch.zeros(1, 3, 8, 8))
