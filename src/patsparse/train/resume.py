"""Epoch checkpoints for training loops that are not a whole ``fit`` run: dense and fine-tuning
rows of the accuracy grid, masked retraining inside ``prune``.

A run of hours on a small machine gets stopped (a session ends, the machine restarts); with an
:class:`EpochCheckpoint` a re-run goes on from the last finished epoch instead of starting over.
The continuation is exact: model, optimizer, learning-rate scheduler and RNG state are stored,
and loaders from ``patsparse.data`` order each epoch by (seed, epoch) (with ``workers=0``: worker
processes draw their seeds from the loader's own generator, which is not stored). Each epoch's
tensors go to a file of their own (safetensors, never pickle), then the JSON pointer naming
it and holding its SHA-256 is replaced, then the older file goes: a kill at any point leaves a
usable checkpoint, and a damaged file is an error, not weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import check_state_dict, load_tensors, read_json, save_tensors, stored_sha256, write_json
from ..errors import FormatError
from .state import optimizer_from_flat, optimizer_to_flat, rng_from_tensors, rng_to_tensors


class EpochCheckpoint:
    """The state of one training loop after its last finished epoch, at ``pointer`` (a JSON
    file; the tensors sit beside it, ``<stem>.e<epochs>.safetensors``).

    ``config`` is whatever decides the numbers the loop produces (hyper-parameters, data size):
    a stored state whose config differs is refused, because continuing it would silently mix
    two runs. ``extra`` (JSON) travels with the state, e.g. the history of the epochs done.
    """

    def __init__(self, pointer: str | Path, config: dict[str, Any]):
        self.pointer = Path(pointer)
        self.config = json.loads(json.dumps(config))  # compared with what JSON gives back
        self.earlier = 0.0  # seconds the stopped runs spent
        self.extra: Any = None
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training so far, over every run of this loop."""
        return self.earlier + time.perf_counter() - self._t0

    def resume_clock(self, earlier: float) -> None:
        """Count ``earlier`` seconds (spent by stopped runs) plus the time from now."""
        self.earlier, self._t0 = earlier, time.perf_counter()

    @property
    def tensors(self) -> Path | None:
        """The tensor file the pointer names (None: nothing stored)."""
        if not self.pointer.exists():
            return None
        state = read_json(self.pointer, "epoch checkpoint")
        return self.pointer.parent / str(state.get("tensors")) if isinstance(state, dict) else None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> int:
        """Load the stored state into the arguments; returns the epochs already done (0: none
        stored). ``extra`` is set to what the last save passed."""
        if not self.pointer.exists():
            return 0
        state = read_json(self.pointer, "epoch checkpoint")
        check_config(state, self.config, self.pointer)
        missing = [k for k in ("tensors", "epochs", "seconds", "optimizer", "scheduler") if k not in state]
        if missing:
            raise FormatError(f"{self.pointer} lacks {', '.join(missing)}: not a complete epoch checkpoint")
        if scheduler is not None and not isinstance(state["scheduler"], dict):
            raise FormatError(f"{self.pointer} holds no learning-rate schedule state, and this loop has one")
        path = self.pointer.parent / str(state["tensors"])
        tensors = load_tensors(path, "epoch checkpoint", sha=stored_sha256(state, "sha256", str(self.pointer)))
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        check_state_dict(model, model_state, str(path))
        model.load_state_dict(model_state)
        optimizer_from_flat(optimizer, tensors, state["optimizer"], str(self.pointer))
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        rng_from_tensors(tensors)
        self.extra = state.get("extra")
        self.resume_clock(float(state["seconds"]))
        return int(state["epochs"])

    def save(self, epochs: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, extra: Any = None) -> None:
        """Store the state after ``epochs`` finished epochs: tensors first, then the pointer."""
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **opt_tensors, **rng_to_tensors()}
        self.pointer.parent.mkdir(parents=True, exist_ok=True)
        name = f"{self.pointer.stem}.e{epochs}.safetensors"
        sha = save_tensors(self.pointer.parent / name, tensors)
        write_json(self.pointer, {
            "config": self.config, "epochs": epochs, "seconds": self.elapsed(), "optimizer": opt_meta,
            "scheduler": json.loads(json.dumps(scheduler.state_dict())) if scheduler is not None else None,
            "extra": extra, "tensors": name, "sha256": sha})
        for old in self._files():
            if old.name != name:
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        """The run is done and stored elsewhere: its checkpoint goes."""
        self.pointer.unlink(missing_ok=True)
        for old in self._files():
            old.unlink(missing_ok=True)

    def _files(self) -> list[Path]:
        return list(self.pointer.parent.glob(f"{self.pointer.stem}.e*.safetensors"))


def check_config(state: Any, config: dict[str, Any], where: Path) -> None:
    """Refuse a stored state whose ``config`` differs from ``config``, naming what differs."""
    saved = state.get("config") if isinstance(state, dict) else None
    if saved == config:
        return
    if not isinstance(saved, dict):
        raise FormatError(f"{where} is not a checkpoint of this kind (no configuration stored)")
    a, b = flatten(saved), flatten(config)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    detail = "; ".join(f"{k}: stored {_short(a.get(k))}, now {_short(b.get(k))}" for k in keys[:6])
    raise FormatError(f"{where} holds a run stopped under another configuration ({detail}); delete it "
                      f"to start over")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys, so a difference can be named by its path."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
