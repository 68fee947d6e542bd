"""Framed messages between the harness and an engine worker, over a pair of pipes.

A message is a JSON header plus named numpy arrays. Arrays travel as ``.npy`` bytes and are
read back with ``allow_pickle=False``, so a worker can only ever send numbers and JSON. Reads
take a deadline: a worker that hangs surfaces as ``WorkerTimeout`` instead of blocking the
whole benchmark, and one that dies surfaces as ``WorkerGone``.

Frame: 8-byte little-endian header length, the JSON header (with ``_arrays``: a list of
``[name, nbytes]``), then each array's ``.npy`` bytes in that order.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import time
from typing import Any

import numpy as np

_LEN = struct.Struct("<Q")
MAX_HEADER = 64 << 20


class WorkerGone(Exception):
    """The other end closed its pipe (the worker exited or was killed)."""


class WorkerTimeout(Exception):
    """No complete message arrived before the deadline."""


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    blobs = []
    for name, arr in (arrays or {}).items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        blobs.append((name, buf.getvalue()))
    head = json.dumps({**header, "_arrays": [[n, len(b)] for n, b in blobs]}).encode()
    return b"".join([_LEN.pack(len(head)), head, *(b for _, b in blobs)])


def send(fd: int, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
    data = memoryview(encode(header, arrays))
    try:
        while data:
            data = data[os.write(fd, data):]
    except (BrokenPipeError, OSError) as e:
        raise WorkerGone(f"pipe closed while sending: {e}") from None


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise WorkerTimeout(f"no reply within the time limit ({n - left}/{n} bytes read)")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise WorkerGone("pipe closed (the worker exited)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(fd: int, timeout: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read one message; ``timeout`` in seconds for the whole message (None: wait forever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if size > MAX_HEADER:
        raise WorkerGone(f"corrupt frame: header of {size} bytes (something else wrote to the pipe)")
    header = json.loads(_read_exact(fd, size, deadline))
    arrays = {}
    for name, nbytes in header.pop("_arrays", []):
        arrays[name] = np.load(io.BytesIO(_read_exact(fd, nbytes, deadline)), allow_pickle=False)
    return header, arrays
