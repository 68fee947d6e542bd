"""In-memory image datasets: uint8 images plus labels, transformed per sample on access.

Images stay uint8 (CIFAR-10 as float32 would take 600 MB); each sample becomes float only when
it is read.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .catalog import DatasetInfo


class TensorImageDataset(Dataset):
    """``images`` (N, C, H, W) uint8, ``labels`` (N,) int64; ``info`` describes the dataset."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 info: DatasetInfo, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.images = torch.as_tensor(np.ascontiguousarray(images))
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])
