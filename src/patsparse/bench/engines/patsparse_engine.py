"""patsparse itself: ``patsparse.compile(model, example)``, the pattern-specialised native code."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes


class Patsparse(Engine):
    name, label = "patsparse", "patsparse"
    modules = ("torch",)
    distribution = "patsparse"
    needs_torch_model = True

    def worker_env(self, options: dict) -> dict[str, str]:
        """``options["patsparse_waits"] = "passive"``: OpenMP threads sleep at once instead of
        spinning. Default waits are faster on a quiet machine; on a machine where other processes
        keep a core busy, spinning barriers wait whole scheduler slices for a descheduled partner,
        and the tail latency grows by an order of magnitude."""
        waits = options.get("patsparse_waits", "default")
        if waits not in ("default", "passive"):
            raise ValueError(f"patsparse_waits must be 'default' or 'passive', got {waits!r}")
        return {"OMP_WAIT_POLICY": "PASSIVE"} if waits == "passive" else {}

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("patsparse.compiler.api") is None:
            return False, "patsparse.compiler.api (patsparse.compile) is not in this installation"
        return super().available()

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import torch

        import patsparse

        # strict: what is timed is generated code (a model with ops that would fall back to
        # PyTorch is reported as failed, naming them)
        compiled = patsparse.compile(model.torch_module(), torch.from_numpy(as_float32(example)),
                                     threads=threads, strict=True)
        # What it needs at run time: the built library and the packed weights.
        size = file_bytes(compiled.lib_path) + 4 * int(compiled.manifest.get("blob_floats", 0))
        passive = os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive"
        notes = ", ".join(n for n in ("tuned" if compiled.manifest.get("tuned") else "",
                                      "passive waits" if passive else "") if n)
        return Runner(compiled.run_numpy, size, notes, keep=compiled)


ENGINE = Patsparse()
