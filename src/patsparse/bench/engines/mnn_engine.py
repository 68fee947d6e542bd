"""MNN: ONNX converted with MNN's converter library, run by the Module API at high precision.

The converter is called as ``_tools.mnnconvert`` directly: importing ``MNN.tools`` (or running
the ``mnnconvert`` CLI) pip-installs a logging package and sends telemetry on first use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes


class Mnn(Engine):
    name, label = "mnn", "MNN"
    modules = ("MNN", "_tools")
    distribution = "MNN"

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import _tools  # MNN's converter, without MNN.tools' telemetry
        import MNN.expr as F
        import MNN.nn as nn

        out = workdir / "model.mnn"
        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", model.onnx, "--MNNModel",
                           str(out), "--bizCode", "patsparse"])
        if not out.is_file():
            raise RuntimeError(f"MNN converter wrote no model from {model.onnx} (see its output above)")
        rt = nn.create_runtime_manager(({"backend": "CPU", "precision": "high", "numThread": threads},))
        module = nn.load_module_from_file(str(out), ["input"], ["output"], runtime_manager=rt)

        def run(x: np.ndarray) -> np.ndarray:
            x = as_float32(x)
            y = module.forward(F.const(x, list(x.shape), F.NCHW))
            return np.array(F.convert(y, F.NCHW).read())

        return Runner(run, file_bytes(out))


ENGINE = Mnn()
