"""``patsparse.compile``: PyTorch model or ONNX file -> CompiledModel (native code, one call).

capture (torch.fx / ONNX) -> passes (fold BN, fuse act/residual, drop no-ops) -> plan (kernel
per layer, layouts, workspace) -> [tune] -> generate C -> build (cached by content hash) ->
CompiledModel. Every unsupported op is reported before any code is generated.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import FormatError, InputError, UnsupportedError
from ..serialize import checked_normalization, stored_normalization
from .build import compile_c, toolchain_fingerprint
from .capture import capture_onnx, capture_torch
from .codegen.graph import SYNC_FLOATS, emit_model, generate_kernels, pack_blob
from .codegen.plan import plan_graph
from .codegen.step import Plan
from .ir import Graph
from .passes import run_passes
from .runtime import FORMAT, FORMAT_VERSION, CompiledModel
from .target import Target, detect, get_target
from .target.host import isa_macro_lines, required_cpu_features

if TYPE_CHECKING:
    from .fallback import PartitionedModel
    from .opencl import OpenCLModel


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def capture(model_or_onnx_path: Any, example_input: Any = None) -> Graph:
    """The fused IR of a model (nn.Module with an example input, or an ONNX file path)."""
    if isinstance(model_or_onnx_path, (str, os.PathLike)):
        g = capture_onnx(Path(model_or_onnx_path))
        origin = str(model_or_onnx_path)
    elif isinstance(model_or_onnx_path, torch.nn.Module):
        if example_input is None:
            raise InputError("compile(model, example_input): an example input (N, C, H, W) is needed "
                             "to trace a PyTorch model")
        x = torch.as_tensor(example_input) if isinstance(example_input, np.ndarray) else example_input
        g = capture_torch(model_or_onnx_path, x)
        origin = type(model_or_onnx_path).__name__
    else:
        raise InputError(f"compile() takes an nn.Module or an ONNX file path, got "
                         f"{type(model_or_onnx_path).__name__}")
    g = run_passes(g)
    g.origin = origin  # type: ignore[attr-defined]
    return g


def input_normalization(model_or_onnx_path: Any, channels: int) -> dict | None:
    """The input normalisation a model states, checked: an nn.Module's ``patsparse_normalization``
    (``patsparse.load`` of a trained or pruned model) or an ONNX file's
    ``patsparse.normalization`` metadata (``patsparse.to_onnx``); None when it states none.
    Why: a compiled or exported model must say what its input is expected to be."""
    if isinstance(model_or_onnx_path, (str, os.PathLike)):
        import onnx

        where = f"{model_or_onnx_path}: metadata patsparse.normalization"
        model = onnx.load(str(model_or_onnx_path), load_external_data=False)
        text = {p.key: p.value for p in model.metadata_props}.get("patsparse.normalization")
        try:
            return None if text is None else stored_normalization(json.loads(text), where, channels)
        except ValueError:
            raise FormatError(f"{where} is not JSON") from None
    norm = getattr(model_or_onnx_path, "patsparse_normalization", None)
    return None if norm is None else checked_normalization(norm, "model.patsparse_normalization", InputError,
                                                           channels)


def runnable_here(target: str | Target | None) -> Target:
    """``target`` resolved (default: this host); InputError when code built for it cannot be
    loaded into this process: another architecture (``export`` it instead), or ISA extensions
    this CPU lacks (the library would die with SIGILL, not a Python error)."""
    t = get_target(target)
    host = detect()
    if t.kind != "cpu" or t.triple not in ("", host.triple):
        raise InputError(f"target {t.name!r} ({t.triple or t.kind}) cannot run in this process on "
                         f"{host.name}: use patsparse.export to build a project for it")
    cc = host.toolchain.cc
    missing = isa_macro_lines(cc, t.toolchain.cflags) - isa_macro_lines(cc, host.toolchain.cflags)
    if missing:
        names = sorted(line.split()[1] for line in missing)
        raise InputError(f"target {t.name!r} needs {', '.join(names)}, which this CPU ({host.name}) "
                         f"lacks: use patsparse.export to build a project for a machine that has them")
    return t


def build_from_graph(g: Graph, *, threads: int | None = None, schedules: dict | None = None,
                     tune: bool = False, cache_dir: str | os.PathLike | None = None,
                     origin: str = "", extra_flags: tuple[str, ...] = (),
                     target: str | Target | None = None, normalization: dict | None = None) -> CompiledModel:
    """Plan, (tune,) generate, build and wrap a fused graph for ``target`` (default: this host).

    ``extra_flags`` go to the C compiler (tests build with -fsanitize=address this way).
    """
    threads = int(threads or default_threads())
    target = runnable_here(target)
    portable = g.to_json()  # the portable IR, before lowering for the target (plan_graph)
    plan = plan_graph(g, threads=threads, target=target)
    if tune:
        from .tune import tune_plan

        schedules = {**(schedules or {}), **tune_plan(plan, threads=threads, cache_dir=cache_dir)}
    generate_kernels(plan, schedules)
    return build_plan(plan, portable, target=target, origin=origin, tuned=bool(tune), cache_dir=cache_dir,
                      extra_flags=extra_flags, normalization=normalization)


def build_plan(plan: Plan, portable: tuple[dict, dict], *, target: Target, origin: str, tuned: bool,
               cache_dir: str | os.PathLike | None = None, extra_flags: tuple[str, ...] = (),
               normalization: dict | None = None) -> CompiledModel:
    """Pack, emit, build (or take from the build cache) and wrap a plan whose kernels are generated.

    ``portable`` is the graph before lowering for ``target`` (``Graph.to_json``): what a saved
    model stores and regenerates from. The one path from a plan to a CompiledModel: a compile and
    the loading of a saved model both end here, so both produce the same source, manifest and
    library for the same plan."""
    g = plan.graph
    gj, gt = portable
    blob = pack_blob(plan)
    source = emit_model(plan)
    lib = compile_c(source, name="model", target=target, cache_dir=Path(cache_dir) if cache_dir else None,
                    extra_flags=tuple(extra_flags))
    layers = []
    for s in plan.steps:
        entry = {"name": s.node.name, "kernel": s.kind, "c_name": s.cname, "flops": s.kernel.flops,
                 "schedule": plan.schedules[s.cname], "act": s.node.act,
                 "residual": s.node.residual is not None, "batched": s.kernel.batched}
        if s.sparsity is not None:  # pattern convs, grouped 1x1 convs (virtual kernels), pruned expands
            entry["kernels"] = s.sparsity.counts()
        layers.append(entry)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "origin": origin,
                "input_shape": list(g.input_shape), "output_shape": list(g.node(g.output).shape),
                "threads": int(plan.threads or default_threads()), "vl": plan.vl, "target": target.name,
                "toolchain": toolchain_fingerprint(target),
                "isa": required_cpu_features(target.toolchain.compiler(), target.toolchain.cflags),
                "workspace_floats": plan.ws_floats + SYNC_FLOATS, "blob_floats": plan.blob_floats,
                "images": plan.images,
                "tuned": tuned, "layers": layers, "normalization": normalization}
    return CompiledModel(lib, blob, manifest, source, gj, gt)


def _warn_spec_mismatch(model: Any) -> None:
    """Say so when a model's attached sparsity spec (``patsparse_spec``) claims masks, grouped
    1x1 ones included, that its weights do not follow. Not an error: the compiler reads the
    sparsity from the weights, so such a layer is compiled as its weights are (its kernels with
    stray non-zeros take the dense code path) and the numbers stay PyTorch's."""
    spec = getattr(model, "patsparse_spec", None)
    if spec is None or not isinstance(model, torch.nn.Module):
        return
    from ..pruning.spec import check_weights

    try:
        check_weights(model, spec, "compile")
    except FormatError as e:
        warnings.warn(f"{e}; compiling the sparsity the weights have, not the spec's", stacklevel=3)


def _partitioned(model_or_onnx_path: Any, example_input: Any, build) -> "PartitionedModel":
    """The fallback (compiler/fallback.py) for a model ``capture`` refused."""
    from .fallback import compile_onnx, compile_torch

    if isinstance(model_or_onnx_path, torch.nn.Module):
        x = torch.as_tensor(example_input) if isinstance(example_input, np.ndarray) else example_input
        return compile_torch(model_or_onnx_path, x, capture, build)
    return compile_onnx(model_or_onnx_path, capture, build)


def compile(model_or_onnx_path: Any, example_input: Any = None, *, threads: int | None = None,
            tune: bool = False, cache_dir: str | os.PathLike | None = None,
            target: str | Target | None = None,
            strict: bool = False) -> "CompiledModel | OpenCLModel | PartitionedModel":
    """Compile a (pattern-sparse or dense) CNN to native code.

    ``model_or_onnx_path``: an ``nn.Module`` (traced with torch.fx on ``example_input``, a
    (N, C, H, W) tensor; N does not matter) or the path of an ONNX file. Sparsity is read from
    the weights. ``threads``: OpenMP threads per call (default: the CPUs this process may use).
    ``tune``: measure candidate schedules per layer on this machine or device (slower compile,
    stored in the manifest). ``cache_dir``: where built libraries are cached (default
    $PATSPARSE_CACHE or ~/.cache/patsparse). ``target``: a target name or Target
    (``target.known_targets()``) whose code runs here: a CPU target (default this host; e.g.
    "generic" for portable vector code; other machines: ``export``) gives a CompiledModel,
    "opencl" (or ``opencl.opencl_target(device)``) an OpenCLModel on an OpenCL device (the
    first GPU, else the first device; $PATSPARSE_OPENCL_DEVICE picks another; ``threads`` and
    ``cache_dir`` do not apply). Either is called the same way: ``y = cm(x)``, ``cm.save(dir)``.
    The input normalisation a model states (``input_normalization``) goes into the manifest:
    the compiled model computes on normalised input, and ``cm.manifest["normalization"]`` says
    which. A ``QuantizedModel`` (``patsparse.quantize``) compiles to int8 kernels that compute
    exactly what it computes (``tune`` does not apply; docs/COMPILER.md, "int8 inference").
    ``strict``: an op the compiler cannot generate is an UnsupportedError naming it; otherwise
    (CPU targets) it runs in PyTorch, or ONNX Runtime for an ONNX file, between compiled
    segments, with a warning: a ``fallback.PartitionedModel`` whose ``report()`` says what fell
    back and its share of the latency.
    """
    if getattr(model_or_onnx_path, "is_quantized_patsparse", False) is True:  # ps.quantize's result
        from .int8.build import compile_quantized

        return compile_quantized(model_or_onnx_path, example_input, threads=threads, cache_dir=cache_dir,
                                 target=target)
    t = get_target(target)  # before the capture: a bad name is the first error
    _warn_spec_mismatch(model_or_onnx_path)
    if t.kind == "opencl":  # the one dispatch on the target's kind
        from .opencl import build_opencl  # needs pyopencl (optional) only when used

        g = capture(model_or_onnx_path, example_input)
        return build_opencl(g, target=t, tune=tune, origin=getattr(g, "origin", ""),
                            normalization=input_normalization(model_or_onnx_path, g.input_shape[0]))
    t = runnable_here(t)
    try:
        g = capture(model_or_onnx_path, example_input)
    except UnsupportedError:
        if strict:
            raise
        return _partitioned(model_or_onnx_path, example_input, lambda g: build_from_graph(
            g, threads=threads, tune=tune, cache_dir=cache_dir, origin=getattr(g, "origin", ""), target=t))
    norm = input_normalization(model_or_onnx_path, g.input_shape[0])
    return build_from_graph(g, threads=threads, tune=tune, cache_dir=cache_dir,
                            origin=getattr(g, "origin", ""), target=t, normalization=norm)
