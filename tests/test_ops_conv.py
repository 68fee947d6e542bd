"""Convs with any groups, dilation, non-square kernels and asymmetric / 'same' padding (as the
equivalent square conv, capture.conv_node), from a traced module and an ONNX file, against
PyTorch; a ResNeXt block as the family test."""

import pytest
import torch
import torch.nn as nn
from ops_check import check_torch_and_onnx

import patsparse as ps
from patsparse.compiler.capture import capture_torch
from patsparse.errors import UnsupportedError


CONVS = {
    "grouped3x3": lambda: nn.Conv2d(8, 8, 3, padding=1, groups=4),
    "grouped3x3_s2": lambda: nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),
    "depthwise_multiplier": lambda: nn.Conv2d(8, 16, 3, padding=1, groups=8),
    "depthwise5x5": lambda: nn.Conv2d(8, 8, 5, padding=2, groups=8),
    "depthwise7x7_s2": lambda: nn.Conv2d(8, 8, 7, stride=2, padding=3, groups=8),
    "grouped1x1": lambda: nn.Conv2d(8, 12, 1, groups=4),
    "dilated2": lambda: nn.Conv2d(8, 6, 3, padding=2, dilation=2),
    "dilated3_same": lambda: nn.Conv2d(8, 6, 3, padding="same", dilation=3),
    "kernel1x7": lambda: nn.Conv2d(8, 6, (1, 7), padding=(0, 3)),
    "kernel3x1_s2": lambda: nn.Conv2d(8, 6, (3, 1), stride=2, padding=(1, 0)),
    "even_same": lambda: nn.Conv2d(8, 6, 2, padding="same"),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_forms(name, tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), CONVS[name](), nn.SiLU())
    check_torch_and_onnx(m, torch.randn(2, 3, 13, 18), tmp_path)


class ResNeXtBlock(nn.Module):
    """torchvision's ResNeXt bottleneck: 1x1, grouped 3x3 (cardinality 32, stride 2), 1x1,
    BatchNorm after each, a projection shortcut."""

    def __init__(self, cin=64, width=128, cout=128, groups=32, stride=2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, cout, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def test_family_resnext_block(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), ResNeXtBlock(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(128, 10))
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    check_torch_and_onnx(m, torch.randn(2, 3, 16, 16), tmp_path)


def test_conv_without_square_equivalent_names_the_layer():
    with pytest.raises(UnsupportedError, match=r"'0'.*kernel 1x7.*no square equivalent"):
        capture_torch(nn.Sequential(nn.Conv2d(3, 4, (1, 7))), torch.zeros(1, 3, 8, 8))
    with pytest.raises(UnsupportedError, match=r"'0'.*9x9 equivalent"):
        capture_torch(nn.Sequential(nn.Conv2d(3, 4, 3, padding=3, dilation=4)), torch.zeros(1, 3, 16, 16))
    with pytest.raises(UnsupportedError, match=r"'0'.*non-square stride"):
        capture_torch(nn.Sequential(nn.Conv2d(3, 4, 3, stride=(1, 2))), torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, padding=1), dict(kernel_size=3, padding=2, dilation=2),
                                dict(kernel_size=5, stride=2, padding=3), dict(kernel_size=3, dilation=3),
                                dict(kernel_size=3, padding=1, groups=4), dict(kernel_size=1)])
def test_conv1d_runs_as_a_one_row_conv(kw, tmp_path):
    """(N, C, L) inputs: Conv1d (and ONNX 1-D Conv) as a square conv over (C, 1, L) whose taps sit
    in its middle row, with a pad node where it needs more padding and a crop where less;
    BatchNorm1d, PReLU and activations on the way; the output keeps its (N, C, L) shape."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(4, 8, **kw), nn.BatchNorm1d(8), nn.PReLU(8), nn.Conv1d(8, 4, 3, padding=1))
    m[1].running_mean.uniform_(-0.5, 0.5)
    check_torch_and_onnx(m, torch.randn(2, 4, 13), tmp_path)


def test_conv1d_forms_without_an_equivalent_name_the_layer():
    with pytest.raises(UnsupportedError, match=r"'0': 1-D conv with kernel 4"):
        capture_torch(nn.Sequential(nn.Conv1d(3, 4, 4)), torch.zeros(1, 3, 9))
    with pytest.raises(UnsupportedError, match=r"'0': 1-D conv with kernel 3, dilation 1, stride 2 and padding \(0, 0\)"):
        capture_torch(nn.Sequential(nn.Conv1d(3, 4, 3, stride=2)), torch.zeros(1, 3, 9))
    with pytest.raises(UnsupportedError, match=r"'1': module MaxPool1d is not supported"):
        capture_torch(nn.Sequential(nn.Conv1d(3, 4, 3), nn.MaxPool1d(2)), torch.zeros(1, 3, 9))


@pytest.mark.parametrize("k,stride", [(5, 1), (7, 2)])
def test_wide_depthwise_runs_the_depthwise_kernel(k, stride):
    """A depthwise 5x5 / 7x7 is the depthwise generator's, not a block-diagonal dense conv that
    computes channels times its work."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, k, stride=stride, padding=k // 2, groups=8))
    cm = ps.compile(m, torch.zeros(1, 3, 16, 16), threads=2, strict=True)
    assert [L["kernel"] for L in cm.manifest["layers"]] == ["conv2d", "depthwise"]
