"""ONNX Runtime, CPU execution provider, all graph optimisations, sequential execution.

Option ``ort_spinning=False`` makes its idle threads block instead of spinning, for benchmarks
that set every engine's waits alike (the dense kernel table with passive OpenMP waits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes


class OnnxRuntime(Engine):
    name, label = "onnxruntime", "ONNX Runtime"
    modules = ("onnxruntime",)
    distribution = "onnxruntime"

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not self.options.get("ort_spinning", True):
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model.onnx, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return Runner(lambda x: sess.run(None, {name: as_float32(x)})[0], file_bytes(model.onnx))


ENGINE = OnnxRuntime()
