"""Optimizer and RNG state as safetensors tensors + JSON scalars: no pickle anywhere.

``torch.optim.Optimizer.state_dict()`` mixes tensors (momentum buffers, Adam moments and step
counters) with Python scalars and the param-group hyper-parameters. The tensors are flattened to
``optim.<param index>.<name>`` entries for safetensors; everything else must be plain JSON.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..errors import FormatError

PREFIX = "optim."


def _json_safe(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise FormatError(f"{what} holds a value that cannot be stored as JSON: {e}") from None


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors for safetensors, JSON-able dict) describing ``optimizer`` completely."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{PREFIX}{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars,
            "type": type(optimizer).__name__}
    return tensors, _json_safe(meta, "optimizer state")


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict, source: str) -> None:
    """Inverse of :func:`optimizer_to_flat`; a mismatch is a FormatError naming ``source``."""
    if meta.get("type") != type(optimizer).__name__:
        raise FormatError(f"{source}: optimizer state is for {meta.get('type')}, "
                          f"but this run uses {type(optimizer).__name__}")
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith(PREFIX):
            pid, key = name[len(PREFIX):].split(".", 1)
            state.setdefault(int(pid), {})[key] = t
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    groups = meta["param_groups"]
    for g in groups:  # JSON turned tuples into lists; optimizers expect e.g. betas as a tuple
        for k, v in g.items():
            if k != "params" and isinstance(v, list):
                g[k] = tuple(v)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise FormatError(f"{source}: optimizer state does not fit this model: {e}") from None


def rng_to_tensors() -> dict[str, torch.Tensor]:
    """Generator states of torch (CPU, and CUDA when present) as uint8 tensors."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def rng_from_tensors(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
