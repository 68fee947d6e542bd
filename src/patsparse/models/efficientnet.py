"""EfficientNet-B0 (Tan and Le), torchvision's definition and state-dict keys
(``features.N.M.block.*``, ``classifier.1``): MBConv blocks with SiLU and squeeze-excite gates.
Stochastic depth is the identity at inference, so it is left out."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormActivation, SqueezeExcitation

# expand ratio, kernel, stride, input channels, output channels, layers
B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class MBConv(nn.Module):
    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        e = cin * expand
        layers: list[nn.Module] = []
        if e != cin:
            layers.append(ConvNormActivation(cin, e, 1, act=nn.SiLU))
        layers += [ConvNormActivation(e, e, kernel, stride, groups=e, act=nn.SiLU),
                   SqueezeExcitation(e, max(1, cin // 4), act=nn.SiLU),
                   ConvNormActivation(e, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [ConvNormActivation(3, B0[0][3], 3, 2, act=nn.SiLU)]
        for expand, k, s, cin, cout, n in B0:
            layers.append(nn.Sequential(*(MBConv(expand, k, s if i == 0 else 1, cin if i == 0 else cout, cout)
                                          for i in range(n))))
        last = 4 * B0[-1][4]
        layers.append(ConvNormActivation(B0[-1][4], last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_b0(**kw) -> EfficientNet:
    return EfficientNet(**kw)
