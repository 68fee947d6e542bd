"""torch.compile with the inductor backend (generates C++/OpenMP for CPU; needs a C++ compiler)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .base import Engine, Runner
from .torch_eager import torch_runner


class TorchCompile(Engine):
    name, label = "torch-compile", "torch.compile (inductor)"
    modules = ("torch",)
    distribution = "torch"
    needs_torch_model = True

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if ok and not (shutil.which("c++") or shutil.which("g++")):
            return False, "inductor needs a C++ compiler (g++) on PATH"
        return ok, why

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import torch

        compiled = torch.compile(model.torch_module(), backend="inductor", dynamic=False)
        runner = torch_runner(compiled, threads, model_bytes=model.weight_bytes)
        runner(example)  # compile now, so compilation never lands in a timed call
        return runner


ENGINE = TorchCompile()
