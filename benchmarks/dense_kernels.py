"""Per-kernel speed of the dense generators against PyTorch (oneDNN) and ONNX Runtime.

Layer shapes: every distinct MobileNet-V2 (224x224) layer, ResNet-18's stem, max pool, 1x1
stride-2 downsamples and dense 3x3 layers, VGG's first conv (ImageNet and CIFAR sizes), VGG-16-
CIFAR's 3x3 layers, and the classifiers. With --tune, a 3x3 stride-1 layer's candidates include
both Winograd tile sizes and the best implicit-GEMM tiles (the default is the cost model's pick).
Batch 1, fp32, the same thread count for all engines. Rounds are interleaved (each round times a
block of calls per engine, in rotated order) and the table reports medians,
so machine-load drift hits every engine alike. Each of our kernels is checked against PyTorch
before it is timed. ORT times include its per-run overhead (a few microseconds, visible on the
smallest layers); ORT is run with spinning threads off so it does not steal cores from the
others between its blocks.

Usage:  python -m benchmarks.dense_kernels [--threads 2] [--rounds 7] [--tune] [--quick]
        [--clock wall|cpu|cycles] [--spin] [--only SUBSTRING] [--out docs/bench/dense.md]
"""

from __future__ import annotations

import os
import sys

# Thread wait policy, the same for every engine, fixed before any OpenMP runtime loads (torch's
# and ours read it once at start-up). Blocking (the default here) keeps a loaded, shared machine
# from turning spin-waits into stolen time slices; --spin lets all engines spin instead.
SPIN = "--spin" in sys.argv
os.environ.setdefault("OMP_WAIT_POLICY", "active" if SPIN else "passive")

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from benchmarks._clock import CLOCKS, get_clock
from benchmarks._report import BENCH, provenance

from patsparse.bench.engines import prepare_here
from patsparse.bench.model import BenchModel
from patsparse.bench.timing import interleave
from patsparse.compiler.codegen import conv_pool, dense_conv, depthwise, gemm, pool
from patsparse.compiler.target import detect
from patsparse.compiler.codegen.ctest import KernelRunner, from_layout, layout_buffer, to_layout
from patsparse.compiler.layout import Layout

LOAD_START = os.getloadavg()[0]


@dataclass
class Spec:
    label: str
    kind: str          # conv | convpool (+ ReLU + 3x3/2 max pool, fused) | dw | maxpool | gap | linear
    cin: int
    cout: int
    H: int
    k: int = 1
    stride: int = 1
    padding: int = 0
    act: str = "none"
    count: int = 1     # how many times the shape occurs in its model (for the model sums)


def mobilenet_v2_specs() -> list[Spec]:
    """Every distinct MobileNet-V2 layer (width 1.0, 224x224), with its count."""
    out = [Spec("mbv2 conv0 3->32 s2", "conv", 3, 32, 224, 3, 2, 1, "relu6")]
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    cin, H = 32, 112
    seen: dict[tuple, Spec] = {}

    def add(s: Spec) -> None:
        key = (s.kind, s.cin, s.cout, s.H, s.k, s.stride, s.act)
        if key in seen:
            seen[key].count += 1
        else:
            seen[key] = s
            out.append(s)

    for t, c, n, s in cfg:
        for i in range(n):
            stride = s if i == 0 else 1
            hid = cin * t
            if t != 1:
                add(Spec(f"mbv2 pw {cin}->{hid} @{H}", "conv", cin, hid, H, act="relu6"))
            add(Spec(f"mbv2 dw {hid} s{stride} @{H}", "dw", hid, hid, H, 3, stride, 1, "relu6"))
            H = H // stride
            add(Spec(f"mbv2 pw {hid}->{c} @{H}", "conv", hid, c, H))
            cin = c
    add(Spec("mbv2 pw 320->1280 @7", "conv", 320, 1280, 7, act="relu6"))
    add(Spec("mbv2 gap 1280 @7", "gap", 1280, 1280, 7))
    add(Spec("mbv2 fc 1280->1000", "linear", 1280, 1000, 1))
    return out


def other_specs() -> list[Spec]:
    return [
        Spec("r18 stem 7x7 3->64 s2", "conv", 3, 64, 224, 7, 2, 3, "relu"),
        Spec("r18 stem + max pool (fused)", "convpool", 3, 64, 224, 7, 2, 3, "relu"),
        Spec("r18 maxpool 3x3 s2 @112", "maxpool", 64, 64, 112, 3, 2, 1),
        Spec("r18 down 1x1 64->128 s2", "conv", 64, 128, 56, 1, 2, 0),
        Spec("r18 down 1x1 128->256 s2", "conv", 128, 256, 28, 1, 2, 0),
        Spec("r18 down 1x1 256->512 s2", "conv", 256, 512, 14, 1, 2, 0),
        Spec("r18 3x3 64 @56", "conv", 64, 64, 56, 3, 1, 1, "relu"),
        Spec("r18 3x3 128 @28", "conv", 128, 128, 28, 3, 1, 1, "relu"),
        Spec("r18 3x3 256 @14", "conv", 256, 256, 14, 3, 1, 1, "relu"),
        Spec("r18 3x3 512 @7", "conv", 512, 512, 7, 3, 1, 1, "relu"),
        Spec("r18 3x3 64->128 s2 @56", "conv", 64, 128, 56, 3, 2, 1, "relu"),
        Spec("r18 fc 512->1000", "linear", 512, 1000, 1),
        Spec("vgg conv1 3->64 @224", "conv", 3, 64, 224, 3, 1, 1, "relu"),
        Spec("vgg-cifar conv1 3->64 @32", "conv", 3, 64, 32, 3, 1, 1, "relu"),
        Spec("vgg-cifar 3x3 64 @32", "conv", 64, 64, 32, 3, 1, 1, "relu"),
        Spec("vgg-cifar 3x3 64->128 @16", "conv", 64, 128, 16, 3, 1, 1, "relu"),
        Spec("vgg-cifar 3x3 128 @16", "conv", 128, 128, 16, 3, 1, 1, "relu"),
        Spec("vgg-cifar 3x3 256 @8", "conv", 256, 256, 8, 3, 1, 1, "relu", count=2),
        Spec("vgg-cifar 3x3 512 @4", "conv", 512, 512, 4, 3, 1, 1, "relu", count=2),
        Spec("vgg-cifar 3x3 512 @2", "conv", 512, 512, 2, 3, 1, 1, "relu", count=3),
    ]


ACT = {"none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6}


def torch_module(s: Spec) -> nn.Module:
    if s.kind in ("conv", "convpool"):
        op = nn.Conv2d(s.cin, s.cout, s.k, s.stride, s.padding)
    elif s.kind == "dw":
        op = nn.Conv2d(s.cin, s.cin, s.k, s.stride, s.padding, groups=s.cin)
    elif s.kind == "maxpool":
        op = nn.MaxPool2d(s.k, s.stride, s.padding)
    elif s.kind == "gap":
        op = nn.AdaptiveAvgPool2d(1)
    else:
        op = nn.Sequential(nn.Flatten(), nn.Linear(s.cin, s.cout))
    with torch.no_grad():
        for p in op.parameters():
            p.normal_(0, 0.1)
    if s.kind == "convpool":  # the ImageNet stem's pool (lowering.fuse_conv_pool)
        return nn.Sequential(op, ACT[s.act](), nn.MaxPool2d(3, 2, 1)).eval()
    return nn.Sequential(op, ACT[s.act]()).eval()


def input_shape(s: Spec) -> tuple[int, ...]:
    return (1, s.cin, s.H, s.H)


def generate(s: Spec, lin: Layout, lout: Layout, schedule: dict | None):
    common = dict(in_layout=lin, out_layout=lout, act=s.act, schedule=schedule, target=detect())
    if s.kind == "conv":
        return dense_conv.gen_conv2d("k", cin=s.cin, cout=s.cout, k=s.k, stride=s.stride,
                                     padding=s.padding, **common)
    if s.kind == "convpool":
        return conv_pool.gen_conv_maxpool("k", cin=s.cin, cout=s.cout, k=s.k, stride=s.stride,
                                          padding=s.padding, pool_k=3, pool_stride=2, pool_padding=1,
                                          **common)
    if s.kind == "dw":
        return depthwise.gen_depthwise("k", channels=s.cin, stride=s.stride, padding=s.padding,
                                       **common)
    if s.kind == "maxpool":
        return pool.gen_maxpool("k", k=s.k, stride=s.stride, padding=s.padding, **common)
    if s.kind == "gap":
        return pool.gen_global_avgpool("k", **common)
    return gemm.gen_linear("k", in_features=s.cin, out_features=s.cout, **common)


def candidate_schedules(s: Spec, lin: Layout, lout: Layout) -> list[dict | None]:
    """The layer's candidate schedules ranked as its default is chosen (the first is the default).

    Why cin and k: the ranking depends on the reduction length; without them the list is the
    one for a long 1x1 reduction, and "tuned" timed tiles ranked for another layer
    (ResNet-18's 3x3 512@7: the default is the channel-vector tile np=5, which the
    reduction-blind list ranks below four row tiles)."""
    if s.kind == "conv":  # implicit-GEMM tiles and, for 3x3 stride-1 convs, Winograd
        return dense_conv.schedules(cout=s.cout, out_layout=lout, cin=s.cin, k=s.k, padding=s.padding,
                                    stride=s.stride, in_layout=lin, target=detect())
    if s.kind == "dw":
        return depthwise.schedules(stride=s.stride, out_layout=lout)
    if s.kind == "linear":
        return gemm.schedules_linear(out_features=s.cout)
    return [None]


class Ours:
    """One of our kernels on layout buffers (input halo as the compiler would give it)."""

    def __init__(self, s: Spec, module: nn.Module, x: torch.Tensor, schedule: dict | None):
        y = module(x)
        pin = s.padding if s.kind in ("conv", "convpool", "dw", "maxpool") else 0
        if s.kind == "linear":
            lin, lout = Layout(s.cin, 1, 1, 0), Layout(s.cout, 1, 1, 0)
        else:
            lin = Layout(s.cin, s.H, s.H, pin)
            lout = Layout(y.shape[1], y.shape[2], y.shape[3], 1)
        self.lin, self.lout = lin, lout
        self.kernel = generate(s, lin, lout, schedule)
        self.runner = KernelRunner(self.kernel)
        op = module[0][1] if s.kind == "linear" else module[0]
        weight = op.weight.detach().numpy() if hasattr(op, "weight") else None
        bias = op.bias.detach().numpy() if hasattr(op, "bias") else np.zeros(1, np.float32)
        xin = x[0].numpy() if s.kind != "linear" else x[0].numpy().reshape(s.cin, 1, 1)
        self.args = (to_layout(xin, lin), layout_buffer(lout),
                     self.runner.pack(weight if weight is not None else np.zeros(0, np.float32)),
                     np.ascontiguousarray(bias, np.float32))
        self.runner(*self.args)
        got = from_layout(self.args[1], lout).reshape(y.shape)
        want = y.detach().numpy()
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
        if not err <= 1e-4:
            raise SystemExit(f"{s.label}: our kernel is wrong (relative error {err:.2e})")

    def calls(self, iters: int):
        """``iters`` calls inside one thread team (what one timed sample runs)."""
        return lambda: self.runner.time(*self.args, iters=iters)


def peers(module: nn.Module, x: torch.Tensor, threads: int, workdir: Path) -> dict:
    """PyTorch and ONNX Runtime through patsparse.bench's engines, each checked against PyTorch;
    ONNX Runtime's threads block between calls like every other engine's unless --spin."""
    xn = x.numpy()
    runners = prepare_here(["torch", "onnxruntime"], BenchModel.from_module(module, tuple(xn.shape[1:])), xn,
                           workdir, threads, {"ort_spinning": SPIN})
    want = module(x).detach().numpy()
    for name, run in runners.items():
        got = np.asarray(run(xn)).reshape(want.shape)
        assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), f"{name} output differs"
    return {"torch": runners["torch"], "ort": runners["onnxruntime"], "x": xn}


def measure(s: Spec, *, threads: int, rounds: int, tune: bool, clock, workdir: Path) -> dict:
    torch.manual_seed(0)
    module = torch_module(s)
    x = torch.randn(*input_shape(s))
    with torch.no_grad():
        ours = Ours(s, module, x, None)
        flops = ours.kernel.flops
        iters = int(np.clip(3e8 / max(flops, 1), 3, 2000))
        engines = {"ours": ours.calls(iters)}
        if tune:
            for sched in candidate_schedules(s, ours.lin, ours.lout)[1:5]:
                if sched:
                    engines[f"ours {sched}"] = Ours(s, module, x, sched).calls(iters)
        other = peers(module, x, threads, workdir)
        for name in ("torch", "ort"):
            engines[name] = lambda run=other[name], xn=other["x"]: [run(xn) for _ in range(iters)]
        # one sample = a block of ``iters`` calls; settled, in rotated order (patsparse.bench.timing)
        times = interleave(engines, rounds, warmup=0, clock=clock)
    med = {k: float(np.median(v)) / iters for k, v in times.items()}
    tuned = min((v, k) for k, v in med.items() if k.startswith("ours"))
    return {"spec": s, "flops": flops, "ours": med["ours"], "best": tuned[0], "best_name": tuned[1],
            "torch": med["torch"], "ort": med["ort"], "schedule": ours.kernel.schedule}


def header(args: argparse.Namespace) -> str:
    import onnxruntime as ort

    return (f"# Dense kernels: GFLOP/s against PyTorch (oneDNN) and ONNX Runtime\n\n"
            + "\n".join(provenance(__file__, sys.argv[1:])) + "\n"
            f"- vector width {detect().require_cpu('host').lanes} floats\n"
            f"- threads: {args.threads} (all engines), batch 1, fp32; medians of {args.rounds} "
            f"interleaved rounds; clock: {args.clock} "
            f"({CLOCKS[args.clock]}); "
            f"waiting threads {'spin' if SPIN else 'block'} in every engine "
            f"(OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})\n"
            f"- machine load (1-min load average, start / end of run): {LOAD_START:.1f} / "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; above ~{os.cpu_count()} the "
            f"absolute figures are a fraction of the machine, ratios from interleaved rounds less so\n"
            f"- onnxruntime {ort.__version__}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tune", action="store_true", help="also time the tuner's other candidates")
    ap.add_argument("--quick", action="store_true", help="a few representative layers only")
    ap.add_argument("--only", default="", help="substring filter on layer labels")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                    help="wall: elapsed time (the real figure); cpu: process CPU time with "
                         "--threads 1 (per-core efficiency); cycles: user CPU cycles with "
                         "--threads 1, figures in FLOP/cycle (the steadiest on a shared VM)")
    ap.add_argument("--spin", action="store_true",
                    help="let all engines' threads spin between parallel sections "
                         "(OMP_WAIT_POLICY=active, ORT allow_spinning=1); default: all block")
    ap.add_argument("--out", default=str(BENCH / "dense.md"))
    args = ap.parse_args()
    if args.clock != "wall" and args.threads != 1:
        ap.error(f"--clock {args.clock} needs --threads 1 (it measures one thread's work)")
    clock = get_clock(args.clock)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    specs = mobilenet_v2_specs() + other_specs()
    if args.quick:
        specs = [s for s in specs if s.label in QUICK]
    if args.only:
        specs = [s for s in specs if args.only in s.label]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for i, s in enumerate(specs):
            r = measure(s, threads=args.threads, rounds=args.rounds, tune=args.tune, clock=clock,
                        workdir=Path(work) / str(i))
            rows.append(r)
            gf = lambda t: r["flops"] / t / 1e9  # noqa: E731
            print(f"{s.label:28s} ours {gf(r['ours']):6.1f}  best {gf(r['best']):6.1f}  "
                  f"torch {gf(r['torch']):6.1f}  ort {gf(r['ort']):6.1f} "
                  f"{'FLOP/cycle' if args.clock == 'cycles' else 'GF/s'}  "
                  f"ours/ort time {r['best'] / r['ort']:.2f}", flush=True)
    write_report(rows, args)


QUICK = {"mbv2 conv0 3->32 s2", "mbv2 pw 16->96 @112", "mbv2 dw 96 s2 @112", "mbv2 pw 144->24 @56",
         "mbv2 pw 960->160 @7", "r18 stem 7x7 3->64 s2", "r18 3x3 128 @28", "r18 down 1x1 64->128 s2"}


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    lines = [header(args), "",
             "Useful GFLOP/s (2 x MACs / time; pools and GAP count one op per window element). "
             "`ours` is the default (heuristic) schedule, `tuned` the best candidate the "
             "auto-tuner would try" + ("" if args.tune else " (not run: pass --tune)") + "; "
             "`time vs ORT` is tuned time / ORT time (below 1 = faster than ORT).", "",
             "| layer | count | MFLOP | ours | tuned | torch | ORT | time vs ORT | schedule |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    tot = {"best": 0.0, "ort": 0.0, "torch": 0.0}
    for r in rows:
        s = r["spec"]
        gf = lambda t: r["flops"] / t / 1e9  # noqa: E731
        lines.append(f"| {s.label} | {s.count} | {r['flops'] / 1e6:.1f} | {gf(r['ours']):.1f} | "
                     f"{gf(r['best']):.1f} | {gf(r['torch']):.1f} | {gf(r['ort']):.1f} | "
                     f"{r['best'] / r['ort']:.2f} | {r['best_name'].replace('ours', '') or 'default'} |")
        if s.label.startswith("mbv2"):
            for k in tot:
                tot[k] += s.count * r[k]
    if tot["ort"]:
        lines += ["", f"MobileNet-V2 layer sum (each distinct layer x its count, kernels alone, no "
                      f"graph overhead): ours {tot['best'] * 1e3:.2f} ms, ORT per-layer "
                      f"{tot['ort'] * 1e3:.2f} ms, torch per-layer {tot['torch'] * 1e3:.2f} ms; "
                      f"ours / ORT = {tot['best'] / tot['ort']:.2f}. (ORT's per-layer figure "
                      f"includes one session-run overhead per layer, so the whole-model comparison "
                      f"belongs to the model benchmark.)"]
    slower = [r for r in rows if r["best"] > r["ort"]]
    lines += ["", "## How to read this", "",
              "- Each engine runs one layer alone. ORT and PyTorch pay their NCHW <-> blocked-layout "
              "reorders and per-call overhead on every call here, which flatters us on small "
              "layers; inside a whole model ORT keeps the blocked layout between layers. The "
              "model-level comparison (docs/BENCHMARKS.md) is the one that counts.",
              "- Layers where the tuned kernel is slower than ORT in this run: "
              + (", ".join(f"{r['spec'].label} ({r['best'] / r['ort']:.2f}x)" for r in slower)
                 or "none") + ".",
              "- Row-vector kernels fill only W of each vector's lanes on narrow planes (7 of 8 "
              "at 7x7 with AVX2, 7 of 16 with AVX-512); the channel-vectorised kernel (schedule "
              "`np`) avoids that and is offered to the tuner for small planes."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
