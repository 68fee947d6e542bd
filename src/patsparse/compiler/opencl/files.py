"""Save and load an OpenCL-compiled model: a directory of JSON and raw tensors, never a pickle.

    manifest.json        format "patsparse-opencl", shapes, per-layer kernel and schedule,
                         the device it was compiled on, the input normalisation (when
                         known), sha256 of model.cl and weights.bin
    model.cl             the generated OpenCL C (for inspection: it is never built as read)
    weights.bin          the packed weights blob (raw little-endian float32)
    graph.json, graph.safetensors   the fused IR the model was generated from

``load`` regenerates source and weights from the stored IR with the stored schedules and checks
both against the manifest, and the files against it too: an edited kernel file, weight file or
IR is a FormatError, never code that runs. Kernels are then built for the device at hand; a
stored schedule that does not fit that device (work-group or local memory too large) is
replaced by the device's default for that layer. ``save`` writes a new directory and swaps it
in, so a kill leaves the complete old model or the complete new one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...checkpoint import atomic_write_bytes, load_tensors, read_json, replace_dir, save_tensors, saved_dir, write_json
from ...errors import FormatError
from ...serialize import stored_normalization
from ..ir import Graph
from .api import FORMAT, FORMAT_VERSION, lower, sha256
from .device import describe_device, open_device
from .runtime import OpenCLModel
from .schedule import fits

MANIFEST = "manifest.json"
OWNED = (MANIFEST, "model.cl", "weights.bin", "graph.json", "graph.safetensors")


def save(model: OpenCLModel, path: str | os.PathLike) -> Path:
    """Write ``model``'s directory (see the module docstring) in one atomic swap
    (checkpoint.replace_dir): a kill leaves the complete old model or the complete new one."""
    gj, gt = model._graph

    def write(d: Path) -> None:
        atomic_write_bytes(d / "model.cl", model.source.encode())
        atomic_write_bytes(d / "weights.bin", model._blob_host.astype("<f4").tobytes())
        write_json(d / "graph.json", gj)
        save_tensors(d / "graph.safetensors", {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in gt.items()})
        write_json(d / MANIFEST, model.manifest)

    return replace_dir(path, write, OWNED)


def _read(d: Path, name: str) -> bytes:
    try:
        return (d / name).read_bytes()
    except OSError as e:
        raise FormatError(f"{d}: OpenCL compiled model is incomplete ({e})") from None


def is_opencl_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a model ``save`` wrote (its manifest says format patsparse-opencl):
    how ``patsparse.load`` and ``patsparse run`` tell it from a CPU-compiled model."""
    man = saved_dir(path) / MANIFEST
    if not man.is_file():
        return False
    fields = read_json(man, "compiled-model manifest")
    return isinstance(fields, dict) and fields.get("format") == FORMAT


def load(path: str | os.PathLike, device: str | int | None = None) -> OpenCLModel:
    """Reopen a directory written by ``save``, built for ``device`` (see device.open_device)."""
    d = saved_dir(path)
    man = read_json(d / MANIFEST, "OpenCL compiled-model manifest")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise FormatError(f"{d}: {MANIFEST} is not an OpenCL-compiled patsparse model")
    if man.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{d}: OpenCL compiled-model format {man.get('format_version')!r}, this patsparse "
                          f"reads {FORMAT_VERSION}")
    for name, key in (("model.cl", "source_sha256"), ("weights.bin", "weights_sha256")):
        if sha256(_read(d, name)) != man.get(key):
            raise FormatError(f"{d / name} does not match its manifest (edited or corrupt)")
    gj = read_json(d / "graph.json", "OpenCL compiled-model graph")
    gt = {k: v.numpy() for k, v in load_tensors(d / "graph.safetensors", "OpenCL compiled-model graph").items()}
    try:
        g = Graph.from_json(gj, gt)
        schedules = {layer["cl_name"]: layer["schedule"] for layer in man["layers"]}
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{d}: graph.json or {MANIFEST} is malformed ({e!r})") from None
    cl_device = open_device(device)
    plan, source, blob = lower(g, cl_device, schedules, check=False)
    if sha256(source.encode()) != man["source_sha256"] or sha256(blob.astype("<f4").tobytes()) != man["weights_sha256"]:
        raise FormatError(f"{d}: the stored graph does not regenerate model.cl and weights.bin "
                          "(graph edited, or written by another patsparse version)")
    dev = describe_device(cl_device)
    misfits = {s.cname for s in plan.steps if fits(s.kind, s.kernel.schedule, s.stride, dev)}
    if misfits:
        plan, source, blob = lower(g, cl_device, {k: v for k, v in schedules.items() if k not in misfits})
        man = {**man, "source_sha256": sha256(source.encode()), "weights_sha256": sha256(blob.astype("<f4").tobytes()),
               "layers": [{**layer, "schedule": s.kernel.schedule} for layer, s in zip(man["layers"], plan.steps)]}
    man["device"] = dev.name
    man["normalization"] = stored_normalization(man.get("normalization"), f"{d / MANIFEST}: normalization",
                                                g.input_shape[0])
    return OpenCLModel(plan, source, blob, man, cl_device, (gj, gt))
