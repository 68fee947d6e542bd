"""Tables, JSON and plots from benchmark results.

Tables are Markdown (they go straight into docs/BENCHMARKS.md and read fine in a terminal).
Speed-ups are ratios of medians measured in the same interleaved run: on a shared machine
those ratios are far steadier than the absolute times.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from ..checkpoint import write_json
from .harness import BenchResult, EngineResult

OURS = "patsparse"


def _num(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def ours_and_peers(result: BenchResult) -> tuple[EngineResult | None, list[EngineResult]]:
    """patsparse's result (None if it did not run) and the peers that ran, fastest first."""
    ok = result.ok()
    ours = next((e for e in ok if e.name == OURS), None)
    return ours, sorted((e for e in ok if e.name != OURS), key=lambda e: e.median_ms)


def speedup(result: BenchResult) -> float | None:
    """The fastest peer's median over patsparse's: the number every claim here is about."""
    ours, peers = ours_and_peers(result)
    return peers[0].median_ms / ours.median_ms if ours and peers else None


def table(result: BenchResult) -> str:
    """The main table: one row per engine that ran, then one line per engine that did not."""
    ok = sorted(result.ok(), key=lambda e: e.median_ms)
    ours = next((e for e in ok if e.name == OURS), None)
    head = ["engine", "median ms", "p90 ms", "p99 ms", "vs fastest"]
    if ours:
        head.append("patsparse speed-up")
    head += ["max abs err (rel)", "peak RSS MB", "model MB", "version", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = ok[0].median_ms if ok else None
    for e in ok:
        row = [e.label, _num(e.median_ms), _num(e.p90_ms), _num(e.p99_ms), f"{e.median_ms / best:.2f}x"]
        if ours:
            row.append(f"{e.median_ms / ours.median_ms:.2f}x")
        row += [f"{_num(e.max_abs_err, '{:.1e}')} ({_num(e.rel_err, '{:.0e}')})", _num(e.peak_rss_mb, "{:.0f}"),
                _num(None if e.model_bytes is None else e.model_bytes / 2**20, "{:.1f}"), e.version,
                e.notes]
        lines.append("| " + " | ".join(row) + " |")
    others = [e for e in result.engines if e.status != "ok"]
    if others:
        lines.append("")
        lines += [f"- **{e.label}**: {e.status}: {e.reason}" for e in others]
    return "\n".join(lines)


def speedup_matrix(result: BenchResult) -> str:
    """Entry (row, column) = column's median / row's median: how many times row is faster."""
    ok = sorted(result.ok(), key=lambda e: e.median_ms)
    if len(ok) < 2:
        return ""
    lines = ["| faster ↓ than → | " + " | ".join(e.name for e in ok) + " |", "|" + "---|" * (len(ok) + 1)]
    for r in ok:
        lines.append(f"| {r.name} | " + " | ".join(f"{c.median_ms / r.median_ms:.2f}" for c in ok) + " |")
    return "\n".join(lines)


def header(result: BenchResult) -> str:
    m = result.machine
    sparsity = ""
    if result.macs_dense:
        sparsity = (f"; conv+linear MACs per image {result.macs_dense / 1e6:.1f} M dense, "
                    f"{result.macs_sparse / 1e6:.1f} M non-zero ({result.macs_dense / result.macs_sparse:.2f}x fewer)")
    load = m.get("load_average"), m.get("load_average_end")
    return (f"**{result.model}**, input {result.input_shape}, batch {result.batch}, "
            f"{result.threads} threads, {result.repeats} timed calls per engine (interleaved"
            f"{f', {result.gap_ms:g} ms apart' if result.gap_ms else ''}), "
            f"checked against {result.reference} (tolerance {result.tolerance:g} of max |ref|){sparsity}.  \n"
            f"{m.get('cpu')} ({m.get('cores')} cores, {', '.join(m.get('isa', []))}), {m.get('os')}, "
            f"{m.get('date')}, commit {m.get('commit') or '?'}, load average {load[0]} -> {load[1]}.")


def write_result_json(result: BenchResult, path: str | Path) -> None:
    write_json(path, result.to_dict())


def read_result_json(path: str | Path) -> BenchResult:
    d = json.loads(Path(path).read_text())
    d["engines"] = [EngineResult(**e) for e in d["engines"]]
    return BenchResult(**d)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (creating the directory) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def bar_chart(result: BenchResult, path: str | Path) -> Path:
    """Horizontal bars of median latency with a p90 whisker, fastest on top."""
    plt = _pyplot()
    ok = sorted(result.ok(), key=lambda e: -e.median_ms)
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(ok), 2) + 1.4))
    med = [e.median_ms for e in ok]
    ax.barh([e.label + (" (untuned)" if "untuned" in e.notes else "") for e in ok], med,
            xerr=[[0] * len(ok), [e.p90_ms - e.median_ms for e in ok]],
            color=["tab:red" if e.name == OURS else "tab:blue" for e in ok], capsize=3)
    if med and max(med) / min(med) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("latency per batch, ms (bar: median, whisker: p90)")
    ax.set_title(f"{result.model}, batch {result.batch}, {result.threads} threads", fontsize=10)
    return _save(fig, path)


def rate_plot(results: Sequence[BenchResult], path: str | Path, title: str = "") -> Path:
    """Median latency against compression rate per engine, with the FLOP-count ideal.

    The ideal starts at the fastest engine's dense latency and falls with the non-zero MACs:
    what a perfect sparse engine would reach if zero weights cost nothing.
    """
    plt = _pyplot()
    results = sorted((r for r in results if r.rate), key=lambda r: r.rate)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = list(dict.fromkeys(e.name for r in results for e in r.ok()))
    peers = iter([c for c in plt.get_cmap("tab20").colors if c != plt.get_cmap("tab20").colors[6]])
    for name in names:  # patsparse alone in thick red; peers in other colours
        pts = [(r.rate, e.median_ms, e.label) for r in results for e in r.ok() if e.name == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=pts[0][2],
                linewidth=2.5 if name == OURS else 1.2, color="tab:red" if name == OURS else next(peers))
    dense = next((r for r in results if r.rate == 1.0 and r.ok()), None)
    if dense and all(r.macs_dense for r in results):
        best = min(e.median_ms for e in dense.ok())
        ax.plot([r.rate for r in results], [best * r.macs_sparse / r.macs_dense for r in results],
                "k--", label="FLOP-count ideal (from fastest dense)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    rates = [r.rate for r in results]
    ax.set_xticks(rates, [f"{x:g}" for x in rates])
    ax.set_xlabel("compression rate (1 = dense)")
    ax.set_ylabel("median latency, ms")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def speedup_plot(rows: Sequence[tuple[str, float]], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of patsparse's speed-up over the fastest peer, one per configuration, with
    the break-even line at 1: the whole grid in one picture."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.28 * max(len(rows), 2) + 1.2))
    labels, values = [r[0] for r in rows][::-1], [r[1] for r in rows][::-1]
    ax.barh(labels, values, color=["tab:red" if v >= 1 else "tab:gray" for v in values])
    ax.axvline(1.0, color="k", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("speed-up over the fastest other engine (> 1: patsparse faster)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
