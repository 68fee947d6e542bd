"""Safe, atomic on-disk storage: tensors in safetensors, metadata in JSON.

Why one module: the training loop, the pruner and the compiler all persist state, and all need
the same guarantees. Nothing is ever unpickled (safetensors holds raw tensors only), and every
write goes to a temporary file in the same directory followed by ``os.replace``, so an
interrupted write never leaves a half-written file where a good one was.

A saved model is several files that must agree, so a directory is replaced as a whole
(:func:`replace_dir`): the new one is written beside it under a hidden name, then swapped in
with two renames. A kill at any instant leaves the complete old directory or the complete new
one; :func:`saved_dir` finds the old one again after a kill between the two renames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from .errors import FormatError, InputError

FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    The temporary file beside it is named after the writing process, so the leftovers of a
    writer that was killed can be told from a live one's (:func:`remove_dead_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the integrity hash every saved file is checked against."""
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _old_name(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def saved_dir(path: str | os.PathLike) -> Path:
    """Where the directory saved at ``path`` is: ``path`` itself, or, after a kill between the
    two renames of :func:`replace_dir`, the previous version, which is moved back when the
    parent is writable and read in place when it is not."""
    path = Path(path)
    old = _old_name(path)
    if path.exists() or not old.is_dir():
        return path
    try:
        os.rename(old, path)
    except OSError:
        return old
    fsync_dir(path.parent)
    return path


def _dead(pid: str) -> bool:
    """Whether ``pid`` (a writer's process id, from a temporary name) no longer runs."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def remove_dead_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporary files in ``directory`` of :func:`atomic_write_bytes` calls whose process
    was killed mid-write (a live writer's are kept): a run killed many times must not fill the disk."""
    for tmp in Path(directory).glob(".*.tmp"):
        pid = tmp.name[:-len(".tmp")].rpartition("-")[0].rpartition(".")[2]
        if _dead(pid):
            tmp.unlink(missing_ok=True)


def _remove_dead_writers(path: Path) -> None:
    """Delete the half-written directories of saves to ``path`` whose process no longer exists
    (killed mid-write); a save still running in another process keeps its own."""
    for tmp in path.parent.glob(f".{path.name}.new-*"):
        if _dead(tmp.name[len(f".{path.name}.new-"):].partition("-")[0]):
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(path: str | os.PathLike, write: Callable[[Path], None], owned: Iterable[str],
                keep: Iterable[str] = ()) -> Path:
    """Write a directory with ``write(tmp_dir)`` and swap it in at ``path`` atomically.

    ``owned``: the names this kind of directory consists of; ``keep``: names it may also hold
    that a save carries over (hard-linked into the new directory, so a kill never loses them).
    An existing ``path`` holding anything else is an InputError: a save never deletes a user's
    other files. Every file written must be complete (fsynced) when ``write`` returns.
    """
    path = Path(path)
    saved_dir(path)  # undo a half-finished swap first
    keep = set(keep)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"save: {path} exists and is not a directory")
        foreign = sorted(p.name for p in path.iterdir() if p.name not in set(owned) | keep)
        if foreign:
            raise InputError(f"save: {path} holds files patsparse did not write ({', '.join(foreign[:3])}); "
                             "save to a new or empty directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new-{os.getpid()}-"))
    try:
        for name in sorted(keep):
            src = path / name
            if src.is_dir():
                shutil.copytree(src, tmp / name, copy_function=os.link, symlinks=True)
            elif src.exists():
                os.link(src, tmp / name)
        write(tmp)
        fsync_dir(tmp)
        old = _old_name(path)
        if old.exists():
            shutil.rmtree(old)  # left by an earlier save killed after its swap
        if path.exists():
            os.rename(path, old)
            os.rename(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "metadata") -> Any:
    """Read JSON, turning a missing or malformed file into a FormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{what} file {path} is not valid JSON: {e}") from None


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> str:
    """Atomically save a flat name->tensor mapping as safetensors (contiguous CPU copies).

    Returns the SHA-256 of the file written (header and data): what its metadata stores, so
    that :func:`load_tensors` refuses the file after a flipped bit or a partial copy.
    """
    data = save_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                      metadata=dict(metadata) if metadata else None)
    atomic_write_bytes(path, data)
    return sha256(data)


def stored_sha256(meta: Any, key: str, where: str) -> str | None:
    """The hash ``meta[key]`` holds for a tensor file, None when absent (files written before
    hashes were stored); anything but a hex SHA-256 is a FormatError naming ``where``."""
    sha = meta.get(key) if isinstance(meta, dict) else None
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise FormatError(f"{where}: {key} must be a hex SHA-256 string, got {sha!r}")
    return sha


def load_tensors(path: str | os.PathLike, what: str = "checkpoint",
                 sha: str | None = None) -> dict[str, torch.Tensor]:
    """Load safetensors; a missing, truncated or non-safetensors file is a FormatError.

    ``sha``: the file's expected SHA-256 (header and data); the file is then read once into
    memory, hashed, and parsed only if it matches, so a flipped bit is an error, not a weight.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{what} file not found: {path}")
    try:
        if sha is None:
            return load_file(str(path))
        data = path.read_bytes()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FormatError(f"{what} file {path} is corrupt or not a safetensors file: {e}") from None
    if sha256(data) != sha:
        raise FormatError(f"{what} file {path} does not match the hash stored with it (corrupt or edited)")
    try:
        return load_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise FormatError(f"{what} file {path} is corrupt or not a safetensors file: {e}") from None


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Compare keys and shapes before loading, so a checkpoint of another architecture fails
    with a message listing what differs instead of PyTorch's wall of text."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:3]})")
        raise FormatError(f"{source} does not match the model architecture: " + "; ".join(parts))
