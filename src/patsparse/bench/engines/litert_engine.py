"""LiteRT (TFLite) with its default XNNPACK delegate, from a .tflite converted from PyTorch.

The LiteRT runtime (``ai-edge-litert``) only runs .tflite files. The converter from PyTorch,
``litert-torch``, brings a large stack (TensorFlow, JAX parts) that should not share the
project's environment, so it is looked for in two places: importable right here, or in its
own venv at ``$PATSPARSE_CACHE/venvs/litert`` (``make bench-litert`` creates it with the same
torch version as the project). In the second case the worker exports the model with
torch.export and runs the conversion under that venv's Python, in a subprocess with a timeout.
Without either, the engine is reported unavailable with that reason.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes, venv_dir

CONVERTERS = ("litert_torch", "ai_edge_torch")
CONVERT_TIMEOUT = 1800

# Runs under the converter venv's Python: the model comes as a torch.export archive this same
# worker wrote a moment ago, the example input as a plain .npy file.
_CONVERT = """
import sys, numpy as np, torch, litert_torch
model = torch.export.load(sys.argv[1]).module()
x = torch.from_numpy(np.load(sys.argv[2], allow_pickle=False))
litert_torch.convert(model, (x,)).export(sys.argv[3])
"""


def _local_converter() -> str | None:
    return next((c for c in CONVERTERS if importlib.util.find_spec(c)), None)


def _venv_python() -> Path | None:
    venv = venv_dir("litert")
    if (venv / "bin" / "python").exists() and list(venv.glob("lib/python*/site-packages/litert_torch")):
        return venv / "bin" / "python"
    return None


class LiteRt(Engine):
    name, label = "litert", "LiteRT (XNNPACK)"
    modules = ("ai_edge_litert",)
    distribution = "ai-edge-litert"
    needs_torch_model = True

    def available(self) -> tuple[bool, str]:
        ok, why = super().available()
        if ok and not (_local_converter() or _venv_python()):
            return False, (f"LiteRT runtime is installed but no PyTorch->TFLite converter: neither "
                           f"litert-torch here nor a venv at {venv_dir('litert')} (`make bench-litert`)")
        return ok, why

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import torch
        from ai_edge_litert.interpreter import Interpreter

        path = workdir / "model.tflite"
        x = as_float32(example)
        local = _local_converter()
        if local:
            __import__(local).convert(model.torch_module(), (torch.from_numpy(x),)).export(str(path))
        else:
            archive, xfile = workdir / "model.pt2", workdir / "example.npy"
            torch.export.save(torch.export.export(model.torch_module(), (torch.from_numpy(x),)), str(archive))
            np.save(xfile, x, allow_pickle=False)
            done = subprocess.run([str(_venv_python()), "-c", _CONVERT, str(archive), str(xfile), str(path)],
                                  capture_output=True, text=True, timeout=CONVERT_TIMEOUT)
            if done.returncode != 0 or not path.is_file():
                tail = " | ".join(done.stderr.strip().splitlines()[-3:])
                raise RuntimeError(f"litert-torch conversion failed (status {done.returncode}): {tail}")
        interp = Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

        def run(x: np.ndarray) -> np.ndarray:
            interp.set_tensor(inp, as_float32(x))
            interp.invoke()
            return interp.get_tensor(out).copy()

        return Runner(run, file_bytes(path), keep=interp)


ENGINE = LiteRt()
