"""VGG-16 with batch norm (Simonyan & Zisserman), the network of the paper's main tables.

ImageNet form: torchvision's ``vgg16_bn`` layer for layer (keys ``features.N`` and
``classifier.0/3/6``). CIFAR form: the usual CIFAR VGG: the fifth max-pool is dropped (a 28x28
input would shrink to nothing), global average pooling and a single linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import check_args, init_weights, scaled

CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 variant: str = "imagenet"):
        super().__init__()
        check_args("vgg", num_classes, in_channels, width, variant)
        if variant == "cifar":
            cfg = cfg[:-1]  # keep four pools: 32 -> 2, 28 -> 1
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = scaled(v, width)
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                c = out
        self.features = nn.Sequential(*layers)
        if variant == "imagenet":
            hidden = scaled(4096, width)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(c * 7 * 7, hidden), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(hidden, num_classes))
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16_bn(**kw) -> VGG:
    return VGG(CFG16, **kw)
