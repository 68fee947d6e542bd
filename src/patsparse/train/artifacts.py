"""The trained model a run leaves behind: ``model.safetensors`` (weights) + ``model.json``
(architecture spec, dataset, metrics, and the weights file's SHA-256, checked before it is
parsed), readable by the later stages (prune, compile) without the training checkpoint or any
pickle. The two files are replaced one after the other; a run killed between them has
model.json name the previous weights' hash, so the pair fails to load until ``fit`` resumes the
run, which writes both again (fit.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import (FORMAT_VERSION, check_state_dict, load_tensors, read_json, save_tensors, stored_sha256,
                          write_json)
from ..errors import FormatError

MODEL_FORMAT = "patsparse-model"
WEIGHTS, META = "model.safetensors", "model.json"


def save_model(directory: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights then description (with the weights' hash), each atomically. ``meta["model"]``
    (if present) is the ``patsparse.models.get`` keyword set that rebuilds the architecture."""
    directory = Path(directory)
    sha = save_tensors(directory / WEIGHTS, model.state_dict())
    write_json(directory / META, {"format": MODEL_FORMAT, "version": FORMAT_VERSION, **meta, "weights_sha256": sha})


def load_trained(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load the model saved in run directory ``path`` (or its model.json).

    Returns (model in eval mode, metadata). A checkpoint whose weights do not match the
    architecture named in model.json is a FormatError listing the differences.
    """
    from .. import models

    path = Path(path)
    directory = path.parent if path.suffix == ".json" else path
    meta = read_json(directory / META, "model description")
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise FormatError(f"{directory / META} is not a patsparse model description "
                          f"(format {meta.get('format') if isinstance(meta, dict) else None!r})")
    spec = meta.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise FormatError(f"{directory / META} does not name the architecture; build the "
                          "model yourself and load model.safetensors into it")
    model = models.get(**spec)
    state = load_tensors(directory / WEIGHTS, "model weights",
                         sha=stored_sha256(meta, "weights_sha256", str(directory / META)))
    check_state_dict(model, state, str(directory / WEIGHTS))
    model.load_state_dict(state)
    return model.eval(), meta
