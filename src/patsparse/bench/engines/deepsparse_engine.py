"""Neural Magic DeepSparse 1.8 (the last real release), run from its own virtual environment.

DeepSparse pins ``onnx<1.15`` and an old numpy, so it cannot share the project's environment.
``make bench-peers`` creates it at ``$PATSPARSE_CACHE/venvs/deepsparse`` (default
``~/.cache/patsparse/venvs/deepsparse``); the worker runs under that venv's Python with only
patsparse's source on its path (the worker needs numpy, not torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes, venv_dir


class DeepSparse(Engine):
    name, label = "deepsparse", "DeepSparse"
    distribution = "deepsparse"

    def python(self) -> str:
        return str(venv_dir('deepsparse') / "bin" / "python")

    def worker_path(self) -> list[str]:
        return []  # the harness adds patsparse's source root; nothing from this environment

    def available(self) -> tuple[bool, str]:
        if not Path(self.python()).exists():
            return False, f"no DeepSparse venv at {venv_dir('deepsparse')} (run `make bench-peers`)"
        if not list(venv_dir('deepsparse').glob("lib/python*/site-packages/deepsparse")):
            return False, f"deepsparse is not installed in {venv_dir('deepsparse')} (run `make bench-peers`)"
        return True, ""

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        from deepsparse import compile_model

        engine = compile_model(model.onnx, batch_size=model.batch, num_cores=threads)
        return Runner(lambda x: engine([as_float32(x)])[0], file_bytes(model.onnx), keep=engine)


ENGINE = DeepSparse()
