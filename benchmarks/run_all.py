"""Run the speed grid and write docs/BENCHMARKS.md.

Grid (issue 5): VGG-16-BN, ResNet-18, ResNet-50, MobileNet-V2; CIFAR (32x32) and ImageNet
(224x224) inputs; dense / pattern-only (2.25x) / 8x / 12x / 16x; batch 1 and 8. The default is
the *standard* grid (STANDARD below): every rate on the models pattern pruning is for at batch
1, dense and 8x at batch 8 for every model (the throughput table puts images per second at
both batches side by side), sized to run in about two hours on a 2-core machine; ``--full`` runs the
whole product (many hours), and any of --models/--variants/--rates/--batches picks a product
sub-grid. Each configuration is one ``run_bench`` call (its own interleaved side-by-side run),
saved as JSON under docs/bench/results/ so the page can be re-stitched without re-running
(``--stitch-only``) and an interrupted grid continues where it stopped (``--resume``; without
it old results are deleted first, so the page never mixes two runs by accident). The page keeps
the tables of the grid that ran, then appends every other docs/bench/*.md section other scripts
wrote (dense.md: dense kernels, ceiling.md: the machine's ceilings).

    python -m benchmarks.run_all                # the standard grid
    python -m benchmarks.run_all --resume       # continue it after an interruption
    python -m benchmarks.run_all --quick        # VGG-16 CIFAR, dense and 8x, batch 1
    python -m benchmarks.run_all --models vgg16_bn resnet18 --variants cifar --batches 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks._report import REPO, command_line

from patsparse.bench import report
from patsparse.bench.engines import ENGINES
from patsparse.bench.harness import BenchResult, run_bench
from patsparse.bench.model import BenchModel
from patsparse.checkpoint import atomic_write_bytes

MODELS = ["vgg16_bn", "resnet18", "resnet50", "mobilenet_v2"]
VARIANTS = ["cifar", "imagenet"]
RATES = [1.0, 2.25, 8.0, 12.0, 16.0]  # 1.0 = dense
BATCHES = [1, 8]
RATE_NAMES = {1.0: "dense", 2.25: "pattern-only 2.25x"}
# (model, variant, rates, batches), run in this order. MobileNet-V2 runs dense only: its one
# full 3x3 conv is the 3-channel stem (the rest are depthwise and 1x1), so a pattern rate would
# change almost nothing.
STANDARD = [
    ("vgg16_bn", "cifar", RATES, [1]),
    ("vgg16_bn", "cifar", [1.0, 8.0], [8]),
    ("resnet18", "cifar", RATES, [1]),
    ("resnet18", "cifar", [1.0, 8.0], [8]),
    ("resnet50", "cifar", [1.0, 8.0], [1, 8]),
    ("mobilenet_v2", "cifar", [1.0], [1, 8]),
    ("mobilenet_v2", "imagenet", [1.0], [1, 8]),
    ("resnet50", "imagenet", [1.0, 2.25, 8.0, 16.0], [1]),
    ("resnet50", "imagenet", [1.0, 8.0], [8]),
    ("resnet18", "imagenet", RATES, [1]),
    ("resnet18", "imagenet", [1.0, 8.0], [8]),
]
# The grid leaves out two engines for time, both slower than PyTorch eager at batch 1 here:
# torch.compile (16-84 s to compile per configuration) and TVM without MetaSchedule tuning
# (15-40x slower than every other engine; tuning segfaults in apache-tvm 0.27, see
# benchmarks/tvm_tuning_crash.py). `patsparse bench`
# runs them on request (--engines).
COMMAND_FILE = "command.txt"  # beside the results: the command line that measured them
GRID_ENGINES = [e for e in ENGINES if e not in ("torch-compile", "tvm")]


def rate_name(rate: float) -> str:
    return RATE_NAMES.get(rate, f"{rate:g}x")


def config_id(model: str, variant: str, rate: float, batch: int) -> str:
    return f"{model}-{variant}-r{rate:g}-b{batch}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="VGG-16 CIFAR, dense and 8x, batch 1, 20 repeats")
    p.add_argument("--full", action="store_true", help="every model x variant x rate x batch (many hours)")
    p.add_argument("--resume", action="store_true", help="keep finished configurations, run the rest")
    p.add_argument("--models", nargs="+", help=f"product sub-grid (default {' '.join(MODELS)})")
    p.add_argument("--variants", nargs="+", choices=VARIANTS)
    p.add_argument("--rates", nargs="+", type=float, help="1 = dense")
    p.add_argument("--batches", nargs="+", type=int)
    p.add_argument("--engines", nargs="+", default=GRID_ENGINES,
                   help=f"default: {' '.join(GRID_ENGINES)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--time-limit", type=float, default=60.0, help="timed seconds per engine per config")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--tvm-budget", type=float, default=0.0, help="MetaSchedule seconds per config (0: untuned)")
    p.add_argument("--patsparse-waits", choices=["default", "passive"], default="default",
                   help="patsparse's OpenMP waits (passive: robust while other jobs load the machine)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    p.add_argument("--stitch-only", action="store_true", help="rewrite the page from saved JSON results")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.variants, args.rates, args.batches = ["vgg16_bn"], ["cifar"], [1.0, 8.0], [1]
        args.repeats = min(args.repeats, 20)
    return args


def grid(args) -> list[tuple[str, str, float, int]]:
    """The configurations to run, in order: a product when asked for one, else STANDARD."""
    if args.full or any(x is not None for x in (args.models, args.variants, args.rates, args.batches)):
        return [(m, v, r, b) for m in args.models or MODELS for v in args.variants or VARIANTS
                for b in args.batches or BATCHES for r in args.rates or RATES]
    return [(m, v, r, b) for m, v, rates, batches in STANDARD for b in batches for r in rates]


def run_grid(args, results_dir: Path, argv: list[str] = ()) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    configs = grid(args)
    wanted = {config_id(*c) for c in configs}
    for old in results_dir.glob("*.json"):
        if not (args.resume and old.stem in wanted):
            old.unlink()  # the page shows one run of the grid, never a mix of runs
    if not (args.resume and (results_dir / COMMAND_FILE).exists()):
        atomic_write_bytes(results_dir / COMMAND_FILE, (command_line(__file__, list(argv)) + "\n").encode())
    for i, (model, variant, rate, batch) in enumerate(configs, 1):
        cid = config_id(model, variant, rate, batch)
        if (results_dir / f"{cid}.json").exists():
            print(f"[{i}/{len(configs)}] {cid}: done in an earlier part of this run", flush=True)
            continue
        print(f"[{i}/{len(configs)}] {cid}", flush=True)
        bm = BenchModel.from_zoo(model, rate=None if rate == 1.0 else rate, variant=variant)
        res = run_bench(bm, args.engines, batch=batch, threads=args.threads, repeats=args.repeats,
                        timeout=args.timeout + args.tvm_budget, time_limit=args.time_limit,
                        options={"tvm_budget": args.tvm_budget, "patsparse_waits": args.patsparse_waits},
                        log=lambda s: print(f"    {s}", flush=True))
        report.write_result_json(res, results_dir / f"{cid}.json")
        print(report.table(res), flush=True)


def _group(results: list[BenchResult]) -> dict[tuple[str, int], list[BenchResult]]:
    groups: dict[tuple[str, int], list[BenchResult]] = {}
    for r in results:
        groups.setdefault((r.model.rsplit(" ", 1)[0], r.batch), []).append(r)
    return {k: sorted(v, key=lambda r: r.rate or 1.0) for k, v in groups.items()}


def summary_table(results: list[BenchResult]) -> str:
    """Engines x rates, median ms; then patsparse's speed-up over the fastest peer per rate."""
    engines = list(dict.fromkeys(e.name for r in results for e in r.engines))
    labels = {e.name: e.label for r in results for e in r.engines}
    head = ["engine"] + [rate_name(r.rate or 1.0) for r in results]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in engines:
        cells = []
        for r in results:
            e = next((x for x in r.engines if x.name == name), None)
            cells.append("-" if e is None else f"{e.median_ms:.2f}" if e.status == "ok" else e.status)
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    cells = []
    for r in results:
        ours = next((e for e in r.ok() if e.name == report.OURS), None)
        peers = [e for e in r.ok() if e.name != report.OURS]
        cells.append(f"{min(p.median_ms for p in peers) / ours.median_ms:.2f}x" if ours and peers else "-")
    lines.append("| **patsparse speed-up over fastest peer** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput_table(results: list[BenchResult]) -> str:
    """Images per second at batch 1 and at batch 8 side by side, per configuration that ran at
    both, for patsparse and the fastest peer (per batch): what batching buys each engine."""
    by = {}
    for r in results:
        by.setdefault(r.model, {})[r.batch] = r
    lines = ["| configuration | patsparse b1 | patsparse b8 | fastest peer b1 | fastest peer b8 |",
             "|---|---|---|---|---|"]

    def cells(r: BenchResult) -> tuple[str, str]:
        ours = next((e for e in r.ok() if e.name == report.OURS), None)
        peers = sorted((e for e in r.ok() if e.name != report.OURS), key=lambda e: e.median_ms)
        rate = lambda e: f"{r.batch * 1e3 / e.median_ms:.0f}"  # noqa: E731
        return (rate(ours) if ours else "-",
                f"{rate(peers[0])} ({peers[0].name})" if peers else "-")

    for model, batches in by.items():
        if 1 in batches and 8 in batches:
            (o1, p1), (o8, p8) = cells(batches[1]), cells(batches[8])
            lines.append(f"| {model} | {o1} | {o8} | {p1} | {p8} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def shortfalls(results: list[BenchResult]) -> list[str]:
    """Where patsparse is not the fastest (or did not run), and by how much."""
    out = []
    for r in results:
        ours = next((e for e in r.engines if e.name == report.OURS), None)
        peers = sorted((e for e in r.ok() if e.name != report.OURS), key=lambda e: e.median_ms)
        where = f"{r.model}, batch {r.batch}"
        if ours is None:
            continue
        if ours.status != "ok":
            out.append(f"- {where}: patsparse did not run ({ours.status}: {ours.reason})")
        elif peers and peers[0].median_ms < ours.median_ms:
            b = peers[0]
            out.append(f"- {where}: {b.label} {b.median_ms:.2f} ms vs patsparse {ours.median_ms:.2f} ms "
                       f"(patsparse {ours.median_ms / b.median_ms:.2f}x slower)")
    return out


def stitch(args, results_dir: Path, plots_dir: Path, argv: list[str]) -> str:
    results = [report.read_result_json(p) for p in sorted(results_dir.glob("*.json"))]
    if not results:
        raise SystemExit(f"no results in {results_dir}: run without --stitch-only first")
    m = results[0].machine
    grid_line = (f"- Grid that ran: {', '.join(sorted({r.model.rsplit(' ', 1)[0] for r in results}))}; rates "
                 f"{', '.join(rate_name(x) for x in sorted({r.rate or 1.0 for r in results}))}; batch "
                 f"{', '.join(str(b) for b in sorted({r.batch for r in results}))}; "
                 f"threads per engine: {', '.join(str(t) for t in sorted({r.threads for r in results}))}")
    ran = (results_dir / COMMAND_FILE).read_text().strip() if (results_dir / COMMAND_FILE).exists() else "?"
    lines = [
        "# Benchmarks: patsparse against the engines users would pick instead", "",
        f"Measured by `{ran}`, written by `{command_line(__file__, argv)}`, from one run of the grid below "
        f"({len(results)} configurations, each its own interleaved side-by-side run of every engine; "
        f"per-configuration JSON in `docs/bench/results/`).", "",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores ({', '.join(m.get('isa', []))}), {m.get('os')}, "
        f"Python {m.get('python')}",
        f"- Dates: {min(r.machine.get('date', '') for r in results)} to "
        f"{max(r.machine.get('date', '') for r in results)}; commits "
        f"{', '.join(sorted({r.machine.get('commit') or '?' for r in results}))} (each table names its own)",
        grid_line,
        "- torch.compile and TVM are not in the grid, for time: both were slower than PyTorch eager "
        "at batch 1 on this machine (torch.compile also spends 16-84 s compiling each configuration; "
        "TVM runs untuned because MetaSchedule tuning segfaults in apache-tvm 0.27). "
        "`patsparse bench MODEL --engines ...` runs them.",
        "- Weights: random initialisation, pattern + connectivity projected one-shot "
        "(`project_model`, phase-2 library); latency depends on which weights are zero, not their values.",
        "- Each engine runs in its own worker process; its output is checked against PyTorch eager "
        "before timing (wrong engines are not timed); latencies are per batch, median, p90 and p99 of "
        "timed calls in interleaved rounds; each call goes through the engine's Python API "
        "(numpy in, numpy out).",
        "- Noise: the machine may be shared; each table gives the load average at the start and end "
        "of its run. Compare ratios within a table rather than absolute times across tables.",
        "",
    ]
    if any("passive waits" in e.notes for r in results for e in r.engines if e.name == report.OURS):
        lines += ["- patsparse ran with passive OpenMP waits (`--patsparse-waits passive`, the notes "
                  "column): robust while other jobs load the machine, but slower than its default "
                  "waits on a quiet one (VGG-16 CIFAR 2.25x: 7.6 vs 6.4 ms, 2026-11-22), so these "
                  "ratios understate patsparse when the machine is quiet.", ""]
    short = [s for group in _group(results).values() for s in shortfalls(group)]
    lines += ["## Where patsparse is not yet the fastest", ""]
    lines += short or ["- Nowhere in this grid: patsparse was the fastest engine in every configuration."]
    lines.append("")
    tput = throughput_table(results)
    if tput:
        lines += ["## Throughput: batch 1 and batch 8", "",
                  "Images per second (batch / median latency) of the same configuration at both batch sizes, "
                  "each from its own interleaved run.", "", tput, ""]
    for (model, batch), group in _group(results).items():
        lines += [f"## {model}, batch {batch}", "", summary_table(group), ""]
        if len(group) > 1:
            png = report.rate_plot(group, plots_dir / f"{model.replace(' ', '_')}-b{batch}.png",
                                   f"{model}, batch {batch}, {group[0].threads} threads")
            lines += [f"![latency vs compression rate]({png.relative_to(args.out.parent)})", ""]
        for r in group:
            lines += [f"### {r.model}, batch {r.batch}", "", report.header(r), "", report.table(r), ""]
    for extra in sorted((args.out.parent / "bench").glob("*.md")):
        lines += [f"<!-- section from bench/{extra.name} -->", extra.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    results_dir = args.out.parent / "bench" / "results"
    plots_dir = args.out.parent / "bench" / "plots"
    if not args.stitch_only:
        run_grid(args, results_dir, argv)
    atomic_write_bytes(args.out, stitch(args, results_dir, plots_dir, argv).encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
