"""1x1 convs pruned in virtual 3x3 kernels, compiled: speed of MobileNet-V2 and ResNet-50 against
ONNX Runtime and OpenVINO on the very same models, written to docs/bench/grouped1x1.md.

Each network (ImageNet form, random weights: latency depends on which weights are zero, not on
their values) is timed dense, at 2.25x (patterns alone) and at 8x (patterns + connectivity),
every 3x3, depthwise and 1x1 conv but the first and the classifier pruned (``project_model``,
1x1 convs grouped as ``ps.prune`` does by default). The engines run side by side in the
project's harness (``patsparse.bench.run_bench``: one worker process per engine, interleaved
rounds, each engine settled before its block, outputs checked against PyTorch first). The table
also says which kernel ran each model's 1x1 convs: the compiler reads the grouping from the
weights and runs the grouped kernel where it is faster than the dense GEMM (density at most
``compiler.grouped.max_density`` of the layer's shape). The accuracy section of the same file comes from
``python -m benchmarks.accuracy --budget mini --results docs/bench/grouped1x1.md``.

    python -m benchmarks.grouped1x1 --threads 2 --repeats 100     (a section per thread count)
    python -m benchmarks.grouped1x1 --ab 120 --models mobilenet_v2 --rates 8 --threads 1

``--profile`` instead writes where each model's time goes against its ideal (kept MACs at the
FMA peak), per kernel family and per layer, ImageNet and CIFAR forms (_layer_budget.py), a
section per thread count:

    python -m benchmarks.grouped1x1 --profile --models mobilenet_v2 --rates 2.25,8 --threads 1

``--ab SECONDS`` instead compiles each model and rate twice, with every 1x1 conv on the dense
GEMM (A) and as the compiler picks (B), and alternates the two in one process for that long
(``ab_models.ab_table``: whole model and each layer), a section per model and rate. With
``--ab-against unfused-block`` A keeps each inverted-residual block's project conv a kernel of
its own (lowering.fuse_project off) instead:

    python -m benchmarks.grouped1x1 --ab 120 --ab-against unfused-block --models mobilenet_v2 --rates 8 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks import _report

import patsparse as ps
from patsparse.bench.harness import run_bench
from patsparse.bench.model import BenchModel
from patsparse.compiler import grouped
from patsparse.compiler.codegen import lowering

ENGINES = ("patsparse", "onnxruntime", "openvino")
OUT = _report.BENCH / "grouped1x1.md"
HEADER = """# Grouped 1x1 convs (virtual 3x3 kernels): speed and accuracy

1x1 convs pruned in groups of 9 input channels that form virtual 3x3 kernels (docs/PRUNING.md),
compiled by patsparse (docs/COMPILER.md, "Grouped 1x1 convs"). Sections below are written by
the scripts they name.
"""


def write(out: Path, section: str, body: str) -> int:
    """``body`` as ``section`` of ``out`` (created with the header if missing), echoed."""
    if not out.exists():
        out.write_text(HEADER)
    _report.update_section(section, body, out)
    print(body)
    return 0


def one_x_one_kernels(module, input_shape: tuple[int, ...]) -> str:
    """How the compiled model runs its 1x1 convs: '<grouped> of <n>' (fused expand and project
    convs counted as 1x1 convs)."""
    import torch

    cm = ps.compile(module, torch.zeros(1, *input_shape), threads=1)
    layers = cm.manifest["layers"]
    grouped = sum(L["kernel"] == "grouped1x1" for L in layers) + \
        sum(("nv" in L["schedule"]) + ("pnv" in L["schedule"]) for L in layers if L["kernel"] == "pw_dw")
    total = sum(m.kernel_size == (1, 1) for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    return f"{grouped} of {total}"


# --ab-against: (module, its constants set to -1 for build A, what A is, section suffix)
AB_AGAINST = {
    "dense-1x1": (grouped, ("GROUPED_MAX_DENSITY", "EXPAND_MAX_DENSITY"), "1x1 convs on the dense GEMM", ""),
    "unfused-block": (lowering, ("PROJECT_MAX_WEIGHT_BYTES",), "project convs unfused", "-block"),
    "gather": (grouped, ("REGISTER_MAX_FMAS",), "no register-blocked kernel", "-gather"),
}


def ab(args: argparse.Namespace, header: list[str]) -> int:
    """The A/B per model and rate: build A with the thresholds ``--ab-against`` names set below
    every layer (for that build only: the 1x1 convs on the dense GEMM, or the blocks' project
    convs unfused) against the compiler's own pick."""
    import torch

    from benchmarks.ab_models import ab_table

    module, names, what, suffix = AB_AGAINST[args.ab_against]
    for name in args.models.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            bm = BenchModel.from_zoo(name, rate=None if rate == 1 else rate, variant="imagenet")
            x = torch.zeros(1, *bm.input_shape)
            saved = {k: getattr(module, k) for k in names}
            try:
                for k in names:
                    setattr(module, k, -1)
                a = ps.compile(bm.module, x, threads=args.threads)
            finally:
                for k, v in saved.items():
                    setattr(module, k, v)
            text, _ = ab_table(a, ps.compile(bm.module, x, threads=args.threads),
                               f"{name} {rate:g}x, A: {what}, B: as the compiler picks, {args.threads} thread(s)",
                               header, seconds=args.ab, calls=20)
            write(args.out, f"grouped1x1-ab{suffix}-{name}-{rate:g}x-t{args.threads}", text)
    return 0


def profile(args: argparse.Namespace, command: str) -> int:
    """The layer budget section (benchmarks._layer_budget) for ``--threads``."""
    from benchmarks._layer_budget import report

    body = report(args.models.split(","), [float(r) for r in args.rates.split(",")], args.threads, args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = "\n".join([f"## Where the time goes, {args.threads} thread(s) (benchmarks/_layer_budget.py)", "", body,
                      f"Run {_report.utc_now()}, commit {_report.git_commit()}, "
                      f"{_report.machine_line(_report.machine())}, 1-min load average {load:.1f} at the end; "
                      f"command `{command}`."])
    return write(args.out, f"grouped1x1-profile-t{args.threads}", body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v2,resnet50")
    ap.add_argument("--rates", default="1,2.25,8", help="1 = dense")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--ab", type=float, help="seconds of A/B per model and rate instead (see above)")
    ap.add_argument("--ab-against", choices=tuple(AB_AGAINST), default="dense-1x1",
                    help="what build A of --ab changes (see above)")
    ap.add_argument("--profile", action="store_true", help="time against the ideal per layer instead (see above)")
    args = ap.parse_args(argv)
    command = _report.command_line(__file__, sys.argv[1:] if argv is None else argv)
    if args.profile:
        return profile(args, command)
    if args.ab:
        return ab(args, _report.provenance(__file__, sys.argv[1:] if argv is None else argv))
    log = lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    for name in args.models.split(","):
        for rate in (float(r) for r in args.rates.split(",")):
            bm = BenchModel.from_zoo(name, rate=None if rate == 1 else rate, variant="imagenet")
            kernels = one_x_one_kernels(bm.module, bm.input_shape)
            res = run_bench(bm, ENGINES, threads=args.threads, repeats=args.repeats, log=log)
            ms = {e.name: e.median_ms for e in res.ok()}
            peers = {k: v for k, v in ms.items() if k != "patsparse"}
            best = min(peers, key=peers.get) if peers else None
            cell = lambda e: f"{ms[e]:.2f}" if e in ms else "failed"  # noqa: E731
            ratio = f"{ms[best] / ms['patsparse']:.2f}x ({best})" if best and "patsparse" in ms else "n/a"
            rows.append([name, "dense" if rate == 1 else f"{rate:g}x", kernels, *(cell(e) for e in ENGINES), ratio])
            print(" | ".join(rows[-1]), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = "\n".join([
        f"## Speed against ONNX Runtime and OpenVINO, {args.threads} thread(s)", "",
        f"Written by `python -m benchmarks.grouped1x1`. ImageNet form (3x224x224), batch 1, {args.threads} threads, "
        f"{args.repeats} timed calls per engine, median ms; the same model (weights pruned in place) for "
        "every engine. `1x1 grouped` says how many of the model's 1x1 convs ran the grouped sparse kernel "
        "(the others ran the dense GEMM). The last column is the faster peer's time over patsparse's.", "",
        _report.md_table(["model", "rate", "1x1 grouped", *ENGINES, "speed-up vs faster peer"], rows), "",
        f"1-min load average {load:.1f} at the end (2 vCPUs). Ratios are measured side by side in "
        "one run; from run to run they move widely on this host (`python -m benchmarks.bars` repeats "
        "the runs for the bars).", "",
        f"Run {_report.utc_now()}, commit {_report.git_commit()}, {_report.machine_line(_report.machine())}; "
        f"command `{command}`."])
    return write(args.out, f"grouped1x1-speed-t{args.threads}", body)


if __name__ == "__main__":
    sys.exit(main())
