"""Per-sample augmentation and normalisation written with torch ops (torchvision is unusable
beside torch 2.13 here).

Randomness comes from torch's global generator, which the training loop reseeds at the start
of every epoch (and DataLoader workers derive their seeds from it), so an augmented epoch is
reproducible and a resumed run sees the same crops and flips as an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class Normalize:
    """uint8 (C, H, W) -> float32 in [0, 1] -> (x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return x.sub_(self.mean).div_(self.std)


class RandomCropFlip:
    """Zero-pad by ``pad`` pixels, take a random crop of the original size, optionally flip
    horizontally with probability 1/2: the standard CIFAR / MNIST training augmentation."""

    def __init__(self, pad: int, flip: bool):
        self.pad = pad
        self.flip = flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            h, w = x.shape[-2:]
            padded = F.pad(x, (self.pad,) * 4)
            i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = padded[..., i:i + h, j:j + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


class Compose:
    def __init__(self, *steps):
        self.steps = [s for s in steps if s is not None]

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x
