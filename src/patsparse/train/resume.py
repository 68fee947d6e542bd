"""Epoch checkpoints for training loops that are not a whole ``fit`` run: dense and fine-tuning
rows of the accuracy grid, masked retraining inside ``prune``.

A run of hours on a small machine gets stopped (a session ends, the machine restarts); with an
:class:`EpochCheckpoint` a re-run goes on from the last finished epoch instead of starting over.
The continuation is exact: model, optimizer, learning-rate scheduler and RNG state are stored,
and loaders from ``patsparse.data`` order each epoch by (seed, epoch). Two files: tensors
(safetensors, never pickle) and a JSON pointer written after them holding their SHA-256, so a
kill between the two leaves the previous checkpoint, and a damaged file is an error, not weights.
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
    file; the tensors sit beside it with the suffix ``.safetensors``).

    ``config`` is whatever decides the numbers the loop produces (hyper-parameters, data size):
    a stored state whose config differs is refused, because continuing it would silently mix
    two runs. ``extra`` (JSON) travels with the state, e.g. the history of the epochs done.
    """

    def __init__(self, pointer: str | Path, config: dict[str, Any]):
        self.pointer = Path(pointer)
        self.tensors = self.pointer.with_suffix(".safetensors")
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

    def exists(self) -> bool:
        return self.pointer.exists()

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> int:
        """Load the stored state into the arguments; returns the epochs already done (0: none
        stored). ``extra`` is set to what the last save passed."""
        if not self.pointer.exists():
            return 0
        state = read_json(self.pointer, "epoch checkpoint")
        if not isinstance(state, dict) or state.get("config") != self.config:
            raise FormatError(f"{self.pointer} holds a run stopped under another configuration; delete "
                              f"it to start over")
        tensors = load_tensors(self.tensors, "epoch checkpoint",
                               sha=stored_sha256(state, "sha256", str(self.pointer)))
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        check_state_dict(model, model_state, str(self.tensors))
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
        sha = save_tensors(self.tensors, tensors)
        write_json(self.pointer, {
            "config": self.config, "epochs": epochs, "seconds": self.elapsed(), "optimizer": opt_meta,
            "scheduler": json.loads(json.dumps(scheduler.state_dict())) if scheduler is not None else None,
            "extra": extra, "sha256": sha})

    def clear(self) -> None:
        """The run is done and stored elsewhere: its checkpoint goes."""
        self.pointer.unlink(missing_ok=True)
        self.tensors.unlink(missing_ok=True)
