"""``patsparse.save`` / ``patsparse.load``: pruned models (and compiled ones) on disk.

A saved pruned model is a directory::

    model.pats/
      model.safetensors     # the state dict (never pickled)
      model.json            # {"format": "patsparse-model", "version": 1, "spec": <sparsity spec>,
                            #  "model": <patsparse.models.get arguments or null>,
                            #  "mean"/"std": <input normalisation, when known>, ...}
      recipe.yaml           # the pruning recipe, when the model was pruned by patsparse.prune

This is the layout ``patsparse train`` leaves in a run directory (train.artifacts), so ``load``
also reads a trained dense model, and the training side reads a pruned one.
``load`` rebuilds zoo models from ``model`` (``patsparse.models.get(**model)``); for a user's own
model pass ``load(path, model=m)`` and the weights are checked against it and filled in. The spec
is validated against the weights (shapes, pattern ids in range, zero outside every mask), so a
tampered or mismatched file fails with a FormatError naming the layer and kernel.

Compiled models are dispatched: ``save`` calls their own ``save``; ``load`` of a directory with
a ``manifest.json`` returns ``patsparse.compiler.runtime.CompiledModel.load(path)``, or
``patsparse.compiler.opencl.load(path)`` when the manifest's format is "patsparse-opencl".
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from . import __version__
from .checkpoint import check_state_dict, load_tensors, read_json, save_tensors, write_json
from .errors import FormatError, InputError
from .pruning.spec import check_weights, spec_from_json, spec_to_json

MODEL_FORMAT = "patsparse-model"
MODEL_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
RECIPE = "recipe.yaml"
MANIFEST = "manifest.json"  # written by the compiler's CompiledModel


def save(obj: Any, path: str | os.PathLike, arch: dict | None = None,
         input_shape: Sequence[int] | None = None) -> None:
    """Save a (pruned) model to the directory ``path``, or a compiled model via its own ``save``.

    ``arch``: the ``patsparse.models.get`` arguments that rebuild the model (defaults to the
    model's ``patsparse_arch`` attribute); without it ``load`` needs ``model=``.
    ``input_shape``: one image's (C, H, W), so benchmarks and the compiler can feed the loaded
    model without being told (defaults to the model's ``patsparse_input_shape`` attribute).
    The model's ``patsparse_normalization`` ({"mean", "std"} per channel), when set, is kept too.
    """
    if getattr(obj, "is_compiled_patsparse", False) is True and callable(getattr(obj, "save", None)):
        obj.save(path)
        return
    if not isinstance(obj, nn.Module):
        raise InputError(f"save: expected a torch.nn.Module or a compiled patsparse model, got {type(obj).__name__}")
    spec = getattr(obj, "patsparse_spec", None)
    if spec is not None:
        try:
            check_weights(obj, spec, "model to save")
        except FormatError as e:  # the caller's model broke its own spec: their input, not a file
            raise InputError(f"{e} (weights were changed after pruning; re-prune or drop patsparse_spec)") from None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"save: {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS, obj.state_dict())
    arch = arch if arch is not None else getattr(obj, "patsparse_arch", None)
    shape = input_shape if input_shape is not None else getattr(obj, "patsparse_input_shape", None)
    if shape is not None:
        shape = _checked_shape(shape, "save: input_shape")
    norm = getattr(obj, "patsparse_normalization", None)
    norm = checked_normalization(norm, "save: patsparse_normalization") if norm is not None else {}
    write_json(path / META, {"format": MODEL_FORMAT, "version": MODEL_VERSION, "patsparse_version": __version__,
                             "class": type(obj).__name__, "model": arch, "input_shape": shape, **norm,
                             "spec": None if spec is None else spec_to_json(spec)})
    recipe = getattr(obj, "patsparse_recipe", None)
    if recipe is not None:
        recipe.save(path / RECIPE)


def load(path: str | os.PathLike, model: nn.Module | None = None) -> Any:
    """Load what :func:`save` wrote. Returns the model in eval mode with ``patsparse_spec`` set,
    or a ``CompiledModel`` (``OpenCLModel``) for a CPU- (OpenCL-) compiled-model directory."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        from .compiler.opencl import is_opencl_dir
        from .compiler.opencl import load as load_opencl
        from .compiler.runtime import CompiledModel

        return load_opencl(path) if is_opencl_dir(path) else CompiledModel.load(path)
    if not path.is_dir():
        raise FormatError(f"load: {path} is not a saved patsparse model directory")
    meta = read_json(path / META, "patsparse model metadata")
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise FormatError(f"{path / META}: not a patsparse model (format "
                          f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != MODEL_VERSION:
        raise FormatError(f"{path / META}: model format version {meta.get('version')!r} is not supported "
                          f"(this patsparse reads version {MODEL_VERSION})")
    if model is None:
        arch = meta.get("model")
        if not isinstance(arch, dict):
            raise FormatError(f"{path}: the saved model ({meta.get('class')}) is not a patsparse zoo "
                              f"model, so it cannot be rebuilt: pass load(path, model=<an instance>)")
        from . import models

        try:
            model = models.get(**arch)
        except TypeError as e:
            raise FormatError(f"{path / META}: model {arch} does not build a zoo model: {e}") from None
    tensors = load_tensors(path / WEIGHTS, "model weights")
    check_state_dict(model, tensors, str(path / WEIGHTS))
    model.load_state_dict(tensors)
    if meta.get("spec") is not None:
        spec = spec_from_json(meta["spec"], f"sparsity spec in {path / META}")
        check_weights(model, spec, str(path))
        model.patsparse_spec = spec
    if meta.get("input_shape") is not None:
        model.patsparse_input_shape = tuple(_checked_shape(meta["input_shape"], f"{path / META}: input_shape",
                                                           FormatError))
    if "mean" in meta or "std" in meta:
        model.patsparse_normalization = checked_normalization(
            {"mean": meta.get("mean"), "std": meta.get("std")}, f"{path / META}: mean/std", FormatError)
    return model.eval()


def _checked_shape(shape: Any, where: str, err: type[Exception] = InputError) -> list[int]:
    """(C, H, W) as a list of positive ints, or ``err`` naming ``where``."""
    dims = list(shape) if isinstance(shape, (list, tuple)) else []
    if len(dims) != 3 or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                                 for d in dims):
        raise err(f"{where} must be one image's (C, H, W) as three positive integers, got {shape!r}")
    return [int(d) for d in dims]


def checked_normalization(norm: Any, where: str, err: type[Exception] = InputError) -> dict[str, list[float]]:
    """{"mean": [...], "std": [...]} per input channel (finite, std > 0), or ``err`` naming ``where``.

    The input normalisation travels with the model (train writes it, prune keeps it) so an export
    can tell another runtime what to feed the network."""
    mean = norm.get("mean") if isinstance(norm, dict) else None
    std = norm.get("std") if isinstance(norm, dict) else None
    ok = (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) >= 1
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                  for v in (*mean, *std)) and all(v > 0 for v in std))
    if not ok:
        raise err(f"{where} must be equal-length lists of finite per-channel means and positive stds, "
                  f"got {norm!r}")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
