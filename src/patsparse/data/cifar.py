"""CIFAR-10 / CIFAR-100 in the standard "python version" batch format.

The batches are pickles. Unpickling can run arbitrary code, so they are read with an Unpickler
that resolves only the handful of globals a genuine batch refers to (numpy's array
reconstruction and the codec Python uses for bytes in protocol 2); anything else is refused
with a FormatError before it is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}

# dataset name -> (folder, train files, test files, label key)
LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise FormatError(f"{self._path}: refusing to unpickle {module}.{name}; a CIFAR batch holds "
                          "only dicts, lists, strings, ints and numpy arrays")


def read_batch(path: Path) -> dict[str, Any]:
    """One batch file as a dict with str keys (Python-2 pickles store them as byte strings)."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except FormatError:
        raise
    except Exception as e:  # pickle raises many types on garbage: all mean "corrupt file"
        raise FormatError(f"{path} is not a readable CIFAR batch (corrupt or truncated): "
                          f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a dict in a CIFAR batch, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar(directory: Path, name: str, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of ``split`` from the batch folder."""
    _, train_files, test_files, label_key = LAYOUT[name]
    images, labels = [], []
    for fname in train_files if split == "train" else test_files:
        path = directory / fname
        if not path.is_file():
            raise FormatError(f"CIFAR batch {path} is missing")
        batch = read_batch(path)
        data, lab = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3 * 32 * 32:
            desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise FormatError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {desc}")
        lab = np.asarray(lab if lab is not None else [], dtype=np.int64)
        if lab.shape != (len(data),):
            raise FormatError(f"{path}: {len(data)} images but {lab.size} '{label_key}' entries")
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            raise FormatError(f"{path}: label out of range 0..{num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)
