"""The pattern kernel against the dense conv's kernels (Winograd, implicit GEMM) on the same
pattern-pruned layers, layer by layer, and which one the compiler picks untuned.

A zoo model projected to ``--rate`` (random weights: latency depends on which weights are zero,
not on their values) is compiled twice: A runs every pattern-matched layer on the pattern
kernel's default schedule, B runs each of them on the dense conv's cheapest modelled schedule
(``dense_conv.ranked``: Winograd where it applies), zeros in place. ``ab_models.ab_table`` times
the two in alternated, settled blocks with the per-layer profile; the table below it lists each
layer's two modelled costs and the untuned pick (``kernels.DENSE_MARGIN``), so the cost model
can be read against the measured ratio.

    python -m benchmarks.pattern_families vgg16_bn --variant cifar --rate 2.25 [--seconds 120]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks._report import md_table, provenance
from benchmarks.ab_models import ab_table

from patsparse.bench.model import BenchModel
from patsparse.compiler.api import build_from_graph, capture
from patsparse.compiler.codegen import dense_conv, kernels
from patsparse.compiler.codegen.pattern_conv import default_schedule
from patsparse.compiler.codegen.plan import plan_graph
from patsparse.compiler.target import detect


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a zoo name (vgg16_bn, resnet18, ...)")
    ap.add_argument("--variant", default="cifar", choices=["cifar", "imagenet"])
    ap.add_argument("--rate", type=float, default=2.25, help="compression rate (2.25: pattern only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=120.0, help="A/B duration")
    ap.add_argument("--calls", type=int, default=20, help="A/B calls per block")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args(argv)
    bm = BenchModel.from_zoo(args.model, rate=args.rate, variant=args.variant)
    module, x, target = bm.module.eval(), torch.from_numpy(bm.example(1)), detect()
    plan = plan_graph(capture(module, x), target=target, threads=args.threads)
    pattern, dense, rows = {}, {}, []
    for s in plan.steps:
        if s.kind != "pattern_conv":
            continue
        pattern[s.cname] = default_schedule(s.in_layout, s.out_layout, target, args.threads)
        d_cost, _, dense[s.cname] = dense_conv.ranked(**kernels.dense_args(s, target))[0]
        p_cost = kernels.pattern_cost(s.sparsity, s.in_layout, s.out_layout, target)
        pick = kernels.generate(s, None, target, args.threads).schedule
        rows.append([s.node.name, f"{s.in_layout.C}->{s.out_layout.C} @{s.out_layout.H}x{s.out_layout.W}",
                     f"{p_cost / 1e3:.0f}", f"{d_cost / 1e3:.0f} {dense[s.cname]}", f"{p_cost / d_cost:.2f}",
                     "dense" if kernels.dense_schedule(pick) else "pattern"])
    a = build_from_graph(capture(module, x), threads=args.threads, schedules=pattern)
    b = build_from_graph(capture(module, x), threads=args.threads, schedules=dense)
    header = provenance(__file__, argv) + [
        f"- {bm.name}: A = the pattern kernel, B = the dense conv's cheapest modelled schedule, on the "
        f"{len(pattern)} pattern-matched layers (same weights)"]
    text, _ = ab_table(a, b, f"{bm.name}, pattern kernel (A) against dense kernels with the zeros in place (B)",
                       header, seconds=args.seconds, calls=args.calls)
    report = "\n".join([text, f"### Modelled cycles (thousands) and the untuned pick (DENSE_MARGIN "
                        f"{kernels.DENSE_MARGIN})", "",
                        md_table(["layer", "shape", "pattern", "dense (schedule)", "pattern / dense", "pick"], rows)])
    if args.out:
        Path(args.out).write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
