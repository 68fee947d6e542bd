"""Fused IR graph -> OpenCLModel: plan, (tune,) generate, pack, build for the device."""

from __future__ import annotations

import hashlib
from typing import Any

from ..codegen.graph import pack_blob
from ..ir import Graph
from ..target import Target, get_target
from .device import describe_device, target_device
from .plan import emit_source, generate_all, plan_graph
from .runtime import OpenCLModel

FORMAT = "patsparse-opencl"
FORMAT_VERSION = 1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lower(g: Graph, device: Any, schedules: dict[str, dict] | None = None, check: bool = True) -> tuple:
    """(plan, source, blob) of a fused graph for a pyopencl ``device`` (``schedules`` by kernel
    name override the defaults; ``check``: they must fit the device). Deterministic: the same
    graph and schedules give the same source and blob, which is how a saved model is verified."""
    dev = describe_device(device)
    plan = plan_graph(g)
    generate_all(plan, dev, schedules, check)
    blob = pack_blob(plan)
    return plan, emit_source(plan), blob


def build_opencl(g: Graph, *, target: Target | str = "opencl", schedules: dict[str, dict] | None = None,
                 tune: bool = False, origin: str = "", normalization: dict | None = None) -> OpenCLModel:
    """Plan, (tune,) generate and build a portable fused graph (``compiler.api.capture``: no
    CPU lowering) for an OpenCL target.

    ``target``: "opencl" (the default device: first GPU, else first device, see
    device.open_device) or a Target from ``opencl_target`` (a chosen device). ``tune``:
    measure each layer's candidate schedules on that device. ``normalization``: the input
    normalisation the model states, recorded in the manifest (``compiler.api.input_normalization``).
    """
    cl_device = target_device(get_target(target))
    gj, gt = g.to_json()  # before planning: the IR as captured and fused
    if tune:
        from .tune import tune_graph

        schedules = {**(schedules or {}), **tune_graph(g, cl_device)}
    plan, source, blob = lower(g, cl_device, schedules)
    layers = [{"name": s.node.name, "kernel": s.kind, "cl_name": s.cname, "flops": s.kernel.flops,
               "schedule": s.kernel.schedule, "act": s.node.act, "residual": s.node.residual is not None}
              for s in plan.steps]
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "origin": origin,
                "input_shape": list(g.input_shape), "output_shape": list(g.node(g.output).shape),
                "target": "opencl", "device": describe_device(cl_device).name, "tuned": bool(tune),
                "source_sha256": sha256(source.encode()), "weights_sha256": sha256(blob.astype("<f4").tobytes()),
                "layers": layers, "normalization": normalization}
    return OpenCLModel(plan, source, blob, manifest, cl_device, (gj, gt))
