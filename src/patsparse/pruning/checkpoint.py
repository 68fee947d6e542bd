"""Where a stopped ``prune`` run goes on from: the hard-pruned model and then every retraining
epoch.

A directory holds the state right after hard pruning (``pruned.json``: the sparsity spec and the
history so far; ``pruned.safetensors``: the pruned weights and the teacher's, the model as it
was before pruning, which distillation needs and which the model in hand no longer is once
pruned in place) and the retraining loop's :class:`~patsparse.train.resume.EpochCheckpoint`
(``retrain.json`` + tensors). A re-run with the
same recipe, data size and checkpoint directory skips ADMM and the projection and continues
retraining after the last finished epoch, exactly; the ADMM phase itself restarts when it was
stopped. Files from another recipe or loader are refused, damaged ones are errors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..checkpoint import check_state_dict, load_tensors, read_json, save_tensors, stored_sha256, write_json
from ..train.resume import EpochCheckpoint, check_config
from ..train.state import rng_from_tensors, rng_to_tensors
from .recipe import PruneRecipe
from .spec import spec_from_json, spec_to_json


class PruneCheckpoint:
    """The resumable state of one ``prune`` run in ``directory`` (created on the first save)."""

    def __init__(self, directory: str | Path, recipe: PruneRecipe, model: nn.Module, library: torch.Tensor,
                 loader: Iterable, batches: int):
        """``model`` as it is before pruning: its weights' hash is part of the configuration, as
        are the library's masks and the loader's size, so the state of another model, library
        or dataset is refused rather than continued."""
        self.dir = Path(directory)
        dataset = getattr(loader, "dataset", None)
        self.config: dict[str, Any] = {
            "recipe": recipe.to_dict(), "model_sha256": state_sha256(model),
            "library": library.int().flatten(1).tolist(), "batches": batches,
            "examples": len(dataset) if hasattr(dataset, "__len__") else None}
        self.retrain = EpochCheckpoint(self.dir / "retrain.json", self.config)

    @property
    def pruned(self) -> bool:
        """Whether the run got past hard pruning (retraining can go on from here)."""
        return (self.dir / "pruned.json").exists()

    def save_pruned(self, model: nn.Module, spec: dict, teacher: nn.Module | None, history: list) -> None:
        """Right after hard pruning: the pruned weights, the spec, the teacher and the history
        so far; the pointer goes last, as it marks the stage as reached."""
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(rng_to_tensors())  # retraining goes on with the RNG where hard pruning left it
        if teacher is not None:
            tensors.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
        self.dir.mkdir(parents=True, exist_ok=True)
        sha = save_tensors(self.dir / "pruned.safetensors", tensors)
        write_json(self.dir / "pruned.json", {"config": self.config, "spec": spec_to_json(spec),
                                              "history": history, "seconds": self.retrain.elapsed(),
                                              "sha256": sha})

    def load_pruned(self, model: nn.Module, teacher: nn.Module | None) -> tuple[dict, list]:
        """Load the hard-pruned weights into ``model`` and the teacher's into ``teacher``;
        returns the spec and the history up to hard pruning."""
        where = self.dir / "pruned.json"
        state = read_json(where, "prune checkpoint")
        check_config(state, self.retrain.config, where)
        tensors = load_tensors(self.dir / "pruned.safetensors", "prune checkpoint",
                               sha=stored_sha256(state, "sha256", str(where)))
        for prefix, module in (("model.", model), ("teacher.", teacher)):
            if module is None:
                continue
            part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            check_state_dict(module, part, f"{self.dir / 'pruned.safetensors'} ({prefix[:-1]})")
            module.load_state_dict(part)
        rng_from_tensors(tensors)
        self.retrain.resume_clock(float(state.get("seconds", 0.0)))
        return spec_from_json(state["spec"], str(where)), list(state.get("history") or [])


def state_sha256(model: nn.Module) -> str:
    """A hash of every tensor of ``model``'s state (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
