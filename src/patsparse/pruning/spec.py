"""The sparsity spec: which pattern (or "pruned") every kernel of every pruned layer has.

In memory a spec is a plain dict (so it is easy to inspect and to serialise)::

    {"format": "patsparse-sparsity-spec", "version": 1,
     "library": [[[0,1,0],...], ...],      # (K,3,3) masks, the ids below index into it
     "library_name": "phase2" | None,
     "rate": 8.0,                           # requested 3x3-conv rate (None when inferred)
     "layers": {name: {"mode": "pattern+connectivity" | "pattern" | "connectivity",
                       "shape": [O, I, kh, kw], "groups": g,
                       "kernels": LongTensor (O, I)}}}   # pattern id, -1 = pruned

For connectivity-only (1x1) layers a kept kernel has id 0 (it keeps its one weight). On disk
``kernels`` become nested lists. The spec is the contract with the compiler and with ``load``:
:func:`check_weights` holds a model to it and names the first layer and kernel that break it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import FormatError, InputError
from ..patterns.library import library_name, validate_library
from .layers import CONNECTIVITY, MODES

SPEC_FORMAT = "patsparse-sparsity-spec"
SPEC_VERSION = 1
PRUNED = -1


def make_spec(library: torch.Tensor, layers: Mapping[str, dict], rate: float | None) -> dict:
    """Assemble a spec dict from per-layer entries made by :func:`layer_entry`."""
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION,
            "library": library.to(torch.int64).tolist(), "library_name": library_name(library),
            "rate": None if rate is None else float(rate), "layers": dict(layers)}


def layer_entry(module: nn.Conv2d, mode: str, kernels: torch.Tensor) -> dict:
    return {"mode": mode, "shape": list(module.weight.shape), "groups": int(module.groups),
            "kernels": kernels.detach().to("cpu", torch.long).clone()}


def spec_library(spec: Mapping[str, Any]) -> torch.Tensor:
    return torch.tensor(spec["library"], dtype=torch.float32)


def layer_mask(entry: Mapping[str, Any], library: torch.Tensor) -> torch.Tensor:
    """The 0/1 weight mask (shape of the conv weight) a layer entry allows."""
    ids = entry["kernels"]
    kept = (ids != PRUNED).to(torch.float32)
    if entry["mode"] == CONNECTIVITY:
        o, i, kh, kw = entry["shape"]
        return kept[:, :, None, None].expand(o, i, kh, kw).contiguous()
    return library[ids.clamp(min=0)] * kept[:, :, None, None]


def spec_masks(spec: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Layer name -> weight mask, for every layer of the spec."""
    lib = spec_library(spec)
    return {name: layer_mask(entry, lib) for name, entry in spec["layers"].items()}


def spec_to_json(spec: Mapping[str, Any]) -> dict:
    """A JSON-ready copy (kernel id tensors become nested lists)."""
    out = dict(spec)
    out["layers"] = {n: {**e, "kernels": e["kernels"].tolist()} for n, e in spec["layers"].items()}
    return out


def spec_from_json(data: Any, source: str = "sparsity spec") -> dict:
    """Parse and structurally validate a spec read from JSON; FormatError names what is wrong."""
    if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
        raise FormatError(f"{source}: not a patsparse sparsity spec (format field "
                          f"{data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("version") != SPEC_VERSION:
        raise FormatError(f"{source}: spec version {data.get('version')!r} is not supported "
                          f"(this patsparse reads version {SPEC_VERSION})")
    try:
        library = validate_library(torch.tensor(data["library"], dtype=torch.float32), f"{source} library")
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{source}: bad pattern library: {e}") from None
    layers = {}
    for name, e in (data.get("layers") or {}).items():
        try:
            mode, shape, groups = e["mode"], [int(s) for s in e["shape"]], int(e["groups"])
            kernels = torch.tensor(e["kernels"], dtype=torch.long)
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"{source}: layer {name!r} entry is malformed: {err}") from None
        if mode not in MODES:
            raise FormatError(f"{source}: layer {name!r} has unknown mode {mode!r} (one of {MODES})")
        if len(shape) != 4 or tuple(kernels.shape) != tuple(shape[:2]):
            raise FormatError(f"{source}: layer {name!r} kernel ids have shape {tuple(kernels.shape)}, "
                              f"expected {tuple(shape[:2])} for weight shape {tuple(shape)}")
        high = 0 if mode == CONNECTIVITY else library.shape[0] - 1
        bad = torch.nonzero((kernels < PRUNED) | (kernels > high))
        if len(bad):
            o, i = bad[0].tolist()
            raise FormatError(f"{source}: layer {name!r} kernel ({o}, {i}) has pattern id "
                              f"{int(kernels[o, i])}, out of range [-1, {high}]")
        layers[name] = {"mode": mode, "shape": shape, "groups": groups, "kernels": kernels}
    return {**data, "library": library.to(torch.int64).tolist(), "layers": layers}


def check_weights(model: nn.Module, spec: Mapping[str, Any], source: str = "model") -> None:
    """Every spec layer exists with the recorded shape and has no weight outside its mask.

    Raises FormatError naming the layer and the first offending kernel (filter, channel).
    """
    modules = dict(model.named_modules())
    lib = spec_library(spec)
    for name, entry in spec["layers"].items():
        m = modules.get(name)
        if not isinstance(m, nn.Conv2d):
            raise FormatError(f"{source}: spec layer {name!r} is not a Conv2d of the model")
        if list(m.weight.shape) != list(entry["shape"]) or int(m.groups) != int(entry["groups"]):
            raise FormatError(f"{source}: layer {name!r} has weight shape {list(m.weight.shape)} "
                              f"groups {m.groups}, spec says {entry['shape']} groups {entry['groups']}")
        outside = (m.weight.detach().cpu() != 0) & (layer_mask(entry, lib) == 0)
        per_kernel = outside.flatten(2).any(dim=2)
        if bool(per_kernel.any()):
            o, i = torch.nonzero(per_kernel)[0].tolist()
            kid = int(entry["kernels"][o, i])
            what = "pruned" if kid == PRUNED else f"pattern {kid}"
            raise FormatError(f"{source}: layer {name!r} kernel (filter {o}, channel {i}) is "
                              f"{what} in the spec but has non-zero weights outside its mask "
                              f"({int(per_kernel.sum())} such kernels in the layer)")


def infer_kernels(weight: torch.Tensor, library: torch.Tensor, mode: str) -> torch.Tensor:
    """Kernel ids read from weights alone: -1 for all-zero kernels, else the library pattern that
    contains every non-zero (the first such). InputError if a kernel fits no pattern."""
    w = weight.detach().cpu()
    nz = w.flatten(2) != 0
    kept = nz.any(dim=2)
    if mode == CONNECTIVITY:
        return torch.where(kept, 0, PRUNED)
    lib = library.reshape(-1, 9).bool()
    fits = ~(nz[:, :, None, :] & ~lib[None, None]).any(dim=3)  # (O, I, K)
    ok = fits.any(dim=2) | ~kept
    if not bool(ok.all()):
        o, i = torch.nonzero(~ok)[0].tolist()
        raise InputError(f"kernel (filter {o}, channel {i}) has non-zeros at "
                         f"{torch.nonzero(nz[o, i]).flatten().tolist()}, which fit no library pattern")
    return torch.where(kept, fits.to(torch.int8).argmax(dim=2), PRUNED)
