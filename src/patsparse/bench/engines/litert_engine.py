"""LiteRT (TFLite) with its default XNNPACK delegate, from a .tflite converted from PyTorch.

The LiteRT runtime (``ai-edge-litert``) only runs .tflite files; the converter from PyTorch is
``litert-torch`` (formerly ``ai-edge-torch``), which pulls in a large stack (JAX, TensorFlow
parts). The engine is available only when that converter imports in the benchmark's own
environment; otherwise it is reported unavailable with that reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes

CONVERTERS = ("litert_torch", "ai_edge_torch")


class LiteRt(Engine):
    name, label = "litert", "LiteRT (XNNPACK)"
    modules = ("ai_edge_litert",)
    distribution = "ai-edge-litert"
    needs_torch_model = True

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if ok and not any(importlib.util.find_spec(c) for c in CONVERTERS):
            return False, ("LiteRT runtime is installed but no PyTorch->TFLite converter is: "
                           "pip install litert-torch (large: JAX/TensorFlow stack), ideally in its own env")
        return ok, why

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import torch
        from ai_edge_litert.interpreter import Interpreter

        name = next(c for c in CONVERTERS if importlib.util.find_spec(c))
        converter = __import__(name)
        path = workdir / "model.tflite"
        converter.convert(model.torch_module(), (torch.from_numpy(as_float32(example)),)).export(str(path))
        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

        def run(x: np.ndarray) -> np.ndarray:
            interp.set_tensor(inp, as_float32(x))
            interp.invoke()
            return interp.get_tensor(out).copy()

        return Runner(run, file_bytes(path), keep=interp)


ENGINE = LiteRt()
