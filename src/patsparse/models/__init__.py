"""Model zoo: VGG-16-BN, ResNet-18/50, MobileNet-V2 (ImageNet and CIFAR forms) and small nets.

    from patsparse import models
    net = models.get("resnet18", num_classes=10, in_channels=1, width=0.25, variant="cifar")

ImageNet forms use torchvision's state-dict keys, so torchvision checkpoints load with
``load_state_dict``. Only ops the patsparse compiler supports are used (Conv2d, BatchNorm2d,
ReLU/ReLU6, Max/Avg/AdaptiveAvg pooling, flatten, Linear, Dropout, residual add).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import InputError
from .common import VARIANTS, make_divisible
from .mobilenet import mobilenet_v2
from .resnet import resnet8, resnet18, resnet50
from .small import convnet
from .vgg import vgg16_bn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vgg16_bn": vgg16_bn,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "resnet8": resnet8,
    "convnet": convnet,
}
_ALIASES = {"vgg16": "vgg16_bn", "vgg16-bn": "vgg16_bn", "mobilenetv2": "mobilenet_v2",
            "mobilenet-v2": "mobilenet_v2"}


def names() -> list[str]:
    """Canonical model names accepted by :func:`get` (aliases: vgg16, mobilenetv2)."""
    return list(_BUILDERS)


def canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _BUILDERS:
        raise InputError(f"unknown model {name!r}; known: {', '.join(_BUILDERS)} "
                         f"(aliases: {', '.join(_ALIASES)})")
    return key


def get(name: str, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
        variant: str = "imagenet") -> nn.Module:
    """Build model ``name`` with freshly initialised weights.

    ``variant="imagenet"`` is the 224x224 form with torchvision keys; ``"cifar"`` has a 3x3
    stride-1 stem for 32x32 / 28x28 inputs. ``width`` multiplies every channel count (rounded to
    a multiple of 8, at least 8) so the big nets train on a laptop-class CPU.
    The arguments are kept as ``model.patsparse_arch``, so ``patsparse.save`` records them and
    ``patsparse.load`` rebuilds the model without being handed an instance.
    """
    model = _BUILDERS[canonical(name)](num_classes=num_classes, in_channels=in_channels,
                                       width=width, variant=variant)
    model.patsparse_arch = {"name": canonical(name), "num_classes": num_classes,
                            "in_channels": in_channels, "width": width, "variant": variant}
    return model


__all__ = ["get", "names", "canonical", "VARIANTS", "make_divisible"]
