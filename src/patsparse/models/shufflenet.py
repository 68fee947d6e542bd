"""ShuffleNet-V2 (Ma et al.), torchvision's definition and state-dict keys (``conv1``,
``stageN.M.branch1/2``, ``conv5``, ``fc``): channel split, depthwise 3x3 branches, concat and the
reshape-transpose channel shuffle."""

from __future__ import annotations

import torch
from torch import nn

from .families import channel_shuffle

WIDTHS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024), 1.5: (24, 176, 352, 704, 1024),
          2.0: (24, 244, 488, 976, 2048)}


def _dw(c: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


def _pw(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        self.branch1 = nn.Sequential(*_dw(cin, stride), *_pw(cin, half)) if stride > 1 else nn.Sequential()
        self.branch2 = nn.Sequential(*_pw(cin if stride > 1 else half, half), *_dw(half, stride), *_pw(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        c = WIDTHS[width]
        self.conv1 = nn.Sequential(nn.Conv2d(3, c[0], 3, 2, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = c[0]
        for i, (repeats, cout) in enumerate(zip((4, 8, 4), c[1:4])):
            setattr(self, f"stage{i + 2}", nn.Sequential(InvertedResidual(cin, cout, 2),
                                                         *(InvertedResidual(cout, cout, 1) for _ in range(repeats - 1))))
            cin = cout
        self.conv5 = nn.Sequential(*_pw(cin, c[4]))
        self.fc = nn.Linear(c[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean([2, 3]))


def shufflenet_v2_x1_0(**kw) -> ShuffleNetV2:
    return ShuffleNetV2(1.0, **kw)
