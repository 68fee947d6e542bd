"""ncnn: ONNX converted by pnnx with fp16 storage off, run with every fp16/bf16 option off.

ncnn takes one image (C, H, W) per extractor, so a batch runs image by image. ``ncnn.Mat``
wraps the numpy array without copying: the array is kept alive until the output is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes


class Ncnn(Engine):
    name, label = "ncnn", "ncnn (fp32)"
    modules = ("ncnn", "pnnx")
    distribution = "ncnn"

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import ncnn
        import pnnx
        import torch

        param, weights = workdir / "model.ncnn.param", workdir / "model.ncnn.bin"
        pnnx.convert(model.onnx_b1, inputs=[torch.from_numpy(as_float32(example[:1]))], fp16=False,
                     ncnnparam=str(param), ncnnbin=str(weights),
                     pnnxparam=str(workdir / "model.pnnx.param"), pnnxbin=str(workdir / "model.pnnx.bin"),
                     pnnxpy=str(workdir / "model_pnnx.py"), pnnxonnx=str(workdir / "model.pnnx.onnx"),
                     ncnnpy=str(workdir / "model_ncnn.py"))
        net = ncnn.Net()
        net.opt.num_threads = threads
        for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(net.opt, opt, False)
        if net.load_param(str(param)) or net.load_model(str(weights)):
            raise RuntimeError(f"ncnn could not load {param} / {weights}")
        (inp,), (outp,) = net.input_names(), net.output_names()

        def run(x: np.ndarray) -> np.ndarray:
            x = as_float32(x)
            outs = []
            for image in x:
                image = np.ascontiguousarray(image)
                ex = net.create_extractor()
                ex.input(inp, ncnn.Mat(image))
                rc, mat = ex.extract(outp)
                if rc:
                    raise RuntimeError(f"ncnn extract({outp!r}) returned {rc}")
                outs.append(np.array(mat))  # copies while ``image`` is still alive
            return np.stack(outs)

        return Runner(run, file_bytes(param, weights), keep=net)


ENGINE = Ncnn()
