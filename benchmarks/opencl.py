"""The OpenCL target against the CPU path and ONNX Runtime: correctness everywhere, speed only
on a real GPU.

    python -m benchmarks.opencl [--model vgg16_bn --variant cifar --rate 8 --width 1 --batch 1]
                                [--device NAME] [--seconds 20] [--out FILE]

Compiles one zoo model (pattern-pruned at --rate; 1 = dense) for the OpenCL device (the first
GPU, else the first device; --device picks one) and for the CPU, checks both against PyTorch,
and, when the OpenCL device is a GPU, times OpenCL, the CPU path and ONNX Runtime (CPU)
interleaved (``patsparse.bench.timing.interleave``): blocks of calls, each after a settle pause and
one unrecorded call, median per call.
On a CPU OpenCL device (PoCL) it prints the agreement only: PoCL runs the kernels on the same
cores as the CPU path, so its times say nothing about a GPU and are not reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks._report import add_zoo_args, md_table, provenance

import patsparse as ps
from patsparse.bench.engines import prepare_here
from patsparse.bench.model import BenchModel
from patsparse.bench.timing import interleave
from patsparse.compiler.api import capture
from patsparse.compiler.opencl import build_opencl, opencl_target


def zoo_model(name: str, variant: str, width: float, rate: float) -> tuple[torch.nn.Module, int]:
    """A zoo model with random weights and BN statistics, pattern-pruned unless rate == 1."""
    from patsparse.models import get
    from patsparse.pruning.projection import project_model

    torch.manual_seed(0)
    m = get(name, num_classes=10, width=width, variant=variant).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    if rate > 1:
        project_model(m, rate=rate)
    return m, 32 if variant == "cifar" else 224


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_zoo_args(ap, rate=8.0)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", help="OpenCL device index or name substring")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args(argv)

    m, size = zoo_model(args.model, args.variant, args.width, args.rate)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    ocl = build_opencl(capture(m, torch.from_numpy(x[:1])), target=opencl_target(args.device), tune=True)
    cpu = ps.compile(m, torch.from_numpy(x[:1]))
    dev = ocl.device
    lines = [f"# OpenCL target: {args.model} ({args.variant}, width {args.width}, rate {args.rate}), "
             f"batch {args.batch}", "",
             *provenance(__file__, sys.argv[1:] if argv is None else argv), "",
             f"OpenCL device: {dev.name} ({dev.device_type}, platform {dev.platform}, {dev.compute_units} "
             f"compute units, {dev.local_mem_bytes >> 10} KiB local memory)", "",
             md_table(["path", "max abs error / max abs PyTorch output"],
                      [["OpenCL", f"{rel_error(ocl(x), want):.1e}"], ["CPU (native C)", f"{rel_error(cpu(x), want):.1e}"]]),
             ""]
    if dev.is_gpu:
        with tempfile.TemporaryDirectory() as tmp:
            ort = prepare_here(["onnxruntime"], BenchModel.from_module(m, x.shape[1:]), x, tmp, os.cpu_count() or 1)
            runners = {"OpenCL": ocl.run_numpy, "CPU (native C)": cpu.run_numpy,
                       "ONNX Runtime (CPU)": ort["onnxruntime"]}
            samples = interleave({k: lambda fn=fn: fn(x) for k, fn in runners.items()}, seconds=args.seconds,
                                 block=5)
        ms = {k: float(np.median(v)) * 1e3 for k, v in samples.items()}
        lines += [md_table(["path", "median ms per call", "vs OpenCL"],
                           [[k, f"{v:.3f}", f"{v / ms['OpenCL']:.2f}x"] for k, v in ms.items()]), ""]
    else:
        lines.append(f"The OpenCL device is a {dev.device_type}, not a GPU: no times are reported (on PoCL "
                     "the kernels share the CPU path's cores, so only their agreement with PyTorch counts).")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
