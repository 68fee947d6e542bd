"""ONNX Runtime int8: the model quantised by ``onnxruntime.quantization.quantize_static`` (QDQ,
per-channel int8 weights, uint8 activations, calibrated on the ``int8_calibration`` images),
run like the float model (all graph optimisations, which fuse the QDQ pairs into int8 kernels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes
from .patsparse_int8_engine import calibration_images


def quantize_qdq(onnx_path: str | Path, images: np.ndarray, out: Path) -> Path:
    """``onnx_path`` quantised to QDQ int8 at ``out`` (static, per channel, MinMax calibration)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


class OnnxRuntimeInt8(Engine):
    name, label = "onnxruntime-int8", "ONNX Runtime int8"
    modules = ("onnxruntime", "onnx")
    distribution = "onnxruntime"

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import onnxruntime as ort

        workdir.mkdir(parents=True, exist_ok=True)
        qdq = quantize_qdq(model.onnx, calibration_images(self.options), workdir / "model.int8.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(qdq), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return Runner(lambda x: sess.run(None, {name: as_float32(x)})[0], file_bytes(qdq))


ENGINE = OnnxRuntimeInt8()
