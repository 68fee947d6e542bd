"""patsparse itself: ``patsparse.compile(model, example)``, the pattern-specialised native code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes


class Patsparse(Engine):
    name, label = "patsparse", "patsparse"
    modules = ("torch",)
    distribution = "patsparse"
    needs_torch_model = True

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("patsparse.compiler.api") is None:
            return False, "patsparse.compiler.api (patsparse.compile) is not in this installation"
        return super().available()

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import torch

        import patsparse

        compiled = patsparse.compile(model.torch_module(), torch.from_numpy(as_float32(example)),
                                     threads=threads)
        # What it needs at run time: the built library and the packed weights.
        size = file_bytes(compiled.lib_path) + 4 * int(compiled.manifest.get("blob_floats", 0))
        notes = "tuned" if compiled.manifest.get("tuned") else ""
        return Runner(compiled.run_numpy, size, notes, keep=compiled)


ENGINE = Patsparse()
