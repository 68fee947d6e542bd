"""Speed of the op set beyond the zoo: the full networks of the seven architecture families
(models/architectures.py) and their one-block nets (models/families.py) pattern-projected at 8x,
and each data-movement op alone, compiled by patsparse against ONNX Runtime and OpenVINO (f32)
on the same model, side by side (patsparse.bench.run_bench: every engine in its own worker,
outputs checked against PyTorch, interleaved rounds, medians).

For each full network the table gives the share of our latency spent in fallback segments and,
from both engines' per-op profiles (benchmarks/_op_profile.py), the op categories where we spend
more time than ONNX Runtime; for each block, its two most expensive layers with their kernels.

Usage: python -m benchmarks.ops [--threads 2] [--repeats 40] [--size 64] [--quick]
       [--only architectures|blocks|ops] [--out docs/bench/ops.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
from benchmarks import _op_profile
from benchmarks._report import BENCH, md_table, provenance

import patsparse as ps
from patsparse.bench.harness import run_bench
from patsparse.bench.model import BenchModel
from patsparse.compiler.fallback import PartitionedModel
from patsparse.models.architectures import ARCHITECTURES, build_architecture
from patsparse.models.families import FAMILIES, ChannelShuffle, build

ENGINES = ["patsparse", "onnxruntime", "openvino"]
RATE = 8.0


def single_ops(c: int) -> dict[str, nn.Module]:
    """Each data-movement op alone on a (c, H, W) input (torch.nn modules, so the workers unpickle
    them; in a Sequential, so torch.fx traces the module as one call)."""
    return {k: nn.Sequential(v) for k, v in {"reflect pad 1": nn.ReflectionPad2d(1), "nearest x2": nn.Upsample(scale_factor=2),
            "bilinear x2": nn.Upsample(scale_factor=2, mode="bilinear"), "pixel shuffle 2": nn.PixelShuffle(2),
            "channel shuffle 4": ChannelShuffle(4), "softmax (channels)": nn.Softmax(1),
            f"ConvTranspose2d {c}->{c // 2} k2 s2": nn.ConvTranspose2d(c, c // 2, 2, stride=2)}.items()}


def where_time_goes(m: nn.Module, shape: tuple[int, ...], threads: int) -> str:
    """Our two most expensive layers (kernel, share of the latency) from the compiled model's profile."""
    cm = ps.compile(m, torch.zeros(1, *shape), threads=threads, strict=True)
    prof = sorted(cm.profile(repeats=20), key=lambda r: -r["share"])[:2]
    return ", ".join(f"{r['kernel']} {100 * r['share']:.0f}%" for r in prof)


def architecture_row(name: str, args, log) -> list[str]:
    """Latencies, ratios, fallback share and the op categories where we lose time to ONNX Runtime."""
    a = ARCHITECTURES[name]
    m = build_architecture(name, rate=RATE)
    size = min(a.size, args.size) if args.quick else a.size
    x = torch.randn(1, 3, size, size)
    row = bench(name, m, (3, size, size), args, log)
    cm = ps.compile(m, x, threads=args.threads)
    if isinstance(cm, PartitionedModel):
        share = sum(s.seconds for s in cm.segments if not s.native) / (sum(s.seconds for s in cm.segments) or 1.0)
        where = f"{len(cm.fallback_ops)} ops fall back (profile of native segments not split by op)"
    else:
        share = 0.0
        repeats = min(args.repeats, 20)
        where = _op_profile.costliest(_op_profile.ours(cm, m, x, repeats),
                                      _op_profile.onnxruntime(m, x, args.threads, repeats))
    return [row[0], a.family, *row[1:], f"{100 * share:.0f}%", where]


def bench(name: str, m: nn.Module, shape: tuple[int, ...], args, log) -> list[str]:
    res = run_bench(BenchModel.from_module(m, shape, name=name), ENGINES, threads=args.threads,
                    repeats=args.repeats, block=5, log=log)
    by = {e.name: e for e in res.engines}
    ms = {n: (f"{by[n].median_ms:.3f}" if by[n].status == "ok" else f"{by[n].status}") for n in ENGINES}
    ours = by["patsparse"].median_ms if by["patsparse"].status == "ok" else None
    ratios = [f"{by[n].median_ms / ours:.2f}x" if ours and by[n].status == "ok" else "-"
              for n in ENGINES[1:]]
    return [name, "x".join(map(str, shape)), *ms.values(), *ratios]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--size", type=int, default=64, help="input height and width of the families")
    ap.add_argument("--quick", action="store_true", help="two of each, few repeats, small inputs (a smoke run)")
    ap.add_argument("--only", choices=["architectures", "blocks", "ops"], help="run one section")
    ap.add_argument("--out", default=str(BENCH / "ops.md"))
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 10)

    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"

    def log(msg: str) -> None:
        print(msg, flush=True)

    header = ["model", "input", "patsparse ms", "ONNX Runtime ms", "OpenVINO ms", "ORT / ours", "OpenVINO / ours"]
    first = 2 if args.quick else None
    run = {s: args.only in (None, s) for s in ("architectures", "blocks", "ops")}
    arch_rows = [architecture_row(n, args, log) for n in list(ARCHITECTURES)[:first]] if run["architectures"] else []
    shape = (3, args.size, args.size)
    fam_rows = []
    for name in list(FAMILIES)[:first] if run["blocks"] else []:
        m = build(name, rate=RATE)
        fam_rows.append(bench(name, m, shape, args, log) + [where_time_goes(m, shape, args.threads)])
    c = 32
    op_shape = (c, args.size, args.size)
    ops = single_ops(c)
    op_rows = [bench(k, v.eval(), op_shape, args, log) for k, v in list(ops.items())[:first]] if run["ops"] else []

    text = f"""# Speed of the ops beyond the zoo

{chr(10).join(provenance(__file__, argv if argv is not None else sys.argv[1:]))}

{args.threads} threads, batch 1, fp32, median of {args.repeats}
calls per engine in interleaved rounds (patsparse.bench.run_bench), every output checked against
PyTorch first.

**Contended numbers**: this machine is shared (2 cores, other jobs and a training run held a core
while this ran; load average {load} at the start); only the ratios measured side by side here
mean anything, and they move from run to run. On a loaded machine run it with `--threads 1`:
with 2 threads every layer's barrier waits for a descheduled partner thread. Re-run on a quiet
machine for figures to quote.

## The full networks, pattern-projected at {RATE:g}x

`patsparse.models.architectures`: torchvision's definitions (the standard U-Net at base width 32),
random weights, BatchNorm statistics randomised, `project_model(m, {RATE:g})` (3x3 convs, grouped
and dilated ones included, by pattern and connectivity; depthwise 3x3 by pattern; 1x1 convs in
virtual 3x3 kernels; the first conv dense). "fallback": the share of our latency spent in
PyTorch segments (`ps.compile(strict=False)`). "ours / ORT ms by op": from both engines' per-op
profiles (benchmarks/_op_profile.py), the op categories where we spend the most more than ONNX
Runtime, our ms / its ms ("none": no category costs us more).

{md_table(["model", "family", "input", "patsparse ms", "ONNX Runtime ms", "OpenVINO ms", "ORT / ours",
           "OpenVINO / ours", "fallback", "ours / ORT ms by op"], arch_rows) if arch_rows else "(not run)"}

## The seven families' one-block nets, 3x3 convs pattern-projected at {RATE:g}x

`patsparse.models.families` (one characteristic block each, random weights, BatchNorm
statistics randomised, `project_model(m, {RATE:g})`); every engine runs the same pruned model (the
dense engines get its zeros). "where our time goes": the two most expensive layers of our
compiled model and their share of its latency (`CompiledModel.profile`).

{md_table(header + ["where our time goes"], fam_rows) if fam_rows else "(not run)"}

## Each data-movement op alone ({c} channels, {args.size}x{args.size})

{md_table(header, op_rows) if op_rows else "(not run)"}

Reading: the padding, resize and shuffle kernels are scalar gathers over compile-time tables (a
bilinear resize interpolates each pair of source rows along x once, then blends output rows) and
softmax is one pass per row vector; a ConvTranspose2d runs as a zero-spreading pad and a dense
stride-1 conv that also multiplies the spread zeros (stride^2 the work of a direct kernel), a
"same" dilated conv as an undilated one over a phase mosaic (the 1x1 of its centre taps when the
dilation passes the input), a grouped conv as a block-diagonal one (docs/COMPILER.md).
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
