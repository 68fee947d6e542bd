"""Winograd against the implicit GEMM inside whole dense models, layer by layer, and the model
against ONNX Runtime and OpenVINO.

A zoo model (dense, random weights: latency does not depend on the values) is compiled twice: A
holds every dense 3x3 stride-1 layer to its best implicit-GEMM schedule (what the compiler did
before codegen/winograd.py), B is the default (the cost model picks Winograd where it ranks it
first). ``benchmarks.ab_models.ab_table`` times the two in alternated, settled blocks with the
per-layer profile. Then ``patsparse.bench.harness.run_bench`` (the harness of docs/BENCHMARKS.md:
one worker process per engine, settled, interleaved rounds) times B's compiler against ONNX
Runtime and OpenVINO on the same model.

    python -m benchmarks.winograd_models vgg16_bn --variant cifar [--seconds 120] [--repeats 100]
    python -m benchmarks.winograd_models resnet18 --variant imagenet --batch 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks._report import provenance
from benchmarks.ab_models import ab_table

from patsparse.bench.harness import run_bench
from patsparse.bench.model import BenchModel
from patsparse.compiler.api import build_from_graph, capture
from patsparse.compiler.codegen.kernels import candidates
from patsparse.compiler.codegen.plan import plan_graph
from patsparse.compiler.target import detect

PEERS = ("patsparse", "onnxruntime", "openvino")


def igemm_schedules(module: torch.nn.Module, x: torch.Tensor, threads: int) -> dict[str, dict]:
    """{layer C name: its best implicit-GEMM schedule} for every layer whose default is Winograd."""
    target = detect()
    plan = plan_graph(capture(module, x), target=target, threads=threads)
    out = {}
    for s in plan.steps:
        if s.kind != "conv2d":
            continue
        cands = candidates(s, target, threads)
        if cands and "wino" in cands[0]:
            out[s.cname] = next(c for c in cands if "wino" not in c)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a zoo name (vgg16_bn, resnet18, ...)")
    ap.add_argument("--variant", default="cifar", choices=["cifar", "imagenet"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="batch of the engine comparison (the A/B is batch 1)")
    ap.add_argument("--seconds", type=float, default=120.0, help="A/B duration")
    ap.add_argument("--calls", type=int, default=20, help="A/B calls per block")
    ap.add_argument("--repeats", type=int, default=100, help="timed calls per engine")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)
    bm = BenchModel.from_zoo(args.model, variant=args.variant)
    module = bm.module.eval()
    x = torch.from_numpy(bm.example(1))
    forced = igemm_schedules(module, x, args.threads)
    a = build_from_graph(capture(module, x), threads=args.threads, schedules=forced)
    b = build_from_graph(capture(module, x), threads=args.threads)
    header = provenance(__file__, argv) + [
        f"- {bm.name}: A = implicit GEMM on the {len(forced)} layers where B (the default) runs Winograd"]
    text, _ = ab_table(a, b, f"{bm.name}, implicit GEMM (A) against the default with Winograd (B)",
                       header, seconds=args.seconds, calls=args.calls)
    res = run_bench(bm, PEERS, batch=args.batch, threads=args.threads, repeats=args.repeats)
    lines = [text, f"## {bm.name}, batch {args.batch}, {args.threads} threads: patsparse (B) against the peers "
             "(patsparse.bench.harness, settled, interleaved)", "",
             "| engine | median ms | p90 ms |", "|---|---:|---:|"]
    for e in res.engines:
        if e.status == "ok" and e.median_ms is not None:
            lines.append(f"| {e.label} | {e.median_ms:.3f} | {e.p90_ms:.3f} |")
        else:
            lines.append(f"| {e.label} | {e.status} | |")
    ok = {e.name: e.median_ms for e in res.engines if e.status == "ok" and e.median_ms is not None}
    peers = [v for k, v in ok.items() if k != "patsparse"]
    if "patsparse" in ok and peers:
        lines += ["", f"Fastest peer / patsparse: {min(peers) / ok['patsparse']:.2f}x"]
    report = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
