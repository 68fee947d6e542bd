"""PyTorch eager: the model as users run it today, and the reference every engine is checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32


def torch_runner(module, threads: int, notes: str = "", model_bytes: int = 0) -> Runner:
    """Wrap a torch callable as a Runner (shared by the eager and torch.compile engines)."""
    import torch

    torch.set_num_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(as_float32(x))).numpy()

    return Runner(run, model_bytes, notes)


class TorchEager(Engine):
    name, label = "torch", "PyTorch eager"
    modules = ("torch",)
    distribution = "torch"
    needs_torch_model = True

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        return torch_runner(model.torch_module(), threads, model_bytes=model.weight_bytes)


ENGINE = TorchEager()
