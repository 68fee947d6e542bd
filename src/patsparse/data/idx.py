"""The IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

Format (big-endian): two zero bytes, a type byte (0x08 = uint8), the number of dimensions, one
int32 per dimension, then the data. Every structural check names the file, because a truncated
download or a renamed file is the usual cause and the user needs to know which one.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import FormatError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise FormatError(f"IDX file {path} cannot be read (corrupt or truncated gzip?): {e}") from None


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file into a numpy array, checking magic, type, rank and size."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise FormatError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    rank = data[3]
    if ndim is not None and rank != ndim:
        raise FormatError(f"{path}: expected an IDX file with {ndim} dimensions, found {rank}")
    header = 4 + 4 * rank
    if len(data) < header:
        raise FormatError(f"{path}: IDX header truncated ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise FormatError(f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the "
                          f"file holds {len(data) - header}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """The raw or .gz copy of ``stem`` in ``directory`` (raw preferred: no decompression)."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_pair(directory: Path, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 of the MNIST-style ``split``."""
    prefix = "train" if split == "train" else "t10k"
    img_path = find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
    lab_path = find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lab_path is None:
        raise FormatError(f"{directory} lacks {prefix}-images-idx3-ubyte[.gz] or "
                          f"{prefix}-labels-idx1-ubyte[.gz]")
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise FormatError(f"{img_path} / {lab_path}: expected uint8 IDX data, found "
                          f"{images.dtype} / {labels.dtype}")
    if len(images) != len(labels):
        raise FormatError(f"{img_path} holds {len(images)} images but {lab_path} holds "
                          f"{len(labels)} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise FormatError(f"{lab_path}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    return images[:, None], labels.astype(np.int64)
