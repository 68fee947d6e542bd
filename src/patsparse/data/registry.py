"""Find a dataset on disk (or fetch it) and build it: the one entry point ``get_dataset``.

Lookup order, first hit wins: the ``root`` the caller gave, the directories in the
``PATSPARSE_DATA`` environment variable, Debian's ``/usr/share/datasets`` (where
``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST), the user cache
``~/.cache/patsparse/data``; then, only when ``download=True``, the official URL with a checksum
check. When nothing is found the error lists every place looked in and how to get the data.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import FormatError, InputError
from .catalog import DEBIAN_PACKAGES, FOLDERS, INFO, RESOURCES, canonical
from .cifar import LAYOUT as CIFAR_LAYOUT
from .cifar import load_cifar
from .datasets import TensorImageDataset
from .digits import load_digits_split
from .download import extract_tar, fetch
from .idx import find_idx_file, load_idx_pair
from .imagefolder import ImageFolder
from .transforms import Compose, Normalize, RandomCropFlip

DEBIAN_ROOT = Path("/usr/share/datasets")
SPLITS = ("train", "test")

# Training augmentation per dataset family: (crop padding, horizontal flip).
_AUGMENT = {"fashion-mnist": (2, False), "mnist": (2, False), "digits": (2, False),
            "cifar10": (4, True), "cifar100": (4, True)}


def cache_dir() -> Path:
    """Where downloads go when no root is given (honours XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "patsparse" / "data"


def search_roots(root: str | os.PathLike | None) -> list[Path]:
    roots = [Path(root).expanduser()] if root else []
    roots += [Path(p).expanduser() for p in os.environ.get("PATSPARSE_DATA", "").split(os.pathsep) if p]
    return roots + [DEBIAN_ROOT, cache_dir()]


def _holds(name: str, directory: Path, split: str) -> bool:
    if name in CIFAR_LAYOUT:
        _, train, test, _ = CIFAR_LAYOUT[name]
        return (directory / (train if split == "train" else test)[0]).is_file()
    prefix = "train" if split == "train" else "t10k"
    return (find_idx_file(directory, f"{prefix}-images-idx3-ubyte") is not None
            and find_idx_file(directory, f"{prefix}-labels-idx1-ubyte") is not None)


def _candidates(name: str, root) -> list[Path]:
    return [d for r in search_roots(root) for d in (r, *(r / f for f in FOLDERS[name]))]


def locate(name: str, split: str, root=None) -> Path | None:
    """The first directory in lookup order that holds ``split`` of ``name``, or None."""
    return next((d for d in _candidates(name, root) if _holds(name, d, split)), None)


def download_dataset(name: str, root=None) -> Path:
    """Fetch ``name`` from its official URLs into ``root`` (or the cache), verifying checksums."""
    dest = Path(root).expanduser() if root else cache_dir()
    resources = RESOURCES[name]
    if name in CIFAR_LAYOUT:
        archive = fetch(resources[0], dest)
        extract_tar(archive, dest)
        archive.unlink()
        return dest / CIFAR_LAYOUT[name][0]
    target = dest / FOLDERS[name][0]
    for r in resources:
        fetch(r, target)
    return target


def _missing(name: str, split: str, root) -> FormatError:
    looked = "\n  ".join(str(d) for d in _candidates(name, root))
    how = []
    if name in DEBIAN_PACKAGES:
        how.append(f"`apt-get install {DEBIAN_PACKAGES[name]}` (Debian; installs into {DEBIAN_ROOT / name})")
    how.append(f"`--download` / download=True (fetches {RESOURCES[name][0].url.rsplit('/', 1)[0]}/... "
               f"into {Path(root) if root else cache_dir()}, checksum-verified)")
    how.append("put the files in a directory and pass it as root (--data-root) or in PATSPARSE_DATA")
    return FormatError(f"dataset {name} ({split} split) not found. Looked in:\n  {looked}\n"
                       "Get it with one of:\n  " + "\n  ".join(how))


def get_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                download: bool = False, augment: bool | None = None) -> Dataset:
    """Dataset ``name`` ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder",
    "digits"), yielding (normalised float image, int label); ``augment`` defaults to
    ``split == "train"``. The returned dataset has an ``info`` attribute (DatasetInfo)."""
    key = canonical(name)
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    augment = (split == "train") if augment is None else augment
    ds_info = INFO[key]
    if key == "imagefolder":
        if not root:
            raise InputError("dataset imagefolder needs root= (a folder with train/<class>/ and val/<class>/)")
        return ImageFolder(root, split, ds_info, augment)
    if key == "digits":
        images, labels = load_digits_split(split)
    else:
        directory = locate(key, split, root)
        if directory is None and download:
            directory = download_dataset(key, root)
            if not _holds(key, directory, split):
                raise FormatError(f"downloaded {key} into {directory} but the {split} files are not there")
        if directory is None:
            raise _missing(key, split, root)
        if key in CIFAR_LAYOUT:
            images, labels = load_cifar(directory, key, split, ds_info.num_classes)
        else:
            images, labels = load_idx_pair(directory, split, ds_info.num_classes)
    pad, flip = _AUGMENT[key]
    transform = Compose(RandomCropFlip(pad, flip) if augment else None, Normalize(ds_info.mean, ds_info.std))
    return TensorImageDataset(images, labels, ds_info, transform)
