"""torchvision's building blocks for the MobileNet-V3 / EfficientNet / DeepLab definitions:
conv + norm + activation with keys ``.0`` / ``.1`` (``.2``), and squeeze-and-excitation with
keys ``fc1`` / ``fc2``, so those models' state dicts keep torchvision's names."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Act = Callable[[], nn.Module]


class ConvNormActivation(nn.Sequential):
    """Conv2d (no bias, "same" padding for odd kernels at any dilation), BatchNorm2d, then the
    activation ``act`` when given (torchvision's Conv2dNormActivation)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: Act | None = nn.ReLU, dilation: int = 1, bn_eps: float = 1e-5):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 * dilation, dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate: global average, 1x1 conv, ``act``, 1x1 conv, ``gate``, times the input."""

    def __init__(self, channels: int, squeeze: int, act: Act = nn.ReLU, gate: Act = nn.Sigmoid):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.activation, self.scale_activation = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.activation(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return self.scale_activation(s) * x
