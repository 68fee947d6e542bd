"""Where a compiled model's time goes against its ideal: per kernel family and per layer, the
time, the kept multiply-adds and the share of the core's FMA peak they run at.

Why: a whole-model ratio against ONNX Runtime says whether a speed bar holds, not which kernel
to work on. The ideal of a layer is its kept MACs at the FMA peak of the threads it runs on
(benchmarks.ceiling, measured in the same run); the gap between the two, summed per kernel
family, says where the time is lost.

The per-layer times come from the runtime's own profile (``CompiledModel.run_numpy(x, prof)``,
the lead thread's wall time per layer, barrier included). On a shared machine most calls are
stretched by other processes, so the table keeps the quietest quarter of the calls (by total
time) and takes each layer's median over those.

    python -m benchmarks.grouped1x1 --profile --models mobilenet_v2 --rates 2.25,8 --threads 1
"""

from __future__ import annotations

import numpy as np

from benchmarks._report import md_table
from benchmarks.ceiling import measure

import patsparse as ps
from patsparse.bench.model import BenchModel


def quiet_profile(cm, x: np.ndarray, calls: int) -> tuple[np.ndarray, float]:
    """(each layer's median seconds over the quietest quarter of ``calls`` calls, their total's
    median) after a few warm-up calls."""
    n = len(cm.manifest["layers"])
    runs = np.zeros((calls, n))
    for i in range(-5, calls):
        p = np.zeros(n)
        cm.run_numpy(x, p)
        if i >= 0:
            runs[i] = p
    tot = runs.sum(axis=1)
    quiet = runs[tot <= np.percentile(tot, 25)]
    return np.median(quiet, axis=0), float(np.median(quiet.sum(axis=1)))


def fma_peak_gmacs(threads: int) -> float:
    """The FMA peak of ``threads`` threads in GMAC/s (the best of three short rounds)."""
    rates = measure(threads, runs=3, n=2_000_000, sizes_kb=())["rates"][f"peak_{threads}"]
    return max(rates) / 2


def budget(name: str, rate: float | None, variant: str, threads: int, calls: int,
           peak: float) -> str:
    """The markdown subsection of one model: families then layers, slowest against ideal first."""
    import torch

    bm = BenchModel.from_zoo(name, rate=rate, variant=variant)
    x = torch.randn(1, *bm.input_shape)
    cm = ps.compile(bm.module, x, threads=threads)
    per, total = quiet_profile(cm, x.numpy(), calls)
    layers = cm.manifest["layers"]
    macs = np.array([L["flops"] / 2 for L in layers])
    ideal = macs / (peak * 1e9)

    def row(label: str, t: float, m: float, i: float) -> list[str]:
        return [label, f"{t * 1e6:.1f}", f"{100 * t / per.sum():.1f}", f"{m / 1e6:.2f}",
                f"{m / t / 1e9:.1f}" if t > 0 else "-", f"{100 * i / t:.0f}" if t > 0 else "-",
                f"{(t - i) * 1e6:.1f}"]

    fams: dict[str, list[int]] = {}
    for j, L in enumerate(layers):
        fams.setdefault(L["kernel"], []).append(j)
    fam_rows = sorted((row(k, per[ix].sum(), macs[ix].sum(), ideal[ix].sum()) for k, ix in fams.items()),
                      key=lambda r: -float(r[-1]))
    order = np.argsort(-(per - ideal))
    head = ["", "us", "% of time", "kept MMAC", "GMAC/s", "% of peak", "us over ideal"]
    return "\n".join([
        f"### {name} {'dense' if rate is None else f'{rate:g}x'}, {variant} form, {threads} thread(s)", "",
        f"Sum of layers {per.sum() * 1e3:.3f} ms (quiet calls' median total {total * 1e3:.3f} ms); ideal "
        f"(kept MACs at the FMA peak) {ideal.sum() * 1e3:.3f} ms.", "",
        md_table(["kernel family", *head[1:]], fam_rows), "",
        "The ten layers furthest over their ideal:", "",
        md_table(["layer (kernel)", *head[1:]],
                 [row(f"{layers[j]['name']} ({layers[j]['kernel']})", per[j], macs[j], ideal[j]) for j in order[:10]]),
        ""])


def report(models: list[str], rates: list[float], threads: int, calls: int) -> str:
    """The section body: the peak, then one subsection per model, rate and form."""
    peak = fma_peak_gmacs(threads)
    parts = [f"FMA peak measured in the same run: {peak:.1f} GMAC/s on {threads} thread(s) "
             "(benchmarks.ceiling's register-only loop). Times: each layer's median over the quietest "
             f"quarter of {calls} calls (contended machine), from the runtime's per-layer profile.", ""]
    for name in models:
        for rate in rates:
            for variant in ("imagenet", "cifar"):
                parts.append(budget(name, None if rate == 1 else rate, variant, threads, calls, peak))
    return "\n".join(parts)
