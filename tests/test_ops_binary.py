"""add / sub / mul / div of two tensors with broadcasting (squeeze-excite gates) and the views
between a vector and (C, 1, 1), from a traced module and an ONNX file, against PyTorch; and
the MobileNet-V3 block and EfficientNet MBConv that these and the activation family make
compile."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ops_check import check_torch_and_onnx

from patsparse.compiler.capture import capture_torch
from patsparse.errors import UnsupportedError


class Broadcasts(nn.Module):
    """Every op with broadcasts both ways: (C,H,W) with (C,1,1), (1,H,W) and (1,1,1)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.gate = nn.Conv2d(6, 6, 1)
        self.row = nn.Conv2d(6, 1, 1)

    def forward(self, x):
        x = self.c(x)
        g = torch.sigmoid(self.gate(F.adaptive_avg_pool2d(x, 1)))  # (C, 1, 1)
        r = torch.tanh(self.row(x))                                  # (1, H, W)
        s = F.adaptive_avg_pool2d(r, 1)                              # (1, 1, 1)
        y = x * g + r                  # mul (C,H,W)*(C,1,1), add (C,H,W)+(1,H,W)
        y = g * y - s                  # mul (C,1,1)*(C,H,W), sub (C,H,W)-(1,1,1)
        y = y / (torch.sigmoid(g) + torch.sigmoid(x))              # div by a full tensor
        return r - y                   # sub (1,H,W)-(C,H,W)


@pytest.mark.parametrize("size", [(7, 9), (16, 35)])
def test_broadcasting_binary_ops(size, tmp_path):
    torch.manual_seed(0)
    check_torch_and_onnx(Broadcasts(), torch.randn(2, 3, *size), tmp_path)


class LinearGate(nn.Module):
    """A squeeze-excite gate from Linear layers and view / unsqueeze to (N, C, 1, 1)."""

    def __init__(self):
        super().__init__()
        self.c, self.fc1, self.fc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), nn.Linear(4, 8)

    def forward(self, x):
        x = self.c(x)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))))
        return x * g.view(-1, 8, 1, 1) + x * g.unsqueeze(-1).unsqueeze(-1)


def test_linear_gate_views(tmp_path):
    torch.manual_seed(0)
    check_torch_and_onnx(LinearGate(), torch.randn(2, 3, 10, 13), tmp_path, onnx=False)


def test_bad_broadcasts_and_constants_name_the_node():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.a(x) * self.b(x)

    with pytest.raises(UnsupportedError, match=r"'mul'.*\(4, 6, 6\) and \(4, 8, 8\)"):
        capture_torch(Bad(), torch.zeros(1, 3, 8, 8))

    class Const(nn.Module):  # a constant with a spatial extent is no per-channel affine map
        def __init__(self):
            super().__init__()
            self.register_buffer("c", torch.ones(3, 8, 8))

        def forward(self, x):
            return x * self.c

    with pytest.raises(UnsupportedError, match=r"mul.*constant of shape \(3, 8, 8\)"):
        capture_torch(Const(), torch.zeros(1, 3, 8, 8))


def _conv_bn(cin, cout, k=1, stride=1, groups=1):
    bn = nn.BatchNorm2d(cout)
    g = torch.Generator().manual_seed(cout * 7 + k)
    bn.running_mean.copy_(torch.rand(cout, generator=g) - 0.5)
    bn.running_var.copy_(torch.rand(cout, generator=g) + 0.5)
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), bn]


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze, act, gate):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, squeeze, 1), act, nn.Conv2d(squeeze, c, 1), gate

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class MobileNetV3Block(nn.Module):
    """torchvision's InvertedResidual of MobileNet-V3: expand 1x1 + Hardswish, depthwise 3x3 +
    Hardswish, squeeze-excite with a Hardsigmoid gate, project 1x1, residual."""

    def __init__(self, c=16, expand=64, se=16):
        super().__init__()
        self.block = nn.Sequential(*_conv_bn(c, expand), nn.Hardswish(),
                                   *_conv_bn(expand, expand, 3, groups=expand), nn.Hardswish(),
                                   SqueezeExcite(expand, se, nn.ReLU(), nn.Hardsigmoid()),
                                   *_conv_bn(expand, c))

    def forward(self, x):
        return x + self.block(x)


class MBConv(nn.Module):
    """EfficientNet's MBConv: expand 1x1 + SiLU, depthwise 3x3 (stride 1) + SiLU, squeeze-excite
    with SiLU and a Sigmoid gate, project 1x1, residual."""

    def __init__(self, c=16, expand=96, se=4):
        super().__init__()
        self.block = nn.Sequential(*_conv_bn(c, expand), nn.SiLU(), *_conv_bn(expand, expand, 3, groups=expand),
                                   nn.SiLU(), SqueezeExcite(expand, se, nn.SiLU(), nn.Sigmoid()),
                                   *_conv_bn(expand, c))

    def forward(self, x):
        return x + self.block(x)


@pytest.mark.parametrize("family,size", [(MobileNetV3Block, 14), (MBConv, 14), (MBConv, 56)])
def test_families_mobilenet_v3_block_and_mbconv(family, size, tmp_path):
    torch.manual_seed(0)
    stem = nn.Sequential(*_conv_bn(3, 16, 3), nn.Hardswish())
    check_torch_and_onnx(nn.Sequential(*stem, family(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)),
           torch.randn(2, 3, size, size), tmp_path)
