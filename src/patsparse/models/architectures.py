"""The full networks of the seven architecture families beyond the zoo, as users have them
(torchvision's definitions where torchvision has one, the standard U-Net otherwise), each with
the input size it is measured at.

Why: the one-block nets of :mod:`.families` show that each op compiles; these show that whole
networks do (every block, every stage transition, the real channel counts), and they are what
benchmarks/ops.py times against ONNX Runtime and OpenVINO.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .efficientnet import efficientnet_b0
from .families import prepared
from .mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from .resnet import resnext50_32x4d
from .segmentation import deeplabv3_mobilenet_v3_large, unet
from .shufflenet import shufflenet_v2_x1_0
from .squeezenet import squeezenet1_1


@dataclass(frozen=True)
class Architecture:
    family: str
    make: Callable[[], nn.Module]
    size: int  # input height and width it is measured at (3 channels)


ARCHITECTURES: dict[str, Architecture] = {
    "squeezenet1_1": Architecture("SqueezeNet", squeezenet1_1, 224),
    "resnext50_32x4d": Architecture("ResNeXt", resnext50_32x4d, 224),
    "mobilenet_v3_small": Architecture("MobileNet-V3", mobilenet_v3_small, 224),
    "mobilenet_v3_large": Architecture("MobileNet-V3", mobilenet_v3_large, 224),
    "efficientnet_b0": Architecture("EfficientNet", efficientnet_b0, 224),
    "deeplabv3_mobilenet_v3_large": Architecture("DeepLab", deeplabv3_mobilenet_v3_large, 224),
    "unet": Architecture("U-Net", functools.partial(unet, base=32), 128),
    "shufflenet_v2_x1_0": Architecture("ShuffleNet-V2", shufflenet_v2_x1_0, 224),
}


def build_architecture(name: str, rate: float | None = None, seed: int = 0) -> nn.Module:
    """Architecture ``name`` in eval mode, random weights and BatchNorm statistics, pattern-projected
    at ``rate`` when given (:func:`.families.prepared`)."""
    return prepared(ARCHITECTURES[name].make, rate, seed)
