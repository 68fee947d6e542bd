"""MobileNet-V3 small and large (Howard et al.), torchvision's definition and state-dict keys
(``features.N.block.*``, ``classifier.0/3``). ``dilated=True`` is the segmentation backbone of
torchvision's DeepLab-v3: the last stage keeps output stride 16 with dilation 2 instead."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import ConvNormActivation, SqueezeExcitation
from ..errors import InputError
from .common import make_divisible

BN_EPS = 1e-3  # torchvision's MobileNet-V3 BatchNorm


@dataclass(frozen=True)
class Bneck:
    """One inverted residual: input, kernel, expanded and output channels, squeeze-excite,
    Hardswish (else ReLU), stride, dilation."""
    cin: int
    kernel: int
    expanded: int
    cout: int
    se: bool
    hardswish: bool
    stride: int
    dilation: int = 1


def _config(arch: str, dilated: bool) -> tuple[list[Bneck], int]:
    d = 2 if dilated else 1
    if arch == "large":
        rows = [(16, 3, 16, 16, 0, 0, 1), (16, 3, 64, 24, 0, 0, 2), (24, 3, 72, 24, 0, 0, 1),
                (24, 5, 72, 40, 1, 0, 2), (40, 5, 120, 40, 1, 0, 1), (40, 5, 120, 40, 1, 0, 1),
                (40, 3, 240, 80, 0, 1, 2), (80, 3, 200, 80, 0, 1, 1), (80, 3, 184, 80, 0, 1, 1),
                (80, 3, 184, 80, 0, 1, 1), (80, 3, 480, 112, 1, 1, 1), (112, 3, 672, 112, 1, 1, 1),
                (112, 5, 672, 160, 1, 1, 2, d), (160, 5, 960, 160, 1, 1, 1, d), (160, 5, 960, 160, 1, 1, 1, d)]
        last = 1280
    elif arch == "small":
        rows = [(16, 3, 16, 16, 1, 0, 2), (16, 3, 72, 24, 0, 0, 2), (24, 3, 88, 24, 0, 0, 1),
                (24, 5, 96, 40, 1, 1, 2), (40, 5, 240, 40, 1, 1, 1), (40, 5, 240, 40, 1, 1, 1),
                (40, 5, 120, 48, 1, 1, 1), (48, 5, 144, 48, 1, 1, 1), (48, 5, 288, 96, 1, 1, 2, d),
                (96, 5, 576, 96, 1, 1, 1, d), (96, 5, 576, 96, 1, 1, 1, d)]
        last = 1024
    else:
        raise InputError(f"MobileNet-V3 arch must be 'large' or 'small', got {arch!r}")
    return [Bneck(*(int(v) for v in r[:4]), bool(r[4]), bool(r[5]), *r[6:]) for r in rows], last


class InvertedResidual(nn.Module):
    def __init__(self, c: Bneck):
        super().__init__()
        act = nn.Hardswish if c.hardswish else nn.ReLU
        stride = 1 if c.dilation > 1 else c.stride
        self.use_res_connect = c.stride == 1 and c.cin == c.cout
        layers: list[nn.Module] = []
        if c.expanded != c.cin:
            layers.append(ConvNormActivation(c.cin, c.expanded, 1, act=act, bn_eps=BN_EPS))
        layers.append(ConvNormActivation(c.expanded, c.expanded, c.kernel, stride, groups=c.expanded, act=act,
                                         dilation=c.dilation, bn_eps=BN_EPS))
        if c.se:
            layers.append(SqueezeExcitation(c.expanded, make_divisible(c.expanded // 4, 8), gate=nn.Hardsigmoid))
        layers.append(ConvNormActivation(c.expanded, c.cout, 1, act=None, bn_eps=BN_EPS))
        self.block = nn.Sequential(*layers)
        self._is_cn = c.stride > 1  # torchvision marks the blocks that start a stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3(nn.Module):
    def __init__(self, arch: str = "large", num_classes: int = 1000, dilated: bool = False, dropout: float = 0.2):
        super().__init__()
        config, last = _config(arch, dilated)
        layers: list[nn.Module] = [ConvNormActivation(3, config[0].cin, 3, 2, act=nn.Hardswish, bn_eps=BN_EPS)]
        layers += [InvertedResidual(c) for c in config]
        lastconv = 6 * config[-1].cout
        layers.append(ConvNormActivation(config[-1].cout, lastconv, 1, act=nn.Hardswish, bn_eps=BN_EPS))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(lastconv, last), nn.Hardswish(), nn.Dropout(dropout),
                                        nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_large(**kw) -> MobileNetV3:
    return MobileNetV3("large", **kw)


def mobilenet_v3_small(**kw) -> MobileNetV3:
    return MobileNetV3("small", **kw)
