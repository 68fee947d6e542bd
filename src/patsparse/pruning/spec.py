"""The sparsity spec: which pattern (or "pruned") every kernel of every pruned layer has.

In memory a spec is a plain dict (so it is easy to inspect and to serialise)::

    {"format": "patsparse-sparsity-spec", "version": 2,
     "library": [[[0,1,0],...], ...],      # (K,3,3) masks, the ids below index into it
     "library_name": "phase2" | None,
     "rate": 8.0,                           # requested rate over the pruned layers (None when inferred)
     "layers": {name: {"mode": "pattern+connectivity" | "pattern" | "connectivity" | "grouped1x1",
                       "shape": [O, I, kh, kw], "groups": g,
                       "kernels": LongTensor (O, K)}}}   # pattern id, -1 = pruned

K is I, except for "grouped1x1" layers (a 1x1 conv in virtual 3x3 kernels, see
:mod:`patsparse.pruning.grouping`) where it is ceil(I / 9): one id per group of 9 input
channels, and the short last group allows the chosen mask cut to its length. For
connectivity-only (1x1) layers a kept kernel has id 0 (it keeps its one weight). On disk
``kernels`` become nested lists. Version 2 added "grouped1x1"; version 1 files still load. The
spec is the contract with the compiler and with ``load``: :func:`check_weights` holds a model to
it and names the first layer and kernel (or group) that breaks it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import FormatError, InputError
from ..patterns.library import library_name, validate_library
from .grouping import GROUP, from_kernel_rows, group_count, kernel_rows
from .layers import CONNECTIVITY, GROUPED, MODES

SPEC_FORMAT = "patsparse-sparsity-spec"
SPEC_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    shape = entry["shape"]
    if entry["mode"] == CONNECTIVITY:
        o, i, kh, kw = shape
        return kept[:, :, None, None].expand(o, i, kh, kw).contiguous()
    masks = library.reshape(-1, 9)[ids.clamp(min=0)] * kept[:, :, None]
    return from_kernel_rows(masks, tuple(shape), entry["mode"] == GROUPED)


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
    if data.get("version") not in READABLE_VERSIONS:
        raise FormatError(f"{source}: spec version {data.get('version')!r} is not supported "
                          f"(this patsparse reads versions {list(READABLE_VERSIONS)})")
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
        if mode not in MODES or (mode == GROUPED and data["version"] < 2):
            raise FormatError(f"{source}: layer {name!r} has unknown mode {mode!r} (version {data['version']} "
                              f"modes: {MODES if data['version'] >= 2 else MODES[:3]})")
        _check_layer_shape(name, mode, shape, groups, kernels, source)
        high = 0 if mode == CONNECTIVITY else library.shape[0] - 1
        bad = torch.nonzero((kernels < PRUNED) | (kernels > high))
        if len(bad):
            o, i = bad[0].tolist()
            raise FormatError(f"{source}: layer {name!r} {_kernel_name(mode, o, i, shape[1])} has pattern id "
                              f"{int(kernels[o, i])}, out of range [-1, {high}]")
        layers[name] = {"mode": mode, "shape": shape, "groups": groups, "kernels": kernels}
    return {**data, "library": library.to(torch.int64).tolist(), "layers": layers}


def _kernel_name(mode: str, o: int, k: int, in_channels: int) -> str:
    """How errors name kernel ``k`` of filter ``o``: a channel, or a group of a grouped 1x1 conv."""
    if mode == GROUPED:
        return f"group {k} (filter {o}, input channels {GROUP * k}..{min(GROUP * (k + 1), in_channels) - 1})"
    return f"kernel (filter {o}, channel {k})"


def _check_layer_shape(name: str, mode: str, shape: list[int], groups: int, kernels: torch.Tensor,
                       source: str) -> None:
    """The weight shape fits the mode and the id table has one entry per (virtual) kernel."""
    if len(shape) != 4 or min(shape) < 1 or groups < 1:
        raise FormatError(f"{source}: layer {name!r} has weight shape {shape} groups {groups}; expected "
                          f"four positive sizes (O, I, kh, kw) and groups >= 1")
    o, i, kh, kw = shape
    if mode == GROUPED and ((kh, kw) != (1, 1) or groups != 1 or i < GROUP):
        raise FormatError(f"{source}: layer {name!r} is {GROUPED} but has weight shape {shape} groups {groups}; "
                          f"virtual 3x3 kernels need an ungrouped 1x1 conv with at least {GROUP} input channels")
    if mode not in (GROUPED, CONNECTIVITY) and (kh, kw) != (3, 3):
        raise FormatError(f"{source}: layer {name!r} has mode {mode!r} but weight shape {shape}; pattern modes "
                          f"need 3x3 kernels ({GROUPED} for 1x1 convs)")
    expected = (o, group_count(i)) if mode == GROUPED else (o, i)
    if tuple(kernels.shape) != expected:
        raise FormatError(f"{source}: layer {name!r} kernel ids have shape {tuple(kernels.shape)}, "
                          f"expected {expected} for weight shape {tuple(shape)}"
                          f"{' (one id per group of 9 input channels)' if mode == GROUPED else ''}")


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
        per_kernel = kernel_rows(outside, entry["mode"] == GROUPED).any(dim=2)
        if bool(per_kernel.any()):
            o, k = torch.nonzero(per_kernel)[0].tolist()
            kid = int(entry["kernels"][o, k])
            what = "pruned" if kid == PRUNED else f"pattern {kid}"
            unit = "groups" if entry["mode"] == GROUPED else "kernels"
            raise FormatError(f"{source}: layer {name!r} {_kernel_name(entry['mode'], o, k, m.weight.shape[1])} "
                              f"is {what} in the spec but has non-zero weights outside its mask "
                              f"({int(per_kernel.sum())} such {unit} in the layer)")


def infer_kernels(weight: torch.Tensor, library: torch.Tensor, mode: str) -> torch.Tensor:
    """Kernel ids read from weights alone: -1 for all-zero kernels, else the library pattern that
    contains every non-zero (the first such). InputError if a kernel fits no pattern."""
    nz = kernel_rows(weight.detach().cpu(), mode == GROUPED) != 0
    kept = nz.any(dim=2)
    if mode == CONNECTIVITY:
        return torch.where(kept, 0, PRUNED)
    lib = library.reshape(-1, 9).bool()
    fits = ~(nz[:, :, None, :] & ~lib[None, None]).any(dim=3)  # (O, I, K)
    ok = fits.any(dim=2) | ~kept
    if not bool(ok.all()):
        o, i = torch.nonzero(~ok)[0].tolist()
        raise InputError(f"{_kernel_name(mode, o, i, weight.shape[1])} has non-zeros at "
                         f"{torch.nonzero(nz[o, i]).flatten().tolist()}, which fit no library pattern")
    return torch.where(kept, fits.to(torch.int8).argmax(dim=2), PRUNED)
