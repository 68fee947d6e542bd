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

from benchmarks._report import REPO, command_line, md_table

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


def rate_table(results: list[BenchResult]) -> str:
    """Engines x rates of one model and batch, median ms; then patsparse's speed-up per rate."""
    engines = list(dict.fromkeys(e.name for r in results for e in r.engines))
    labels = {e.name: e.label for r in results for e in r.engines}
    rows = []
    for name in engines:
        cells = []
        for r in results:
            e = next((x for x in r.engines if x.name == name), None)
            cells.append("-" if e is None else f"{e.median_ms:.2f}" if e.status == "ok" else e.status)
        rows.append([labels[name], *cells])
    rows.append(["**patsparse speed-up over fastest peer**",
                 *(f"{x:.2f}x" if (x := report.speedup(r)) else "-" for r in results)])
    return md_table(["engine"] + [rate_name(r.rate or 1.0) for r in results], rows)


def summary_table(results: list[BenchResult]) -> str:
    """One line per configuration: patsparse, the two peers users pick first, the fastest peer."""
    rows = []
    for r in results:
        ours, peers = report.ours_and_peers(r)
        ms = {e.name: f"{e.median_ms:.3f}" for e in r.ok()}
        x = report.speedup(r)
        rows.append([r.model, str(r.batch), ms.get(report.OURS, "did not run"), ms.get("onnxruntime", "-"),
                     ms.get("openvino", "-"), f"{peers[0].label} {peers[0].median_ms:.3f}" if peers else "-",
                     f"**{x:.2f}x**" if x else "-"])
    return md_table(["configuration", "batch", "patsparse ms", "ONNX Runtime ms", "OpenVINO ms",
                     "fastest peer ms", "speed-up"], rows)


def memory_table(results: list[BenchResult]) -> str:
    """Peak RSS and model size of patsparse and the fastest peer, and the worst output error of
    any engine that ran (each was checked against PyTorch before it was timed)."""
    mb = lambda e: "-" if e is None or e.model_bytes is None else f"{e.model_bytes / 2**20:.1f}"  # noqa: E731
    rss = lambda e: "-" if e is None or e.peak_rss_mb is None else f"{e.peak_rss_mb:.0f}"  # noqa: E731
    rows = []
    for r in results:
        ours, peers = report.ours_and_peers(r)
        peer = peers[0] if peers else None
        worst = max((e.rel_err for e in r.ok() if e.rel_err is not None), default=None)
        rows.append([r.model, str(r.batch), rss(ours), mb(ours), f"{peer.label if peer else '-'}", rss(peer),
                     mb(peer), "-" if worst is None else f"{worst:.0e}"])
    return md_table(["configuration", "batch", "patsparse peak RSS MB", "patsparse model MB", "fastest peer",
                     "its peak RSS MB", "its model MB", "worst relative error"], rows)


def throughput_table(results: list[BenchResult]) -> str:
    """Images per second at batch 1 and at batch 8 side by side, per configuration that ran at
    both, for patsparse and the fastest peer (per batch): what batching buys each engine."""
    by: dict[str, dict[int, BenchResult]] = {}
    for r in results:
        by.setdefault(r.model, {})[r.batch] = r

    def cells(r: BenchResult) -> tuple[str, str]:
        ours, peers = report.ours_and_peers(r)
        rate = lambda e: f"{r.batch * 1e3 / e.median_ms:.0f}"  # noqa: E731
        return (rate(ours) if ours else "-", f"{rate(peers[0])} ({peers[0].name})" if peers else "-")

    rows = []
    for model, batches in by.items():
        if 1 in batches and 8 in batches:
            (o1, p1), (o8, p8) = cells(batches[1]), cells(batches[8])
            rows.append([model, o1, o8, p1, p8])
    return md_table(["configuration", "patsparse b1", "patsparse b8", "fastest peer b1", "fastest peer b8"],
                    rows) if rows else ""


def shortfalls(results: list[BenchResult]) -> list[str]:
    """Where patsparse is not the fastest (or did not run), and by how much."""
    out = []
    for r in results:
        ours, peers = report.ours_and_peers(r)
        mine = next((e for e in r.engines if e.name == report.OURS), None)
        where = f"{r.model}, batch {r.batch}"
        if mine is not None and mine.status != "ok":
            out.append(f"- {where}: patsparse did not run ({mine.status}: {mine.reason})")
        elif ours and peers and peers[0].median_ms < ours.median_ms:
            b = peers[0]
            out.append(f"- {where}: {b.label} {b.median_ms:.2f} ms vs patsparse {ours.median_ms:.2f} ms "
                       f"(patsparse {ours.median_ms / b.median_ms:.2f}x slower)")
    return out


def not_timed(results: list[BenchResult]) -> list[str]:
    """Engines that did not produce a timing, once per engine and reason, with where."""
    where: dict[tuple[str, str, str], list[str]] = {}
    for r in results:
        for e in r.engines:
            if e.status != "ok" and e.name != report.OURS:
                where.setdefault((e.label, e.status, e.reason), []).append(f"{r.model} b{r.batch}")
    return [f"- **{label}** ({status}: {reason}): {len(w)} configuration{'s' * (len(w) > 1)}"
            + (f" ({', '.join(w)})" if len(w) <= 3 else "") for (label, status, reason), w in where.items()]


def other_pages(bench_dir: Path, out: Path) -> list[str]:
    """One link per page other benchmark scripts wrote (each names its own command, machine and
    date); they are linked, not inlined, so this page stays one run of one grid."""
    links = []
    for page in sorted(bench_dir.glob("*.md")):
        title = next((ln.lstrip("# ").strip() for ln in page.read_text().splitlines() if ln.startswith("#")),
                     page.stem)
        links.append(f"- [{title}]({page.relative_to(out.parent).as_posix()})")
    return links


def stitch(args, results_dir: Path, plots_dir: Path, argv: list[str]) -> str:
    results = [report.read_result_json(p) for p in sorted(results_dir.glob("*.json"))]
    if not results:
        raise SystemExit(f"no results in {results_dir}: run without --stitch-only first")
    groups = _group(results)
    ordered = [r for group in groups.values() for r in group]
    m = results[0].machine
    loads = [x for r in results for x in (r.machine.get("load_average") or [None])[:1] if x is not None]
    ran = (results_dir / COMMAND_FILE).read_text().strip() if (results_dir / COMMAND_FILE).exists() else "?"
    ratios = [(f"{r.model}, b{r.batch}", x) for r in ordered if (x := report.speedup(r))]
    lines = [
        "# Benchmarks: patsparse against the engines users would pick instead", "",
        f"Measured by `{ran}` and written by `{command_line(__file__, argv)}`: one run of the grid "
        f"below, {len(results)} configurations, each its own interleaved side-by-side run of every "
        f"engine (per-configuration JSON in `docs/bench/results/`).", "",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores ({', '.join(m.get('isa', []))}), {m.get('os')}, "
        f"Python {m.get('python')}; threads per engine: "
        f"{', '.join(str(t) for t in sorted({r.threads for r in results}))}",
        f"- Dates: {min(r.machine.get('date', '') for r in results)} to "
        f"{max(r.machine.get('date', '') for r in results)}; commit"
        f"{'s' * (len({r.machine.get('commit') for r in results}) > 1)} "
        f"{', '.join(sorted({r.machine.get('commit') or '?' for r in results}))}"
        + (f"; 1-minute load average at the start of each configuration {min(loads):.2f}-{max(loads):.2f}"
           if loads else ""), "",
        "## Summary", "",
        "Median latency per batch; the speed-up is the fastest other engine's median over patsparse's, "
        "both from the same interleaved run.", "",
        summary_table(ordered), "",
    ]
    if ratios:
        png = report.speedup_plot(ratios, plots_dir / "speedup.png", f"{len(ratios)} configurations, "
                                  f"{results[0].threads} threads")
        lines += [f"![speed-up over the fastest peer]({png.relative_to(args.out.parent).as_posix()})", ""]
    lines += ["## Where patsparse is not yet the fastest", ""]
    lines += shortfalls(ordered) or ["- Nowhere in this grid: patsparse was the fastest engine in every "
                                     "configuration."]
    lines += ["", "## How it was measured", "",
              "- Weights: random initialisation, pattern + connectivity projected one-shot "
              "(`project_model`, Phase-2 library); latency depends on which weights are zero, not "
              "on their values (docs/RESULTS.md has a trained model's accuracy and speed together).",
              "- Each engine runs in its own worker process; its output is checked against PyTorch "
              "eager before timing (a wrong engine is not timed); timed calls alternate between engines "
              "in rounds, after warm-up, and each engine's worker threads are let go idle before its "
              "block; latency is per batch, median of the timed calls, through the engine's Python API "
              "(numpy in, numpy out).",
              "- torch.compile and TVM are not in the grid, for time: both were slower than PyTorch "
              "eager at batch 1 here (torch.compile also spends 16-84 s compiling each configuration; "
              "TVM runs untuned because MetaSchedule tuning segfaults in apache-tvm 0.27, "
              "`python -m benchmarks.tvm_tuning_crash`). `patsparse bench MODEL --engines ...` runs them.", ""]
    if any("passive waits" in e.notes for r in results for e in r.engines if e.name == report.OURS):
        lines += ["- patsparse ran with passive OpenMP waits (`--patsparse-waits passive`): robust while "
                  "other jobs load the machine, slower than its default waits on a quiet one.", ""]
    missing = not_timed(ordered)
    if missing:
        lines += ["Engines that produced no timing:", "", *missing, ""]
    tput = throughput_table(ordered)
    if tput:
        lines += ["## Throughput: batch 1 and batch 8", "",
                  "Images per second (batch / median latency) of the same configuration at both batch "
                  "sizes, each from its own run.", "", tput, ""]
    lines += ["## Every engine, per model", "", "Median latency per batch, ms.", ""]
    for (model, batch), group in groups.items():
        lines += [f"### {model}, batch {batch}", "", rate_table(group), ""]
        if len(group) > 1:
            png = report.rate_plot(group, plots_dir / f"{model.replace(' ', '_')}-b{batch}.png",
                                   f"{model}, batch {batch}, {group[0].threads} threads")
            lines += [f"![latency vs compression rate]({png.relative_to(args.out.parent).as_posix()})", ""]
    lines += ["## Memory and correctness", "", memory_table(ordered), ""]
    others = other_pages(args.out.parent / "bench", args.out)
    if others:
        lines += ["## Other measurements", "",
                  "Pages written by the other scripts in `benchmarks/`, each from its own run (its command, "
                  "machine and date at its top):", "", *others, ""]
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
