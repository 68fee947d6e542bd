"""OpenVINO CPU plugin, forced to f32 (it defaults to bf16 on CPUs that have it), latency hint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes


class OpenVino(Engine):
    name, label = "openvino", "OpenVINO (f32)"
    modules = ("openvino",)
    distribution = "openvino"

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(model.onnx, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        request, out = compiled.create_infer_request(), compiled.output(0)
        return Runner(lambda x: request.infer({0: as_float32(x)})[out].copy(), file_bytes(model.onnx))


ENGINE = OpenVino()
