"""The model under benchmark, and the files every engine's worker loads it from.

A benchmark starts from one of: a PyTorch module (Python API), a zoo name with a compression
rate, a saved patsparse model, or an ONNX file. ``materialise`` writes the ONNX exports the
peer engines convert from (legacy exporter, opset 17: the one every peer reads, DeepSparse
included); the PyTorch model itself goes to workers as pickled bytes over their pipe (see
``ModelFiles``), or through torch.export when its classes live in a script's ``__main__``.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InputError

ZOO_INPUT = {"cifar": (3, 32, 32), "imagenet": (3, 224, 224)}
ZOO_CLASSES = {"cifar": 10, "imagenet": 1000}


class BenchModel:
    """A model plus the per-image input shape (C, H, W) it is benchmarked at."""

    def __init__(self, name: str, input_shape: tuple[int, ...], module: Any = None,
                 onnx_path: str | Path | None = None, rate: float | None = None):
        if (module is None) == (onnx_path is None):
            raise InputError("give exactly one of a PyTorch module or an ONNX file")
        if len(input_shape) < 1 or not all(isinstance(d, int) and d > 0 for d in input_shape):
            raise InputError(f"input shape (without batch) must be positive integers, got {input_shape}")
        self.name, self.input_shape, self.rate = name, tuple(input_shape), rate
        self.module = module.eval() if module is not None else None
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        self._pickled: bytes | None = None

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def from_module(cls, module, input_shape: tuple[int, ...], name: str | None = None,
                    rate: float | None = None) -> "BenchModel":
        return cls(name or type(module).__name__, input_shape, module=module, rate=rate)

    @classmethod
    def from_zoo(cls, name: str, rate: float | None = None, variant: str = "cifar",
                 width: float = 1.0, num_classes: int | None = None, library: str = "phase2",
                 seed: int = 0) -> "BenchModel":
        """A zoo network with random weights, pattern-projected at ``rate`` (None: dense).

        Latency does not depend on the weight values, only on which weights are zero, so a
        one-shot projection of random weights times exactly what a trained model would.
        """
        import torch

        from .. import models

        if variant not in ZOO_INPUT:
            raise InputError(f"variant must be one of {sorted(ZOO_INPUT)}, got {variant!r}")
        torch.manual_seed(seed)
        module = models.get(name, num_classes=num_classes or ZOO_CLASSES[variant], in_channels=3,
                            width=width, variant=variant)
        if rate is not None:
            from ..pruning.projection import project_model

            project_model(module, rate=rate, library=library)
        label = f"{name}-{variant}" + (f" {rate:g}x" if rate else " dense")
        return cls(label, ZOO_INPUT[variant], module=module, rate=rate or 1.0)

    @classmethod
    def from_saved(cls, path: str | Path, input_shape: tuple[int, ...] | None = None) -> "BenchModel":
        """A model written by ``patsparse.save``; the input shape from the caller, the saved model, or
        its zoo arch, in that order."""
        from .. import load

        module = load(path)
        if getattr(module, "is_compiled_patsparse", False):
            raise InputError(f"{path} is a compiled model; benchmark the pruned model it came from "
                             "(engines need the PyTorch model or an ONNX file)")
        arch = getattr(module, "patsparse_arch", None) or {}
        shape = input_shape or getattr(module, "patsparse_input_shape", None)
        if shape is None and arch.get("variant") in ZOO_INPUT:
            shape = (arch.get("in_channels", 3), *ZOO_INPUT[arch["variant"]][1:])
        if not shape:
            raise InputError(f"{path}: the saved model does not record its input size; "
                             "pass it as C,H,W, e.g. --input-shape 3,32,32")
        spec = getattr(module, "patsparse_spec", None)
        rate = spec.get("rate") if isinstance(spec, dict) else None
        return cls(Path(path).name, tuple(int(d) for d in shape), module=module,
                   rate=float(rate) if isinstance(rate, (int, float)) else None)

    @classmethod
    def from_onnx(cls, path: str | Path) -> "BenchModel":
        import onnx

        path = Path(path)
        if not path.is_file():
            raise FormatError(f"ONNX file not found: {path}")
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as e:
            raise FormatError(f"{path} is not a readable ONNX model: {e}") from None
        inputs = _graph_inputs(graph)
        if len(inputs) != 1:
            raise InputError(f"{path}: benchmarks take models with one input, this one has "
                             f"{[i.name for i in inputs]}")
        dims = inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
        if not shape or None in shape:
            raise InputError(f"{path}: input {inputs[0].name!r} needs fixed sizes except the batch, "
                             f"got {[d.dim_param or d.dim_value for d in dims]}")
        return cls(path.stem, tuple(shape), onnx_path=path)

    @classmethod
    def from_spec(cls, spec: str, rate: float | None = None, variant: str = "cifar",
                  width: float = 1.0, input_shape: tuple[int, ...] | None = None) -> "BenchModel":
        """What the command line accepts: an .onnx file, a saved model, or a zoo name."""
        p = Path(spec)
        if p.suffix.lower() == ".onnx":
            return cls.from_onnx(p)
        if p.exists():
            return cls.from_saved(p, input_shape)
        if rate is not None and rate < 1:
            raise InputError(f"--rate must be >= 1 (a compression rate), got {rate}")
        return cls.from_zoo(spec, rate=rate, variant=variant, width=width)

    # ---- what the harness needs -----------------------------------------------------------
    def example(self, batch: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((batch, *self.input_shape)).astype(np.float32)

    def module_bytes(self) -> bytes | None:
        """The module pickled for a worker's pipe; None without a module or for ``__main__`` classes."""
        if self.module is None or _defined_in_main(self.module):
            return None
        if self._pickled is None:
            self._pickled = pickle.dumps(self.module, protocol=pickle.HIGHEST_PROTOCOL)
        return self._pickled

    def materialise(self, workdir: Path, x: np.ndarray) -> dict[str, Any]:
        """Write the ONNX files (batch B and batch 1) and, if needed, a torch.export archive."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        batch = x.shape[0]
        onnx_b, onnx_1 = workdir / f"model_b{batch}.onnx", workdir / "model_b1.onnx"
        files: dict[str, Any] = {"onnx": str(onnx_b), "onnx_b1": str(onnx_1), "batch": batch,
                                 "weight_bytes": 0, "export": None}
        if self.module is None:
            _onnx_with_batch(self.onnx_path, onnx_b, batch)
            if batch != 1:
                _onnx_with_batch(self.onnx_path, onnx_1, 1)
            files["weight_bytes"] = self.onnx_path.stat().st_size
            return files
        import torch

        files["weight_bytes"] = sum(t.numel() * t.element_size() for t in self.module.state_dict().values())
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path, xb in ((onnx_b, x), (onnx_1, x[:1]))[: 1 if batch == 1 else 2]:
                torch.onnx.export(self.module, (torch.from_numpy(xb),), str(path), dynamo=False,
                                  opset_version=17, input_names=["input"], output_names=["output"])
            if self.module_bytes() is None:
                ep = torch.export.export(self.module, (torch.from_numpy(x),))
                files["export"] = str(workdir / "model.pt2")
                torch.export.save(ep, files["export"])
        return files

    def reference(self, x: np.ndarray, files: dict[str, Any]) -> tuple[np.ndarray, str]:
        """The output every engine is checked against, and what computed it."""
        if self.module is not None:
            import torch

            with torch.no_grad():
                return self.module(torch.from_numpy(x)).float().numpy().astype(np.float64), "PyTorch eager"
        import onnxruntime as ort

        sess = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        return np.asarray(y, dtype=np.float64), "ONNX Runtime (the model was given as ONNX)"

    def macs(self, x: np.ndarray) -> tuple[int, int] | None:
        """(dense, nonzero-weight) multiply-accumulates per image of conv and linear layers.

        The second number is the FLOP-count ideal: the work left if every zero weight cost
        nothing. None for an ONNX model.
        """
        if self.module is None:
            return None
        import torch

        dense, sparse = [0], [0]

        def hook(mod, _inp, out):
            w = mod.weight
            if isinstance(mod, torch.nn.Conv2d):
                positions = out[0, 0].numel()  # output pixels per channel
                dense[0] += positions * w.numel()
                sparse[0] += positions * int(torch.count_nonzero(w))
            else:
                dense[0] += w.numel()
                sparse[0] += int(torch.count_nonzero(w))

        handles = [m.register_forward_hook(hook) for m in self.module.modules()
                   if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        try:
            with torch.no_grad():
                self.module(torch.from_numpy(x[:1]))
        finally:
            for h in handles:
                h.remove()
        return dense[0], sparse[0]


def _defined_in_main(module) -> bool:
    return any(type(m).__module__ == "__main__" for m in module.modules())


def _graph_inputs(graph):
    initializers = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def _onnx_with_batch(src: Path, dst: Path, batch: int) -> None:
    """Copy an ONNX model with its batch dimension fixed (engines prefer static shapes)."""
    import onnx

    model = onnx.load(str(src))
    inp = _graph_inputs(model.graph)[0]
    dim = inp.type.tensor_type.shape.dim[0]
    if dim.HasField("dim_value") and dim.dim_value not in (0, batch):
        raise InputError(f"{src}: input {inp.name!r} has a fixed batch of {dim.dim_value}; "
                         f"run with --batch {dim.dim_value} or export it with a dynamic batch")
    dim.Clear()
    dim.dim_value = batch
    for out in model.graph.output:
        d = out.type.tensor_type.shape.dim
        if d and not d[0].HasField("dim_value"):
            d[0].Clear()
            d[0].dim_value = batch
    buf = io.BytesIO()
    onnx.save(model, buf)
    dst.write_bytes(buf.getvalue())
