"""The speed bars, each checked over several whole runs: docs/bench/bars.md.

One run of the grid (``benchmarks.run_all``) gives one ratio per configuration, but on this
kind of host a run's ratios move by 1.5x from one run to the next (the two vCPUs change
placement; our compute-bound kernels feel it more than the peers do), so a bar is only met if
it holds in most runs. This script times each bar's configuration ``--runs`` times, every run a
complete side-by-side run of patsparse and the dense engines that win the grid (settled,
interleaved, medians: ``patsparse.bench.harness.run_bench``), the configurations taken in turn
within a run so that each run samples the host at a different moment; it reports every run's
ratio against the fastest of them and how many runs meet the bar.

    python -m benchmarks.bars                      # every bar, 5 runs
    python -m benchmarks.bars --bars sparse --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _report

from patsparse.bench.harness import run_bench
from patsparse.bench.model import BenchModel

PEERS = ("onnxruntime", "openvino", "deepsparse")  # the engines that are ever fastest in the grid
OUT = _report.BENCH / "bars.md"


@dataclass(frozen=True)
class Bar:
    model: str
    variant: str
    rate: float | None  # None = dense
    bar: float          # required speed-up over the fastest peer
    issue: int
    batch: int = 1

    @property
    def label(self) -> str:
        rate = "dense" if self.rate is None else f"{self.rate:g}x"
        return f"{self.model}-{self.variant} {rate}, batch {self.batch}"


SPARSE = (Bar("vgg16_bn", "cifar", 8, 6.0, 22), Bar("vgg16_bn", "cifar", 2.25, 2.0, 22),
          Bar("resnet18", "imagenet", 8, 5.0, 22), Bar("mobilenet_v2", "imagenet", 8, 2.5, 24),
          Bar("mobilenet_v2", "imagenet", 2.25, 1.3, 24))
DENSE = tuple(Bar(m, v, None, 1.2, 22, b) for m, v in (("vgg16_bn", "cifar"), ("resnet18", "cifar"),
                                                       ("resnet18", "imagenet"), ("resnet50", "cifar"),
                                                       ("resnet50", "imagenet"), ("mobilenet_v2", "cifar"),
                                                       ("mobilenet_v2", "imagenet")) for b in (1, 8))
GROUPS = {"sparse": SPARSE, "dense": DENSE, "all": SPARSE + DENSE}


def one_run(bar: Bar, threads: int, repeats: int) -> tuple[float, str, float]:
    """(fastest peer's median / patsparse's, that peer, 1-min load average at the start)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    bm = BenchModel.from_zoo(bar.model, rate=bar.rate, variant=bar.variant)
    res = run_bench(bm, ("patsparse", *PEERS), batch=bar.batch, threads=threads, repeats=repeats)
    ms = {e.name: e.median_ms for e in res.ok()}
    if "patsparse" not in ms or len(ms) < 2:
        failed = [e.name for e in res.engines if e.status != "ok"]
        raise RuntimeError(f"{bar.label}: engines failed: {', '.join(failed)}")
    peer = min((k for k in ms if k != "patsparse"), key=ms.get)
    return ms[peer] / ms["patsparse"], peer, load


def report(bars: tuple[Bar, ...], ratios: dict[Bar, list[tuple[float, str, float]]], runs: int) -> list[list[str]]:
    rows = []
    for b in bars:
        got = ratios[b]
        met = sum(r >= b.bar for r, _, _ in got)
        rows.append([b.label, f"#{b.issue}", f"{b.bar:g}x", ", ".join(f"{r:.2f}x" for r, _, _ in got),
                     f"{statistics.median(r for r, _, _ in got):.2f}x",
                     ", ".join(sorted({p for _, p, _ in got})), f"{met} of {len(got)}",
                     "**met**" if met * 5 >= 4 * runs else "missed"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bars", choices=tuple(GROUPS), default="all")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.runs < 1 or args.repeats < 1:
        ap.error("--runs and --repeats must be at least 1")
    argv = sys.argv[1:] if argv is None else argv
    bars = GROUPS[args.bars]
    ratios: dict[Bar, list[tuple[float, str, float]]] = {b: [] for b in bars}
    start = _report.utc_now()
    for run in range(args.runs):
        for b in bars:
            ratios[b].append(one_run(b, args.threads, args.repeats))
            r, peer, load = ratios[b][-1]
            print(f"run {run + 1}/{args.runs} {b.label}: {r:.2f}x ({peer}, load {load:.1f})", flush=True)
    loads = [load for got in ratios.values() for _, _, load in got]
    body = "\n".join([
        f"## {args.threads} thread(s), {args.runs} runs", "", *_report.provenance(__file__, argv),
        f"- runs from {start} to {_report.utc_now()}; 1-minute load average at the start of each "
        f"configuration {min(loads):.2f}-{max(loads):.2f}", "",
        f"Each run times every configuration once: patsparse against {', '.join(PEERS)} on the same "
        f"model, {args.repeats} calls each, settled and interleaved; the ratio is the fastest peer's "
        "median over patsparse's. A bar is met when at least 4 of 5 runs (that share of the runs) "
        "meet it.", "",
        _report.md_table(["configuration", "issue", "bar", "speed-up per run", "median", "fastest peer",
                          "runs meeting the bar", "verdict"], report(bars, ratios, args.runs))])
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Speed bars over repeated runs\n\nWritten by `python -m benchmarks.bars`; "
                       "every run is reported.\n")
    _report.update_section(f"bars-{args.bars}-t{args.threads}", body, out)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
