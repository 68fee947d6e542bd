"""Helpers shared by every architecture: channel scaling and torchvision's initialisation."""

from __future__ import annotations

from torch import nn

from ..errors import InputError

VARIANTS = ("imagenet", "cifar")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (never below it, never more than 10%
    under ``v``): torchvision's rule, so width=1.0 reproduces the published shapes exactly."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, as a multiple of 8 (min 8)."""
    return channels if width == 1.0 else make_divisible(channels * width)


def check_args(name: str, num_classes: int, in_channels: int, width: float, variant: str) -> None:
    if num_classes < 1:
        raise InputError(f"model {name}: num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise InputError(f"model {name}: in_channels must be >= 1, got {in_channels}")
    if not width > 0:
        raise InputError(f"model {name}: width must be > 0, got {width}")
    if variant not in VARIANTS:
        raise InputError(f"model {name}: variant must be one of {VARIANTS}, got {variant!r}")


def init_weights(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Kaiming-normal (fan_out) convs, unit/zero BatchNorm, small-normal linears (torchvision's
    defaults, which these architectures were tuned with). ``linear_std=None`` keeps PyTorch's
    default Linear init (torchvision's ResNet does)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
