"""Argument helpers shared by the sub-commands: shapes, model directories, the quick-trial
subset, and a broken stdout.

Why one module: every command that names a saved model or an input shape must read it the same
way and fail with the same clear message, before any slow step (data loading, training) starts.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError

SUBSET_ENV = "PATSPARSE_SUBSET"


def shape_arg(text: str) -> tuple[int, ...]:
    """``--input-shape C,H,W`` as three positive ints (an argparse ``type``)."""
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 3,32,32), got {text!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes C,H,W, got {text!r}")
    return dims


def input_shape(model: Any, given: tuple[int, ...] | None, src: str) -> tuple[int, ...]:
    """``--input-shape`` if given, else the (C, H, W) the saved model ``src`` records."""
    shape = given or getattr(model, "patsparse_input_shape", None)
    if shape is None:
        raise InputError(f"{src}: the saved model does not record its input shape; "
                         "pass it as --input-shape C,H,W (e.g. 3,32,32)")
    return tuple(shape)


def looks_like_path(text: str) -> bool:
    """True when ``text`` names a file-system path rather than a zoo model: it exists, or it has
    a directory separator, or it starts with ``.`` or ``~``."""
    seps = [s for s in (os.sep, os.altsep) if s]
    return Path(text).expanduser().exists() or any(s in text for s in seps) or text.startswith((".", "~"))


def model_dir(text: str, option: str) -> Path:
    """The saved-model directory ``text`` names, or an InputError saying what is wrong with it."""
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"{option} {text}: directory {path} does not exist (expected a `patsparse train` "
                         "run directory or a saved patsparse model)")
    if not path.is_dir():
        raise InputError(f"{option} {text}: {path} is a file, not a saved model directory")
    return path


def quick_subset() -> int | None:
    """``PATSPARSE_SUBSET=N``: the commands that load a dataset use at most N training and N test
    images (and batches of at most N // 8), so the whole command-line flow can be tried in a
    minute (the accuracy then means little). Unset: None."""
    text = os.environ.get(SUBSET_ENV, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"environment variable {SUBSET_ENV} must be a positive integer, got {text!r}")
    return n


def quick_batch_size(batch_size: int) -> int:
    """``batch_size``, capped at N // 8 (at least 1) under ``PATSPARSE_SUBSET=N``: a quick trial
    on a handful of images still takes several optimiser steps per epoch, which ADMM's penalty
    schedule needs (a single step per iteration cannot pull the weights to their patterns)."""
    n = quick_subset()
    return batch_size if n is None else max(1, min(batch_size, n // 8))


def stdout_closed() -> bool:
    """True when the reader of stdout has gone (``patsparse run --profile | head``): a pipe
    whose read end is closed polls as an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False
