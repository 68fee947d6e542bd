"""scikit-learn's bundled 8x8 handwritten digits: the last-resort dataset that is always there.

Upsampled (bilinear) to 28x28 uint8 so the same 1x28x28 models used for MNIST-like data run on
it; split 80/20 with a fixed permutation so train and test never overlap.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FormatError

TEST_FRACTION = 0.2


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images, upsampled once per process (importing scikit-learn alone takes seconds)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FormatError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).numpy()
    labels = np.asarray(d.target, dtype=np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _all_digits()
    order = np.random.RandomState(0).permutation(len(labels))
    n_test = int(round(len(labels) * TEST_FRACTION))
    idx = order[n_test:] if split == "train" else order[:n_test]
    return images[idx], labels[idx]
