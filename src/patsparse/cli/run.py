"""``patsparse run DIR``: run a compiled model on an .npy input, or time it on random input."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a compiled model (on an .npy file, or timed on random input)",
        description="Open a compiled model directory (its code is regenerated from its graph and built, "
                    "or taken from the build cache). "
                    "With --input, run it on that (N, C, H, W) float array and write --output; "
                    "without, time it on random input and print the median latency.",
        epilog="Examples: patsparse run vgg.compiled --input x.npy --output y.npy | "
               "patsparse run vgg.compiled --batch 1 --repeats 100")
    p.add_argument("model", help="compiled model directory (from `patsparse compile`)")
    p.add_argument("--input", help=".npy file with an (N, C, H, W) float array")
    p.add_argument("--output", help=".npy file for the result (with --input)")
    p.add_argument("--batch", type=int, default=1, help="timing: images per call (default 1)")
    p.add_argument("--repeats", type=int, default=50, help="timing: timed calls (default 50)")
    p.add_argument("--threads", type=int, help="override the compiled thread count")
    p.add_argument("--profile", action="store_true",
                   help="timing: also print each layer's median time, its share of the measured "
                        "latency, and GFLOP/s")
    p.add_argument("--normalize", action="store_true",
                   help="apply the model's input normalisation (x - mean) / std, from its manifest, to "
                        "--input first (for raw images in [0, 1])")
    p.add_argument("--trust-native-code", action="store_true",
                   help="use the library inside the directory instead of building it from the graph "
                        "(for a machine without a C compiler; only for a directory you trust)")
    p.set_defaults(func=run)


def check_compiled_dir(text: str) -> None:
    """Name what ``text`` is when it is not a compiled model directory, before loading it."""
    from ..serialize import MANIFEST, META

    path = Path(text)
    if not path.exists():
        raise InputError(f"{text}: no such compiled model directory")
    if path.is_dir() and not (path / MANIFEST).is_file() and (path / META).is_file():
        raise InputError(f"{text} is a pruned (or trained) PyTorch model, not a compiled one: compile it "
                         f"first, e.g. `patsparse compile {text} -o {path.name}.compiled`, then run that")


def print_profile(rows: list[dict], latency_ms: float) -> None:
    """Each layer's median ms as a share of the whole call's median latency (not of the layer
    sum), and what the call spends outside the layers (entry, copies, thread hand-offs)."""
    width = max(len("outside layers"), *(len(r["name"]) for r in rows))
    print(f"{'layer':<{width}}  {'kernel':<12} {'ms':>8} {'latency':>8} {'GFLOP/s':>8}")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['kernel']:<12} {r['ms']:8.3f} {r['ms'] / latency_ms:8.1%} "
              f"{r['gflops']:8.1f}")
    rest = latency_ms - sum(r["ms"] for r in rows)
    print(f"{'outside layers':<{width}}  {'':<12} {rest:8.3f} {rest / latency_ms:8.1%}")


def run(args: argparse.Namespace) -> int:
    from ..compiler.fallback_io import is_partitioned_dir, load_partitioned
    from ..compiler.opencl import is_opencl_dir
    from ..compiler.opencl import load as load_opencl
    from ..compiler.package import load_compiled
    from .compile import runs_on

    check_compiled_dir(args.model)
    if is_opencl_dir(args.model):  # built for the OpenCL device at hand
        if args.threads or args.profile:
            raise InputError(f"{args.model} is an OpenCL model: --threads and --profile are for CPU-compiled ones")
        cm = load_opencl(args.model)
    elif is_partitioned_dir(args.model):  # compiled with a fallback: its report stands for the profile
        if args.profile or args.trust_native_code:
            raise InputError(f"{args.model} has ops in ONNX Runtime (compiled with a fallback): --profile and "
                             "--trust-native-code are for models compiled whole")
        cm = load_partitioned(args.model, threads=args.threads)
        print(cm.report())
    else:
        cm = load_compiled(args.model, threads=args.threads, trust_native_code=args.trust_native_code)
    norm = getattr(cm, "manifest", {}).get("normalization")
    if args.normalize and norm is None:
        raise InputError(f"{args.model}: --normalize, but the model states no input normalisation")
    if args.input:
        try:
            x = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FormatError(f"{args.input}: not a readable .npy array ({e})") from e
        if x.dtype.kind not in "fiub":
            raise InputError(f"{args.input}: array of dtype {x.dtype}; a model takes numbers")
        x = np.asarray(x, dtype=np.float32)
        if norm is not None and args.normalize:
            if x.ndim != 4 or x.shape[1] != len(norm["mean"]):
                raise InputError(f"{args.input}: shape {x.shape} is not (N, {len(norm['mean'])}, H, W)")
            x = (x - np.float32(norm["mean"])[:, None, None]) / np.float32(norm["std"])[:, None, None]
        elif norm is not None:
            print(f"note: this model takes input normalised with mean {norm['mean']} and std {norm['std']}; "
                  "the input is used as given (pass --normalize for raw images in [0, 1])")
        y = cm(x)
        if args.output:
            np.save(args.output, y)
            print(f"wrote {args.output}: shape {y.shape}")
        else:
            print(f"output shape {y.shape}; argmax per image: {y.reshape(len(y), -1).argmax(1).tolist()}")
        return 0
    if args.batch < 1 or args.repeats < 1:
        raise InputError("--batch and --repeats must be positive")
    x = np.random.default_rng(0).standard_normal((args.batch, *cm.input_shape)).astype(np.float32)
    for _ in range(5):
        cm(x)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cm(x)
        times.append(time.perf_counter() - t0)
    latency_ms = float(np.median(times) * 1e3)
    print(f"{args.model}: batch {args.batch}, {runs_on(cm)}: median "
          f"{latency_ms:.3f} ms, p90 {np.percentile(times, 90) * 1e3:.3f} ms, "
          f"p99 {np.percentile(times, 99) * 1e3:.3f} ms over {args.repeats} calls",
          flush=True)
    if args.profile:
        print_profile(cm.profile(x, repeats=args.repeats), latency_ms)
    return 0
