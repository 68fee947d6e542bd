"""Speed of patsparse's compiled models against ONNX Runtime and OpenVINO (f32), side by side.

Three parts, all batch 1, fp32, the same thread count everywhere:
  1. Whole models (the issue's targets): VGG-16-BN CIFAR 32x32 at 8x and at pattern-only 2.25x,
     ResNet-18 ImageNet 224x224 at 8x, MobileNet-V2 ImageNet dense. Every engine runs the SAME
     pruned model (the dense engines get it with its zeros, as an ONNX file), each engine in its
     own worker process with its default thread waits, as a user would run it (patsparse.bench).
  2. Per-layer table: every pattern-sparse 3x3 conv of VGG-16 CIFAR at 8x as a one-layer model
     (conv + bias + ReLU) in each engine: time, speed-up, and useful GFLOP/s (ours: the MACs it
     really computes; the dense engines: the dense MACs), with the FLOP-count ideal beside it.
  3. Compile time of ResNet-18 ImageNet at 8x: cold (empty build cache) and cached.
Each engine's output is checked against PyTorch before timing. Timing: warm-up, then rounds in
rotated engine order, each round a block of calls per engine; the table reports the median per
call, so machine-load drift hits every engine alike. Weights are random (pattern
projection of a randomly initialised model): speed does not depend on their values.

Thread waits in parts 2 and 3 (all engines in this one process): OMP_WAIT_POLICY=passive and ORT
spinning off by default, so the engines' thread pools do not steal each other's cores between
blocks; --spin lets everyone spin. With --clock cpu the per-layer table holds process CPU time
per call instead of latency (see interleaved()).

Usage: python benchmarks/layers.py [--threads 2] [--rounds 9] [--quick] [--spin] [--clock wall|cpu]
       [--skip-layers] [--skip-compile] [--out docs/bench/layers.md]
"""

from __future__ import annotations

import os
import sys

SPIN = "--spin" in sys.argv
CLOCK = "wall"  # set from --clock in main()
from patsparse.cli.train import CALMED  # noqa: E402  (does not load torch)

if "OMP_WAIT_POLICY" not in os.environ:  # for the in-process per-layer table; marked so the
    os.environ["OMP_WAIT_POLICY"] = "active" if SPIN else "passive"  # whole-model workers drop it
    os.environ[CALMED] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import patsparse as ps  # noqa: E402
from patsparse.bench.harness import run_bench  # noqa: E402
from patsparse.bench.model import BenchModel  # noqa: E402
from patsparse.models import get  # noqa: E402
from patsparse.pruning.projection import project_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import core_to_core_ns  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def onnx_export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17)
    return path


def ort_runner(path: Path, threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.add_session_config_entry("session.intra_op.allow_spinning", "1" if SPIN else "0")
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def ov_runner(path: Path, threads: int):
    import openvino as ov

    c = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    req, out = c.create_infer_request(), c.output(0)
    return lambda x: req.infer({0: x})[out]


def interleaved(fns: dict, x: np.ndarray, rounds: int, block_s: float = 0.05) -> dict[str, float]:
    """Median seconds per call of each engine, rounds in rotated order after warm-up.

    CLOCK "wall" is latency; "cpu" is process CPU time per call (all threads, so about threads x
    latency when threads are busy): on a machine shared with other jobs it counts the work an
    engine does and not the time it waited for a core, so it stays comparable when wall time
    does not.
    """
    clock = time.process_time if CLOCK == "cpu" else time.perf_counter
    calls = {}
    for k, f in fns.items():
        for _ in range(3):
            f(x)
        t0 = time.perf_counter()
        f(x)
        calls[k] = max(1, int(block_s / max(time.perf_counter() - t0, 1e-6)))
    per = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = clock()
            for _ in range(calls[k]):
                fns[k](x)
            per[k].append((clock() - t0) / calls[k])
    return {k: float(np.median(v)) for k, v in per.items()}


def check(name: str, got: np.ndarray, want: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(np.asarray(got) - want).max())
    if err > 1e-3 * scale:
        raise SystemExit(f"{name}: output differs from PyTorch (max abs error {err}, scale {scale})")


def engines_for(model: nn.Module, x: torch.Tensor, threads: int, work: Path, tag: str):
    """(runners by engine, compiled model): every engine on the same model, checked first."""
    cm = ps.compile(model, x, threads=threads)
    path = onnx_export(model, x, work / f"{tag}.onnx")
    fns = {"patsparse": cm.run_numpy, "onnxruntime": ort_runner(path, threads),
           "openvino": ov_runner(path, threads)}
    xn = x.numpy()
    with torch.no_grad():
        want = model(x).numpy()
    for k, f in fns.items():
        check(f"{tag} / {k}", f(xn), want)
    return fns, cm


def zoo(name: str, variant: str, rate: float | None) -> nn.Module:
    torch.manual_seed(0)
    m = get(name, variant=variant).eval()
    for mod in m.modules():  # non-trivial BN so folding is exercised
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
    if rate:
        project_model(m, rate=rate)
    return m


MODELS = [  # (label, zoo name, variant, rate or None for dense, input size, target speed-up, against)
    # issue 4: the pruned models against the faster of ONNX Runtime and OpenVINO, MobileNet-V2
    # (dense) "no slower than 1.25x ONNX Runtime"; the table shows both references for every row
    ("VGG-16-BN CIFAR, 8x", "vgg16_bn", "cifar", 8.0, 32, 3.5, "best"),
    ("VGG-16-BN CIFAR, pattern-only 2.25x", "vgg16_bn", "cifar", 2.25, 32, 1.3, "best"),
    ("ResNet-18 ImageNet, 8x", "resnet18", "imagenet", 8.0, 224, 3.0, "best"),
    ("MobileNet-V2 ImageNet, dense", "mobilenet_v2", "imagenet", None, 224, 1 / 1.25, "onnxruntime"),
]


def whole_models(args) -> list[str]:
    """The issue's targets, measured the way a user runs each engine: every engine in its own
    worker process with its own default thread waits (patsparse.bench's harness), interleaved,
    medians. The passive waits this script sets for its in-process per-layer table are dropped
    for the workers (they would cost every engine a thread wake-up per parallel region)."""
    rows = ["| model | patsparse ms | ONNX Runtime ms | OpenVINO f32 ms | speed-up vs ORT | speed-up vs best "
            "| target | met | core-to-core ns before / after |", "|---|---|---|---|---|---|---|---|---|"]
    for label, name, variant, rate, size, target, against in MODELS[: 1 if args.quick else None]:
        c2c_before = core_to_core_ns()
        res = run_bench(BenchModel.from_zoo(name, rate=rate, variant=variant),
                        ["patsparse", "onnxruntime", "openvino"], threads=args.threads,
                        repeats=max(30, 10 * args.rounds), log=lambda s: None)
        t = {e.name: e.median_ms for e in res.ok()}
        if len(t) < 3:
            raise SystemExit(f"{label}: an engine did not run: "
                             + "; ".join(f"{e.name} {e.status} {e.reason}" for e in res.engines if e.status != "ok"))
        vs = {"onnxruntime": t["onnxruntime"] / t["patsparse"],
              "best": min(t["onnxruntime"], t["openvino"]) / t["patsparse"]}
        ref = "vs best" if against == "best" else "vs ORT"
        rows.append(f"| {label} | {t['patsparse']:.3f} | {t['onnxruntime']:.3f} | {t['openvino']:.3f} | "
                    f"{vs['onnxruntime']:.2f}x | {vs['best']:.2f}x | >= {target:.2f}x {ref} | "
                    f"{'yes' if vs[against] >= target else '**no**'} | "
                    f"{c2c_before:.0f} / {core_to_core_ns():.0f} |")
        print(rows[-1], flush=True)
    return rows


def layer_table(args, work: Path) -> list[str]:
    m = zoo("vgg16_bn", "cifar", 8.0)
    u = "CPU us" if CLOCK == "cpu" else "us"
    rows = [f"| layer | shape | ours {u} | ORT {u} | OV {u} | speed-up vs best | MAC ideal | ours useful GF/s | "
            "ORT GF/s | OV GF/s | schedule |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    convs = [(n, c) for n, c in m.named_modules() if isinstance(c, nn.Conv2d)]
    H = 32
    shapes = []
    for n, c in convs:  # spatial size at each conv: VGG halves it after each stage's last conv
        shapes.append((n, c, H))
        nxt = dict(m.named_modules()).get(n.rsplit(".", 1)[0] + "." + str(int(n.rsplit(".", 1)[1]) + 3))
        if isinstance(nxt, nn.MaxPool2d):
            H //= 2
    for n, c, h in shapes[: 3 if args.quick else None]:
        w = c.weight.detach()
        if (w == 0).sum() == 0:
            continue  # the dense first layer
        layer = nn.Sequential(nn.Conv2d(c.in_channels, c.out_channels, 3, padding=1), nn.ReLU()).eval()
        with torch.no_grad():
            layer[0].weight.copy_(w)
            layer[0].bias.uniform_(-0.1, 0.1)
        x = torch.randn(1, c.in_channels, h, h)
        fns, cm = engines_for(layer, x, args.threads, work, "layer_" + n.replace(".", "_"))
        t = interleaved(fns, x.numpy(), args.rounds, block_s=0.03)
        info = cm.manifest["layers"][0]
        dense = 2 * c.in_channels * c.out_channels * 9 * h * h
        best = min(t["onnxruntime"], t["openvino"])
        sched = {k: v for k, v in info["schedule"].items() if k != "vl"}
        rows.append(f"| {n} | {c.in_channels}->{c.out_channels} @{h}x{h} | {t['patsparse'] * 1e6:.1f} | "
                    f"{t['onnxruntime'] * 1e6:.1f} | {t['openvino'] * 1e6:.1f} | {best / t['patsparse']:.2f}x | "
                    f"{dense / info['flops']:.2f}x | {info['flops'] / t['patsparse'] / 1e9:.1f} | "
                    f"{dense / t['onnxruntime'] / 1e9:.1f} | {dense / t['openvino'] / 1e9:.1f} | {sched} |")
        print(rows[-1], flush=True)
    return rows


def compile_times(args) -> list[str]:
    m = zoo("resnet18", "imagenet", 8.0)
    x = torch.zeros(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        ps.compile(m, x, threads=args.threads, cache_dir=cache)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        ps.compile(m, x, threads=args.threads, cache_dir=cache)
        warm = time.perf_counter() - t0
    return ["| model | cold (empty cache) s | cached s | target |", "|---|---|---|---|",
            f"| ResNet-18 ImageNet 8x | {cold:.1f} | {warm:.2f} | < 60 s cold, < 1 s cached |"]


NOTES = [
    "### Where targets are missed, and why", "",
    "- docs/COMPILER.md (\"Known limits\") explains these points. These tables come from a 2-vCPU "
    "AMD EPYC VM with AVX-512 (FMA peak ~240 GFLOP/s per core, 470 on two, docs/bench/ceiling.md). "
    "Targets are reported as missed unless every run meets them; the misses come from the host more "
    "than from the code.",
    "- Host placement (the last column): the two vCPUs move between one core complex (25-60 ns "
    "core to core) and two (~200 ns). Apart, the compiled models' two-thread latency grows (ResNet-18 "
    "8x: 2.4 -> 2.7 ms in one `benchmarks/ab_models.py` run, 2.2 -> 3.4 ms in another) while their "
    "one-thread latency and ONNX Runtime's stay put. docs/bench/placement.md repeats the harness "
    "and groups rounds by placement. A probe only sees the placement before and after a row.",
    "- Slow spells with the vCPUs together: other tenants' use of the shared L3 slows what streams "
    "through it (a two-thread read of 28 MB: 161 GB/s at one time, 76-93 at another). Software "
    "prefetch of the weight streams and of the next channels' inputs (`wpf`, `ipf`) makes the "
    "compiled models 1.02-1.38x faster with the vCPUs together (mostly in such a spell) and "
    "1.09-1.25x apart (docs/bench/ab/*-dd697bb-10b01d5.md).",
    "- VGG-16 at pattern-only 2.25x: its channel-major layers stream 4.7 MB of weights each per "
    "image (~28 MB for the model, 58 MB for the dense engines), and the weights stay fp32 so the "
    "numbers match PyTorch.",
    "- ResNet-18 ImageNet: the dense 7x7 stem (fused with its max pool) is 118 M of the 347 M MACs "
    "left at 8x and runs at ~90% of the FMA peak.",
    "- MobileNet-V2 (dense): the closest target. Its 112x112 stage is bound by activation traffic "
    "(the 16->96 expand writes 4.8 MB that the stride-2 depthwise reads back); fusing the two over "
    "row bands is the next step and is not done.", ""]


def header(args) -> list[str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    from patsparse.compiler.target import detect

    isa = detect().name
    import onnxruntime
    import openvino

    return ["## Compiled pattern-sparse models vs ONNX Runtime and OpenVINO (benchmarks/layers.py)", "",
            f"- date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}",
            f"- machine: {cpu}, {os.cpu_count()} CPUs, vector ISA used: {isa}; {platform.python_version()}",
            f"- engines: ONNX Runtime {onnxruntime.__version__}, OpenVINO {openvino.__version__} "
            "(INFERENCE_PRECISION_HINT f32, LATENCY, 1 stream)",
            f"- batch 1, fp32, {args.threads} threads, {args.rounds} interleaved rounds, medians of "
            f"{'process CPU time per call (all threads)' if CLOCK == 'cpu' else 'wall-clock latency'}; "
            f"thread waits in the per-layer table (one process): "
            f"{'spinning' if SPIN else 'passive (OMP_WAIT_POLICY=passive, ORT spinning off)'}",
            f"- command: `python benchmarks/layers.py {' '.join(sys.argv[1:])}`",
            f"- machine load when the run started (/proc/pressure/cpu, 'some' = share of time runnable "
            f"tasks waited for a CPU): {_pressure()}", ""]


def _pressure() -> str:
    try:
        return open("/proc/pressure/cpu").readline().strip()
    except OSError:
        return "not available"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="first model and three layers only")
    ap.add_argument("--spin", action="store_true", help="let every engine's threads spin")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: latency (default); cpu: process CPU time per call, robust to other "
                         "jobs on the machine")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "layers.md"))
    args = ap.parse_args()
    global CLOCK
    CLOCK = args.clock
    torch.set_num_threads(args.threads)
    lines = header(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lines += ["### Whole models", "",
                  "Each engine in its own worker process with its default thread waits "
                  "(`patsparse.bench` harness), interleaved, medians of wall-clock latency.", ""]
        lines += whole_models(args) + [""]
        if not args.skip_layers:
            lines += ["### Per layer: VGG-16-BN CIFAR at 8x, each 3x3 pattern conv (+bias+ReLU) alone", "",
                      "useful GF/s: ours counts the MACs it computes (4 per pattern kernel per output), "
                      "the dense engines the dense MACs; MAC ideal = dense MACs / ours.", ""]
            lines += layer_table(args, work) + [""]
    if not args.skip_compile:
        lines += ["### Compile time", ""] + compile_times(args) + [""]
    lines += NOTES
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
