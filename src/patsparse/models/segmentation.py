"""Two segmentation networks: torchvision's DeepLab-v3 with a MobileNet-V3-Large backbone
(``deeplabv3_mobilenet_v3_large``: dilated backbone, ASPP head with rates 12/24/36 and image
pooling, bilinear resize to the input; its keys ``backbone.N``, ``classifier.N``) and the
standard U-Net (Ronneberger et al.; the common PyTorch layout: double 3x3 conv + BatchNorm +
ReLU per level, max-pool down, transposed-conv up, skip concat).

Both return the per-pixel scores as one tensor (torchvision's DeepLab returns ``{"out": ...}``;
its auxiliary head is off by default and left out). The U-Net takes inputs whose sides are
multiples of 16, so the skip tensors line up without the cropping pad of the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvNormActivation
from .mobilenet_v3 import MobileNetV3


class ASPPPooling(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 conv, dilated 3x3 convs and image pooling side by
    side, concatenated and projected."""

    def __init__(self, cin: int, rates: tuple[int, ...] = (12, 24, 36), cout: int = 256):
        super().__init__()
        self.convs = nn.ModuleList([ConvNormActivation(cin, cout, 1),
                                    *(ConvNormActivation(cin, cout, 3, dilation=r) for r in rates),
                                    ASPPPooling(cin, cout)])
        self.project = nn.Sequential(nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], 1))


class DeepLabV3(nn.Module):
    def __init__(self, num_classes: int = 21):
        super().__init__()
        self.backbone = MobileNetV3("large", dilated=True).features
        self.classifier = nn.Sequential(ASPP(960), nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                        nn.ReLU(), nn.Conv2d(256, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(self.classifier(self.backbone(x)), size=size, mode="bilinear", align_corners=False)


def deeplabv3_mobilenet_v3_large(**kw) -> DeepLabV3:
    return DeepLabV3(**kw)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = double_conv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], 1))


class UNet(nn.Module):
    """Four levels down and up from ``base`` channels (64 in the paper)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 64):
        super().__init__()
        w = [base * 2 ** i for i in range(5)]
        self.inc = double_conv(in_channels, w[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), double_conv(w[i], w[i + 1])) for i in range(4))
        self.ups = nn.ModuleList(Up(w[i + 1], w[i]) for i in reversed(range(4)))
        self.outc = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def unet(**kw) -> UNet:
    return UNet(**kw)
