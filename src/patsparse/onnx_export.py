"""``patsparse.to_onnx``: a pruned network as a standard ONNX model, for any other runtime.

The export is plain ONNX (opset 17, TorchScript-based exporter): pruned weights stay in place as
zeros, so ONNX Runtime, OpenVINO and every other ONNX consumer run it unchanged and give
PyTorch's numbers. Batch-norm layers are folded into the convolutions by the exporter, which
scales each output channel and so keeps every zero a zero. The batch dimension is left dynamic.

What a consumer needs beyond the graph goes into the model's ``metadata_props`` (string keys,
JSON values):

- ``patsparse.sparsity``: the library, requested rate, measured rates and per-layer kernels
  kept (a summary of the sparsity spec; the full spec stays in the saved patsparse model);
- ``patsparse.input_shape``: one image's [C, H, W];
- ``patsparse.normalization``: per-channel ``mean`` and ``std`` with the formula the training
  data went through, when the model carries them (``patsparse train`` and ``prune`` record
  them) or the caller gives them.

ONNX's ``sparse_initializer`` would shrink the file, but OpenVINO does not read it (ONNX Runtime
does), so it is not offered: zeros compress well with any general-purpose compressor instead.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import __version__
from .checkpoint import atomic_write_bytes
from .errors import InputError, UnsupportedError

OPSET = 17
NORMALIZATION_FORMULA = "x = (pixel / 255 - mean[c]) / std[c] for 8-bit pixels, layout NCHW"


def to_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, *,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Path:
    """Write ``model`` (pruned or not) as an ONNX file at ``path`` and return the path.

    ``example_input``: an (N, C, H, W) float tensor of the size the model takes (any N: the batch
    dimension of the file is dynamic). ``mean``/``std``: the input normalisation per channel, to
    record in the metadata; by default the model's ``patsparse_normalization`` (set by
    ``patsparse.load`` for models that ``patsparse train`` or ``prune`` wrote), if any.
    """
    import onnx

    if getattr(model, "is_compiled_patsparse", False):
        raise InputError("to_onnx: this is a compiled model; export the pruned PyTorch model it was "
                         "compiled from (patsparse.load of the pruned model directory)")
    if not isinstance(model, nn.Module):
        raise InputError(f"to_onnx: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4 \
            or not example_input.is_floating_point():
        raise InputError("to_onnx: example_input must be an (N, C, H, W) float tensor, got "
                         f"{tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__}")
    norm = _normalization(model, mean, std, example_input.shape[1])
    device = next(model.parameters(), torch.empty(0)).device
    x = example_input.detach().to(device, torch.float32)
    proto = onnx.load_from_string(_export(model, x))
    onnx.helper.set_model_props(proto, metadata(model, tuple(x.shape[1:]), norm))
    onnx.checker.check_model(proto)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def _export(model: nn.Module, x: torch.Tensor) -> bytes:
    """The TorchScript exporter's bytes, the model in eval mode (restored afterwards)."""
    was_training = model.training
    buf = io.BytesIO()
    try:
        model.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except torch.onnx.errors.OnnxExporterError as e:  # the first line names the op; the rest is a graph dump
        raise UnsupportedError(f"to_onnx: PyTorch's ONNX exporter cannot export this model at input "
                               f"{tuple(x.shape)}: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return buf.getvalue()


def _normalization(model: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None,
                   channels: int) -> dict[str, Any] | None:
    from .serialize import checked_normalization

    if (mean is None) != (std is None):
        raise InputError("to_onnx: give both mean and std, or neither")
    norm = {"mean": list(mean), "std": list(std)} if mean is not None else \
        getattr(model, "patsparse_normalization", None)
    if norm is None:
        return None
    return {**checked_normalization(norm, "to_onnx: mean/std", InputError, channels),
            "formula": NORMALIZATION_FORMULA}


def metadata(model: nn.Module, input_shape: tuple[int, ...],
             normalization: dict[str, Any] | None) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (see the module docstring)."""
    props = {"patsparse.version": __version__,
             "patsparse.input_shape": json.dumps(list(input_shape)),
             "patsparse.sparsity": json.dumps(sparsity_summary(model))}
    if normalization is not None:
        props["patsparse.normalization"] = json.dumps(normalization)
    return props


def sparsity_summary(model: nn.Module) -> dict[str, Any]:
    """What the weights hold (``describe``) and, for a patsparse-pruned model, what was asked
    (library, rate): enough to tell a pruned file from a dense one without reading tensors."""
    from .patterns.library import positions
    from .pruning.describe import describe
    from .pruning.spec import spec_library

    report = describe(model)
    spec = getattr(model, "patsparse_spec", None)
    summary: dict[str, Any] = {
        "library_name": spec.get("library_name") if spec else None,
        "library": [list(p) for p in positions(spec_library(spec))] if spec else None,
        "requested_rate": spec.get("rate") if spec else None,
        "conv3x3_rate": round(report.conv3x3_rate, 4),
        "model_rate": round(report.model_rate, 4),
        "nonzero_parameters": report.nonzero_parameters,
        "parameters": report.parameters,
        "layers": {layer.name: {"status": layer.status, "shape": list(layer.shape),
                                "kernels_kept": layer.kernels_kept, "kernels": layer.kernels,
                                "nonzeros": layer.nonzeros, "weights": layer.weights}
                   for layer in report.layers},
    }
    return summary
