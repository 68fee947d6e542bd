"""ResNet-18/50 (He et al.; v1.5: the stride sits on the 3x3 conv of a bottleneck), ResNeXt-50
32x4d (Xie et al.: the bottleneck's 3x3 conv grouped, torchvision's ``groups`` /
``width_per_group``) and the small ResNet-8 used for fast tests and demos.

ImageNet form: torchvision's keys (``conv1``, ``bn1``, ``layerK.I.convJ``, ``downsample.0/1``,
``fc``). CIFAR form: a 3x3 stride-1 stem and no max-pool, for 32x32 or 28x28 inputs.
The residual sum is written ``out + identity`` (not in place) so graph capture sees a plain add.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .common import check_args, init_weights, scaled


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64):
        super().__init__()
        out = planes * self.expansion
        inner = int(planes * width_per_group / 64) * groups
        self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 1000,
                 in_channels: int = 3, width: float = 1.0, variant: str = "imagenet", groups: int = 1,
                 width_per_group: int = 64):
        super().__init__()
        check_args("resnet", num_classes, in_channels, width, variant)
        widths = [scaled(w, width) for w in widths]
        c = widths[0]
        if variant == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, c, 3, stride=1, padding=1, bias=False)
            self.maxpool = None
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        for i, (planes, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                grouping = {"groups": groups, "width_per_group": width_per_group} if block is Bottleneck else {}
                blocks.append(block(c, planes, stride if j == 0 else 1, **grouping))
                c = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)
        init_weights(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(**kw) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


def resnet50(**kw) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


def resnext50_32x4d(**kw) -> ResNet:
    """torchvision's ResNeXt-50 32x4d: ResNet-50 whose bottleneck 3x3 convs have 32 groups of 4
    channels (times ``width``), twice as wide inside."""
    return ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4, **kw)


def resnet8(**kw) -> ResNet:
    """Three stages of one basic block (16/32/64 channels): the classic small CIFAR ResNet."""
    return ResNet(BasicBlock, (1, 1, 1), widths=(16, 32, 64), **kw)
