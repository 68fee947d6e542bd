"""Pooling with ceil_mode, count_include_pad=False and dilated max pooling, through the whole
compiler from a traced module and from an ONNX file, against PyTorch."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ops_check import check_torch_and_onnx

import patsparse as ps
from patsparse.errors import UnsupportedError


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
    check_torch_and_onnx(Pools(), torch.randn(2, 3, *size), tmp_path)


def test_unsupported_pool_forms_name_the_layer():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(2, divisor_override=3))
    with pytest.raises(UnsupportedError, match="'1'.*divisor_override"):
        ps.compile(m, torch.zeros(1, 3, 8, 8), strict=True)
