"""ImageNet-style class-per-folder trees: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*``.

Images are decoded with Pillow on access (an ImageNet tree does not fit in memory). Training
uses the standard random-resized crop + flip; evaluation resizes the short side to 256/224 of
the target and takes the centre crop, as the torchvision recipe does.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import FormatError
from .catalog import DatasetInfo
from .transforms import Normalize

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
SPLIT_DIRS = {"train": ("train",), "test": ("val", "test")}


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        raise FormatError("reading image folders needs Pillow: pip install pillow") from None
    return Image


def load_rgb(path: Path):
    """Open an image file as RGB, turning a broken file into a FormatError naming it."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise FormatError(f"cannot decode image {path}: {e}") from None


def to_uint8_chw(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def center_transform(img, size: int):
    """Resize the short side to size*256/224, then centre-crop size x size (evaluation view)."""
    Image = _pil()
    short = round(size * 256 / 224)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_resized_crop(img, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop: random area fraction and aspect ratio, resized to size x size."""
    Image = _pil()
    w, h = img.size
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(*scale))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_r)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            i = int(torch.randint(0, h - ch + 1, ()))
            j = int(torch.randint(0, w - cw + 1, ()))
            return img.resize((size, size), Image.BILINEAR, box=(j, i, j + cw, i + ch))
    return center_transform(img, size)


class ImageFolder(Dataset):
    """Class-per-folder dataset; classes are the sorted sub-folder names of the split folder."""

    def __init__(self, root: str | Path, split: str, info: DatasetInfo, augment: bool):
        root = Path(root)
        split_dir = next((root / d for d in SPLIT_DIRS[split] if (root / d).is_dir()), None)
        if split_dir is None:
            raise FormatError(f"image folder {root} has no {' or '.join(SPLIT_DIRS[split])} "
                              f"sub-folder for the {split} split (expected root/train/<class>/*.jpg "
                              "and root/val/<class>/*.jpg)")
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if not classes:
            raise FormatError(f"{split_dir} has no class sub-folders")
        self.samples: list[tuple[Path, int]] = [
            (f, label) for label, c in enumerate(classes) for f in sorted((split_dir / c).rglob("*"))
            if f.suffix.lower() in EXTENSIONS and f.is_file()]
        if not self.samples:
            raise FormatError(f"{split_dir} contains no image files ({', '.join(sorted(EXTENSIONS))})")
        self.classes = classes
        self.info = replace(info, num_classes=len(classes), classes=tuple(classes))
        self.size = info.image_size[0]
        self.augment = augment
        self.normalize = Normalize(info.mean, info.std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        img = load_rgb(path)
        if self.augment:
            img = random_resized_crop(img, self.size)
            x = to_uint8_chw(img)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        else:
            x = to_uint8_chw(center_transform(img, self.size))
        return self.normalize(x), label
