"""``patsparse bench MODEL``: the model in every available engine, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .options import looks_like_path, shape_arg


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.engines import ENGINES

    p = sub.add_parser(
        "bench", help="time a model in patsparse and peer engines side by side",
        description="Run MODEL in every available engine in one run, interleaved after warm-up; "
                    "check each engine's output against PyTorch before timing; print median, "
                    "p90 and p99 latency, speed-ups, max abs error, peak memory and model size.",
        epilog="Examples: patsparse bench vgg16_bn --rate 8 --batch 1 --threads 2 | "
               "patsparse bench model.pats --input-shape 3,32,32 | patsparse bench model.onnx "
               "--engines onnxruntime,openvino")
    p.add_argument("model", help="a saved patsparse model, a zoo name (with --rate), or an .onnx file")
    p.add_argument("--rate", type=float, help="zoo models: pattern + connectivity compression rate "
                   "(2.25 = patterns only; omit for dense)")
    p.add_argument("--variant", default="cifar", choices=["cifar", "imagenet"],
                   help="zoo models: 32x32 CIFAR or 224x224 ImageNet input (default cifar)")
    p.add_argument("--width", type=float, default=1.0, help="zoo models: channel width multiplier")
    p.add_argument("--input-shape", type=shape_arg, help="C,H,W for a saved model that does not record it")
    p.add_argument("--engines", help=f"comma-separated subset of: {', '.join(ENGINES)} (default: all)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50, help="timed calls per engine (default 50)")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="sleep this long after each timed call, as a video loop waits for its next "
                        "frame (threads go idle between calls; p99 shows the cost of waking them)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per engine first (default 5)")
    p.add_argument("--time-limit", type=float, default=120.0,
                   help="timed seconds per engine; a slower engine stops early with fewer samples")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds any one engine request may take before the engine is killed")
    p.add_argument("--patsparse-waits", choices=["default", "passive"], default="default",
                   help="OpenMP thread waits of patsparse's worker: passive is robust on a machine "
                        "other jobs keep busy, default (spin, then sleep) is faster on a quiet one")
    p.add_argument("--tvm-budget", type=float, default=0.0,
                   help="seconds of MetaSchedule tuning for TVM (0: untuned, labelled so)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="max |y - ref| / max |ref| for an engine's output to count as correct")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON")
    p.add_argument("--plot", metavar="PNG", help="write a bar chart of the latencies")
    p.add_argument("--workdir", help="keep converted models and worker logs here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import report
    from ..bench.harness import run_bench
    from ..bench.model import BenchModel

    if looks_like_path(args.model) and not Path(args.model).expanduser().exists():
        raise InputError(f"{args.model}: no such file or directory (expected a saved model directory, "
                         "an .onnx file, or a zoo name)")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else None
    if args.tvm_budget < 0:
        raise InputError(f"--tvm-budget must be >= 0 seconds, got {args.tvm_budget}")
    model = BenchModel.from_spec(args.model, rate=args.rate, variant=args.variant, width=args.width,
                                 input_shape=args.input_shape)
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    result = run_bench(model, engines, batch=args.batch, threads=args.threads, repeats=args.repeats,
                       warmup=args.warmup, timeout=args.timeout + args.tvm_budget, gap_ms=args.gap_ms,
                       tolerance=args.tolerance, workdir=args.workdir, time_limit=args.time_limit,
                       options={"tvm_budget": args.tvm_budget, "patsparse_waits": args.patsparse_waits},
                       log=log)
    print(report.header(result))
    print()
    print(report.table(result))
    matrix = report.speedup_matrix(result)
    if matrix:
        print()
        print(matrix)
    if args.json:
        report.write_result_json(result, args.json)
    if args.plot:
        report.bar_chart(result, args.plot)
    return 0 if result.ok() else 1
