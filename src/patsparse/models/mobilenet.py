"""MobileNet-V2 (Sandler et al.), torchvision's definition and state-dict keys
(``features.0.0``, ``features.N.conv.*``, ``classifier.1``) so its ImageNet weights load strictly.

CIFAR form: the stem has stride 1 (four stride-2 stages remain: 32 -> 2, 28 -> 2).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import check_args, init_weights, make_divisible

# expansion t, output channels c, repeats n, first stride s
SETTINGS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
            [6, 160, 3, 2], [6, 320, 1, 1]]


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation with ReLU6 (keys .0 conv, .1 bn)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(cin, hidden, kernel=1))
        layers += [conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 variant: str = "imagenet", dropout: float = 0.2):
        super().__init__()
        check_args("mobilenet_v2", num_classes, in_channels, width, variant)
        c = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [conv_bn_relu6(in_channels, c, stride=2 if variant == "imagenet" else 1)]
        for t, ch, n, s in SETTINGS:
            out = make_divisible(ch * width)
            for i in range(n):
                features.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        features.append(conv_bn_relu6(c, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(**kw) -> MobileNetV2:
    return MobileNetV2(**kw)
