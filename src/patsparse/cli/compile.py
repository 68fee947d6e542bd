"""``patsparse compile SRC -o DIR``: a pruned (or dense) model to a compiled model directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import InputError
from .options import input_shape as input_shape_of
from .options import shape_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile", help="compile a model to pattern-specialised native code",
        description="Capture SRC (a model saved by patsparse.save / patsparse train, or an ONNX "
                    "file), fold and fuse it, read the sparsity from its weights, generate C per "
                    "layer, build it, and write a compiled model directory that `patsparse run` "
                    "and patsparse.load open.",
        epilog="Examples: patsparse compile runs/r18_8x -o r18.compiled | "
               "patsparse compile my_model.pats --input-shape 3,32,32 -o my.compiled | "
               "patsparse compile model.onnx -o model.compiled --tune")
    p.add_argument("src", help="saved patsparse model directory or .onnx file")
    p.add_argument("-o", "--out", required=True, help="output directory for the compiled model")
    p.add_argument("--input-shape", type=shape_arg, help="C,H,W of one input image (default: the shape the saved "
                   "model records; ONNX files carry their own)")
    p.add_argument("--threads", type=int, help="OpenMP threads per call (default: all usable CPUs)")
    p.add_argument("--tune", action="store_true", help="measure schedules per layer on this machine")
    p.add_argument("--target", default="native",
                   help="native (default: this CPU), generic, x86-64-avx2, ... (a CPU this machine runs), or "
                        "opencl: OpenCL kernels on the first GPU, else the first OpenCL device "
                        "($PATSPARSE_OPENCL_DEVICE picks another)")
    p.add_argument("--cache-dir", help="build cache (default $PATSPARSE_CACHE or ~/.cache/patsparse)")
    p.set_defaults(func=run)


def load_source(src: Path, given_shape: tuple[int, ...] | None) -> tuple[Any, Any]:
    """(model or ONNX path, example input or None) for a SRC argument of compile and export."""
    import torch

    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if src.suffix.lower() == ".onnx":
        return src, None
    from ..serialize import load

    model = load(src)
    if getattr(model, "is_compiled_patsparse", False):
        raise InputError(f"{src} is already a compiled model; give the model it was compiled from")
    return model, torch.zeros(1, *input_shape_of(model, given_shape, str(src)))


def run(args: argparse.Namespace) -> int:
    from ..compiler.api import compile as ps_compile

    from ..compiler.target import get_target

    target = get_target(args.target)  # a bad name is the first error, before the model loads
    src = Path(args.src)
    t0 = time.perf_counter()
    model, example = load_source(src, args.input_shape)
    cm = ps_compile(model, example, threads=args.threads, tune=args.tune, cache_dir=args.cache_dir,
                    target=target)
    out = cm.save(args.out)
    if hasattr(cm, "report"):  # ops fell back to PyTorch / ONNX Runtime (saved as ONNX, run by ONNX Runtime)
        print(cm.report())
        print(f"compiled {src} -> {out} in {time.perf_counter() - t0:.1f} s with a fallback; input "
              f"{cm.input_shape}")
        return 0
    kinds: dict[str, int] = {}
    for layer in cm.manifest["layers"]:
        kinds[layer["kernel"]] = kinds.get(layer["kernel"], 0) + 1
    print(f"compiled {src} -> {out} in {time.perf_counter() - t0:.1f} s: "
          f"{', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}; input {cm.input_shape}, "
          f"output {cm.output_shape}, {runs_on(cm)}")
    return 0


def runs_on(cm: Any) -> str:
    """What a compiled model runs on, for the summary lines of compile and run."""
    if not hasattr(cm, "manifest"):  # a PartitionedModel (compiler/fallback.py)
        return f"{len(cm.segments)} segments, {len(cm.fallback_ops)} ops in {cm.engine}"
    if "device" in cm.manifest:  # an OpenCL model (compiler/opencl)
        return f"OpenCL device {cm.manifest['device']!r}"
    return f"{cm.threads} threads, {cm.manifest['vl']}-float vectors"
