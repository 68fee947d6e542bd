"""``patsparse export SRC -o DIR --target T``: a model as a standalone C project for a target."""

from __future__ import annotations

import argparse
from pathlib import Path

from .compile import load_source
from .options import shape_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a standalone C project (no Python at run time) for a target",
        description="Capture SRC (a model saved by patsparse.save / patsparse train, or an ONNX file), "
                    "generate its C for TARGET and write a project: model.h (one entry point), model.c, "
                    "weights.bin, a Makefile that builds with the target's compiler, and run_model.",
        epilog="Examples: patsparse export runs/vgg/model.pats --input-shape 3,32,32 --target "
               "aarch64-linux-gnu -o vgg-arm && make -C vgg-arm | patsparse export model.onnx -o out")
    p.add_argument("src", help="saved patsparse model directory or .onnx file")
    p.add_argument("-o", "--out", required=True, help="directory to write the project to")
    p.add_argument("--target", default="native",
                   help="target name (native, x86-64-avx512, x86-64-avx2, aarch64-linux-gnu, generic, ...)")
    p.add_argument("--input-shape", type=shape_arg, help="C,H,W of one input image (default: the shape the "
                   "saved model records; ONNX files carry their own)")
    p.add_argument("--threads", type=int, help="team size the default schedules are balanced for")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compiler.export import export
    from ..compiler.target import get_target

    target = get_target(args.target)  # a bad name is the first error, before the model loads
    src = Path(args.src)
    model, example = load_source(src, args.input_shape)
    out = export(model, example, args.out, target=target, threads=args.threads, overwrite=args.overwrite)
    print(f"exported {src} -> {out} for {target.name}: build with `make -C {out}`, "
          f"run with `{out}/run_model INPUT OUTPUT [REPEATS]`")
    return 0
