"""``patsparse.save`` / ``patsparse.load``: pruned models (and compiled ones) on disk.

A saved pruned model is a directory::

    model.pats/
      model.safetensors     # the state dict (never pickled)
      model.json            # {"format": "patsparse-model", "version": 1, "spec": <sparsity spec>,
                            #  "model": <patsparse.models.get arguments or null>,
                            #  "weights_sha256": <hash of model.safetensors, header and data>,
                            #  "mean"/"std": <input normalisation, when known>, ...}
      recipe.yaml           # the pruning recipe, when the model was pruned by patsparse.prune

This is the layout ``patsparse train`` leaves in a run directory (train.artifacts), so ``load``
also reads a trained dense model, and the training side reads a pruned one.
``load`` rebuilds zoo models from ``model`` (``patsparse.models.get(**model)``); for a user's own
model pass ``load(path, model=m)`` and the weights are checked against it and filled in. The spec
is validated against the weights (shapes, pattern ids in range, zero outside every mask), so a
tampered or mismatched file fails with a FormatError naming the layer and kernel, and the
weights file is checked against its stored hash before it is parsed.

The input normalisation a model was trained with (``mean``/``std`` per channel, written by
``patsparse train``) is kept as ``model.patsparse_normalization`` and saved again, so it travels
to pruned and compiled models: the compiled model's manifest states it, ``patsparse run``
applies it on request.

``save`` writes a new directory and swaps it in (checkpoint.replace_dir): a kill at any instant
leaves the complete old model or the complete new one.

Compiled models are dispatched: ``save`` calls their own ``save``; ``load`` of a directory with
a ``manifest.json`` returns ``patsparse.compiler.package.load_compiled(path)``, or
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
from .checkpoint import (check_state_dict, load_tensors, read_json, replace_dir, save_tensors, saved_dir,
                         stored_sha256, write_json)
from .errors import FormatError, InputError
from .pruning.spec import check_weights, spec_from_json, spec_to_json

MODEL_FORMAT = "patsparse-model"
MODEL_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
RECIPE = "recipe.yaml"
HISTORY = "history.json"  # written beside a pruned model by `patsparse prune`
MANIFEST = "manifest.json"  # written by the compiler's CompiledModel
QUANTIZED = "quantized.json"  # written by patsparse.quant.QuantizedModel.save
OWNED = (WEIGHTS, META, RECIPE, HISTORY)
# `patsparse prune` trains a zoo model's dense parent in "dense" and keeps its own state in
# "prune-checkpoint" until the pruned model is saved; a save carries both over
KEPT = ("dense", "prune-checkpoint")


def save(obj: Any, path: str | os.PathLike, arch: dict | None = None,
         input_shape: Sequence[int] | None = None) -> None:
    """Save a (pruned) model to the directory ``path``, or a compiled or quantised model via its own
    ``save``.

    ``arch``: the ``patsparse.models.get`` arguments that rebuild the model (defaults to the
    model's ``patsparse_arch`` attribute); without it ``load`` needs ``model=``.
    ``input_shape``: one image's (C, H, W), so benchmarks and the compiler can feed the loaded
    model without being told (defaults to the model's ``patsparse_input_shape`` attribute).
    The model's ``patsparse_normalization`` ({"mean", "std"} per channel), when set, is kept too.
    """
    if (getattr(obj, "is_compiled_patsparse", False) is True or getattr(obj, "is_quantized_patsparse", False)
            is True) and callable(getattr(obj, "save", None)):
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
    arch = arch if arch is not None else getattr(obj, "patsparse_arch", None)
    shape = input_shape if input_shape is not None else getattr(obj, "patsparse_input_shape", None)
    if shape is not None:
        shape = _checked_shape(shape, "save: input_shape")
    norm = getattr(obj, "patsparse_normalization", None)
    if norm is not None:
        norm = checked_normalization(norm, "save: model.patsparse_normalization", InputError,
                                     shape[0] if shape else None)
    recipe = getattr(obj, "patsparse_recipe", None)

    def write(d: Path) -> None:
        sha = save_tensors(d / WEIGHTS, obj.state_dict())
        write_json(d / META, {"format": MODEL_FORMAT, "version": MODEL_VERSION, "patsparse_version": __version__,
                              "class": type(obj).__name__, "model": arch, "input_shape": shape,
                              "weights_sha256": sha,
                              "spec": None if spec is None else spec_to_json(spec), **(norm or {})})
        if recipe is not None:
            recipe.save(d / RECIPE)

    replace_dir(path, write, OWNED, KEPT)


def load(path: str | os.PathLike, model: nn.Module | None = None) -> Any:
    """Load what :func:`save` wrote. Returns the model in eval mode with ``patsparse_spec`` set,
    or a ``CompiledModel`` (``OpenCLModel``) for a CPU- (OpenCL-) compiled-model directory, a
    ``PartitionedModel`` for one compiled with a fallback (compiler/fallback_io.py), or a
    ``QuantizedModel`` for a directory ``ps.save`` wrote from ``ps.quantize``'s result."""
    path = saved_dir(path)
    from .compiler.fallback_io import is_partitioned_dir, load_partitioned

    if is_partitioned_dir(path):
        return load_partitioned(path)
    if (path / MANIFEST).is_file():
        from .compiler.opencl import is_opencl_dir
        from .compiler.opencl import load as load_opencl
        from .compiler.package import load_compiled

        return load_opencl(path) if is_opencl_dir(path) else load_compiled(path)
    if (path / QUANTIZED).is_file():
        from .quant import load_quantized

        return load_quantized(path)
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
    tensors = load_tensors(path / WEIGHTS, "model weights", sha=stored_sha256(meta, "weights_sha256", str(path / META)))
    check_state_dict(model, tensors, str(path / WEIGHTS))
    model.load_state_dict(tensors)
    if meta.get("spec") is not None:
        spec = spec_from_json(meta["spec"], f"sparsity spec in {path / META}")
        check_weights(model, spec, str(path))
        model.patsparse_spec = spec
    if meta.get("input_shape") is not None:
        model.patsparse_input_shape = tuple(_checked_shape(meta["input_shape"], f"{path / META}: input_shape",
                                                           FormatError))
    norm = checked_normalization(meta, f"{path / META}", FormatError,
                                 getattr(model, "patsparse_input_shape", (None,))[0])
    if norm is not None:
        model.patsparse_normalization = norm
    return model.eval()


def stored_normalization(norm: Any, where: str, channels: int) -> dict | None:
    """A ``normalization`` field a file stores (a compiled model's manifest, an ONNX file's
    metadata): None when absent, else an object :func:`checked_normalization` accepts; anything
    else is a FormatError naming ``where``."""
    if norm is None:
        return None
    if not isinstance(norm, dict):
        raise FormatError(f"{where} must be an object with mean and std, got {norm!r}")
    return checked_normalization(norm, where, FormatError, channels)


def checked_normalization(obj: Any, where: str, err: type[Exception] = FormatError,
                          channels: int | None = None) -> dict | None:
    """``{"mean": [...], "std": [...]}`` (per-channel floats, std > 0) from ``obj``'s keys
    ``mean``/``std``, None when it has neither, ``err`` naming ``where`` when they are malformed
    or (given ``channels``) not one value per input channel."""
    if not isinstance(obj, dict) or (obj.get("mean") is None and obj.get("std") is None):
        return None
    mean, std = obj.get("mean"), obj.get("std")
    ok = all(isinstance(v, (list, tuple)) and 0 < len(v) <= 4096
             and all(isinstance(f, numbers.Real) and not isinstance(f, bool) and math.isfinite(f) for f in v)
             for v in (mean, std))
    if not ok or len(mean) != len(std) or min(std) <= 0 or (channels is not None and len(mean) != channels):
        raise err(f"{where}: input normalisation must be lists of finite numbers with std > 0, one per "
                  f"input channel{f' ({channels})' if channels else ''}, got mean={mean!r} std={std!r}")
    return {"mean": [float(f) for f in mean], "std": [float(f) for f in std]}


def _checked_shape(shape: Any, where: str, err: type[Exception] = InputError) -> list[int]:
    """(C, H, W) as a list of positive ints, or ``err`` naming ``where``."""
    dims = list(shape) if isinstance(shape, (list, tuple)) else []
    if len(dims) != 3 or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                                 for d in dims):
        raise err(f"{where} must be one image's (C, H, W) as three positive integers, got {shape!r}")
    return [int(d) for d in dims]
