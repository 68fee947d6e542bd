"""Download a dataset file from its official URL and verify its checksum before it is used.

Why a module of its own: every dataset that can be fetched (MNIST, Fashion-MNIST, CIFAR) needs
the same guarantees. The bytes go to a temporary file next to the destination and are renamed
into place only after the checksum matches, so an interrupted or tampered download never leaves
a file that a later run would mistake for good data.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    """One file of a dataset as published: where it lives and what its bytes hash to."""

    url: str
    md5: str | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in chunks (datasets can be hundreds of MB)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected(resource: Resource) -> tuple[str, str]:
    if resource.sha256:
        return "sha256", resource.sha256.lower()
    if resource.md5:
        return "md5", resource.md5.lower()
    raise FormatError(f"no checksum is known for {resource.url}; refusing to download unverified data")


def fetch(resource: Resource, dest_dir: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download ``resource`` into ``dest_dir`` (skipped when a verified copy is already there).

    Returns the path of the verified file. A network failure or a checksum mismatch is a
    FormatError naming the URL; the partial download is removed.
    """
    algorithm, want = _expected(resource)
    dest_dir = Path(dest_dir)
    dest = dest_dir / resource.filename
    if dest.is_file() and file_digest(dest, algorithm) == want:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{resource.filename}.", suffix=".part")
    h = hashlib.new(algorithm)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(resource.url, timeout=timeout) as r:
            for chunk in iter(lambda: r.read(CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
        got = h.hexdigest()
        if got != want:
            raise FormatError(f"download of {resource.url} is corrupt: {algorithm} {got}, "
                              f"expected {want}; nothing was kept")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise FormatError(f"could not download {resource.url}: {e}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def _safe_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Regular files and directories that stay inside ``dest`` (Pythons without tar filters)."""
    root = dest.resolve()
    out = []
    for m in tar.getmembers():
        target = (root / m.name).resolve()
        if not (m.isfile() or m.isdir()) or (target != root and root not in target.parents):
            raise FormatError(f"unsafe member {m.name!r} in archive {tar.name}; not extracting")
        out.append(m)
    return out


def extract_tar(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> None:
    """Unpack a (verified) tar archive, refusing members that would land outside ``dest_dir``."""
    dest = Path(dest_dir)
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.10.12 / 3.11.4
                tar.extractall(dest, members=_safe_members(tar, dest))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FormatError(f"cannot extract {archive}: {e}") from None
