"""The trained model a run leaves behind: ``model.safetensors`` (weights) + ``model.json``
(architecture spec, dataset, metrics), readable by the later stages (prune, compile) without
the training checkpoint or any pickle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import FORMAT_VERSION, check_state_dict, load_tensors, read_json, save_tensors, write_json
from ..errors import FormatError

MODEL_FORMAT = "patsparse-model"


def save_model(directory: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights then description, each atomically. ``meta["model"]`` (if present) is the
    ``patsparse.models.get`` keyword set that rebuilds the architecture."""
    directory = Path(directory)
    save_tensors(directory / "model.safetensors", model.state_dict())
    write_json(directory / "model.json", {"format": MODEL_FORMAT, "version": FORMAT_VERSION, **meta})


def load_trained(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load the model saved in run directory ``path`` (or its model.json).

    Returns (model in eval mode, metadata). A checkpoint whose weights do not match the
    architecture named in model.json is a FormatError listing the differences.
    """
    from .. import models

    path = Path(path)
    directory = path.parent if path.suffix == ".json" else path
    meta = read_json(directory / "model.json", "model description")
    if meta.get("format") != MODEL_FORMAT:
        raise FormatError(f"{directory / 'model.json'} is not a patsparse model description "
                          f"(format {meta.get('format')!r})")
    spec = meta.get("model")
    if not isinstance(spec, dict) or "name" not in spec:
        raise FormatError(f"{directory / 'model.json'} does not name the architecture; build the "
                          "model yourself and load model.safetensors into it")
    model = models.get(**spec)
    state = load_tensors(directory / "model.safetensors", "model weights")
    check_state_dict(model, state, str(directory / "model.safetensors"))
    model.load_state_dict(state)
    return model.eval(), meta
