"""OpenVINO int8: the same QDQ model ONNX Runtime int8 runs (onnxruntime_int8_engine), which
OpenVINO's CPU plugin executes with int8 kernels (its low-precision transformations turn the
quantize / dequantize pairs into int8 convolutions); latency hint, one stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes
from .onnxruntime_int8_engine import quantize_qdq
from .patsparse_int8_engine import calibration_images


class OpenVinoInt8(Engine):
    name, label = "openvino-int8", "OpenVINO int8"
    modules = ("openvino", "onnxruntime", "onnx")
    distribution = "openvino"

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import openvino as ov

        workdir.mkdir(parents=True, exist_ok=True)
        qdq = quantize_qdq(model.onnx, calibration_images(self.options), workdir / "model.int8.onnx")
        compiled = ov.Core().compile_model(str(qdq), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        request, out = compiled.create_infer_request(), compiled.output(0)
        return Runner(lambda x: request.infer({0: as_float32(x)})[out].copy(), file_bytes(qdq))


ENGINE = OpenVinoInt8()
