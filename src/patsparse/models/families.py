"""Small networks of seven architecture families outside the zoo, one characteristic block each
(SqueezeNet, ResNeXt, MobileNet-V3, EfficientNet, DeepLab, U-Net, ShuffleNet-V2).

Why: they use the ops the zoo does not (ceil-mode pooling, grouped and dilated 3x3 convs,
Hardswish / SiLU / squeeze-excite gates, bilinear resize, transposed convs, channel split and
shuffle), so the op tests and benchmarks/ops.py exercise the compiler on the shapes users have.
Every net maps (N, 3, H, W) to (N, 10) logits, or to (N, 10, H, W) per-pixel scores for the
segmentation families (DeepLab, U-Net). Module-level classes, so a benchmark's worker process
can unpickle them.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _head(c: int, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


class Fire(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


class SqueezeNetFire(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.fire1, self.fire2 = Fire(64, 16, 64), Fire(128, 32, 128)
        self.head = _head(256)

    def forward(self, x):
        return self.head(self.fire2(self.fire1(self.pool(F.relu(self.stem(x))))))


class ResNeXtBlock(nn.Module):
    """A ResNeXt bottleneck: 1x1, grouped 3x3 (32 groups), 1x1, projected shortcut."""

    def __init__(self, c: int = 128, groups: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(64, c, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.BatchNorm2d(c), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c))
        self.short = nn.Conv2d(64, 2 * c, 1)
        self.head = _head(2 * c)

    def forward(self, x):
        x = self.stem(x)
        return self.head(F.relu(self.expand(self.grouped(self.reduce(x))) + self.short(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int, gate: type[nn.Module]):
        super().__init__()
        self.reduce, self.expand, self.gate = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """MobileNet-V3 / EfficientNet MBConv: expand 1x1, depthwise k x k, squeeze-excite, project."""

    def __init__(self, c: int, expand: int, k: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        e = c * expand
        self.body = nn.Sequential(nn.Conv2d(c, e, 1), nn.BatchNorm2d(e), act(),
                                  nn.Conv2d(e, e, k, padding=k // 2, groups=e), nn.BatchNorm2d(e), act(),
                                  SqueezeExcite(e, max(8, e // 4), gate), nn.Conv2d(e, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class InvertedResidualNet(nn.Module):
    """A stride-2 stem and one inverted residual: MobileNet-V3's (5x5, Hardswish, Hardsigmoid
    gate) or EfficientNet's MBConv (3x3, SiLU, Sigmoid gate)."""

    def __init__(self, c: int, k: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), act())
        self.block = InvertedResidual(c, 4, k, act, gate)
        self.head = _head(c)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class DeepLabHead(nn.Module):
    """ASPP: a 1x1, dilated 3x3 convs (rates 6 and 12) and image pooling, concatenated, then
    per-pixel scores resized bilinearly to the input."""

    def __init__(self, c: int = 64, classes: int = 10):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.ReLU())
        self.b0 = nn.Conv2d(c, 32, 1)
        self.b1, self.b2 = (nn.Conv2d(c, 32, 3, padding=r, dilation=r) for r in (6, 12))
        self.pool = nn.Conv2d(c, 32, 1)
        self.fuse = nn.Conv2d(128, classes, 1)

    def forward(self, x):
        y = self.backbone(x)
        pooled = F.interpolate(self.pool(F.adaptive_avg_pool2d(y, 1)), size=y.shape[2:], mode="bilinear")
        y = torch.cat([F.relu(self.b0(y)), F.relu(self.b1(y)), F.relu(self.b2(y)), pooled], 1)
        return F.interpolate(self.fuse(y), scale_factor=2, mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    """Two encoder levels, a transposed-conv upsampling and the skip concat of a U-Net."""

    def __init__(self, c: int = 32, classes: int = 10):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, classes, 1))

    def forward(self, x):
        e1 = self.enc1(x)
        return self.dec(torch.cat([self.up(self.enc2(e1)), e1], 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet-V2's channel shuffle, written as torchvision writes it."""
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


class ShuffleUnit(nn.Module):
    """A stride-1 ShuffleNet-V2 unit: split, 1x1 -> depthwise 3x3 -> 1x1 on one half, concat,
    shuffle."""

    def __init__(self, c: int):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
                                    nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h),
                                    nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        a, b = x.chunk(2, 1)
        return self.shuffle(torch.cat([a, self.branch(b)], 1))


class ShuffleNetV2Unit(nn.Module):
    def __init__(self, c: int = 48):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(c), ShuffleUnit(c))
        self.head = _head(c)

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "squeezenet": SqueezeNetFire, "resnext": ResNeXtBlock,
    "mobilenet_v3": functools.partial(InvertedResidualNet, 24, 5, nn.Hardswish, nn.Hardsigmoid),
    "efficientnet": functools.partial(InvertedResidualNet, 32, 3, nn.SiLU, nn.Sigmoid),
    "deeplab": DeepLabHead, "unet": UNetDecoder, "shufflenet_v2": ShuffleNetV2Unit,
}


def prepared(make: Callable[[], nn.Module], rate: float | None = None, seed: int = 0) -> nn.Module:
    """``make()`` in eval mode with seeded random weights and BatchNorm statistics (so a folded
    BatchNorm is not the identity), pattern-projected at ``rate`` when given (``project_model``
    defaults)."""
    from ..pruning.projection import project_model

    torch.manual_seed(seed)
    m = make().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    if rate is not None:
        project_model(m, rate)
    return m


def build(name: str, rate: float | None = None, seed: int = 0) -> nn.Module:
    """Family ``name``'s one-block net, ``prepared``."""
    return prepared(FAMILIES[name], rate, seed)
