"""One command for docs/RESULTS.md and its figures (issue 6): every piece of evidence, in order.

1. theory: the Phase-2 masks, their sums and the reference Gaussian / ELoG filters (exact
   integer identities, checked, and plotted to docs/theory_identities.png);
2. the accuracy grid (benchmarks/accuracy.py), resumable;
3. pattern-library extraction (paper Figure 4) on the grid's trained dense model: the pattern-use
   histogram per phase (docs/extraction.png) and how many of the extracted 8 are Phase-2 masks;
4. the image-enhancement figure and metrics (benchmarks/enhancement.py);
5. the summary at the top: each of the paper's claims against the stored results of the steps
   above, so the plain statement cannot drift from the numbers.

Each step writes its own section of docs/RESULTS.md, so steps can be run alone (``--steps``)
and a finished grid is never recomputed.

    python -m benchmarks.results --dataset fashion-mnist --budget small
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from benchmarks import _report, accuracy, enhancement

from patsparse.checkpoint import read_json, write_json
from patsparse.errors import InputError, PatsparseError
from patsparse.patterns import theory
from patsparse.patterns.library import positions
from patsparse.pruning.extraction import extract_library, plot_extraction

STEPS = ("theory", "accuracy", "extraction", "enhancement", "summary")
UNSTABLE_SD = 5.0  # accuracy points
GPU_COMMAND = "python -m benchmarks.accuracy --dataset cifar10 --data-root ~/data/cifar10 --budget paper --device cuda"


def theory_step(docs: Path, results: Path) -> None:
    fig = docs / "theory_identities.png"
    theory.plot_identities(fig)
    checks = theory.check_identities()
    body = ["## Pattern theory (paper section 4)", "",
            "Written by `benchmarks/results.py`. The four Gaussian masks of the Phase-2 library sum to "
            "the 3x3 binomial Gaussian [[1,2,1],[2,4,2],[1,2,1]]; the four ELoG masks sum to the "
            "centre-weighted cross [[0,3,0],[3,4,3],[0,3,0]]. These are exact integer identities, "
            "checked here (and by the test suite):", ""]
    body += [f"- {name}: {'holds' if ok else 'FAILS'}" for name, ok in checks.items()]
    body += ["", f"![Phase-2 masks, their sums and the reference filters]({_rel(fig, results)})"]
    _report.update_section("theory", "\n".join(body), results)


def extraction_step(args, docs: Path, results: Path) -> None:
    """Extraction on the grid's dense model of seed 0 (trained now if the grid has not yet)."""
    budget = accuracy.BUDGETS[args.budget]
    model_name = args.extraction_model
    cell = accuracy.Cell(args.dataset, budget, model_name, 0, args.data_root, "cpu", not args.quiet,
                         _report.command_line(__file__, args.argv))
    out = Path(args.out)
    accuracy.run_cell(cell, [accuracy.ROWS[0]], out)
    store = _extraction_store(args)
    fig = docs / f"extraction_{args.dataset}.png"
    if store.exists() and fig.exists():
        done = read_json(store, "extraction result")
    else:
        model = accuracy.load_model(out, args.dataset, budget.name, model_name, 0, "dense")
        train_loader, _ = cell.loaders()
        torch.manual_seed(0)
        res = extract_library(model, train_loader, admm_iters=budget.admm_iters, epochs=budget.admm_epochs,
                              lr=budget.prune_lr, progress=not args.quiet)
        plot_extraction(res, fig)
        done = {"steps": [{"from": int(s.library.shape[0]), "to": s.size,
                           "kept": ["".join(map(str, p)) for p in positions(s.next_library)],
                           "share_kept": float(s.counts[s.kept].sum() / max(1, int(s.counts.sum())))}
                          for s in res.steps],
                "phase2_overlap": res.phase2_overlap(), "summary": res.summary(),
                "date": _report.utc_now(), "machine": _report.machine(), "commit": _report.git_commit(),
                "command": cell.command, "model": model_name, "width": cell.width}
        write_json(store, done)
    rows = [[f"{s['from']} -> {s['to']}", f"{100 * s['share_kept']:.1f}%", " ".join(s["kept"][:12])
             + (" ..." if len(s["kept"]) > 12 else "")] for s in done["steps"]]
    body = [f"## Pattern-library extraction (paper Figure 4), {args.dataset}", "",
            f"Written by `benchmarks/results.py` on the trained dense {done['model']} (width {done['width']}, "
            f"grid budget `{budget.name}`, seed 0): ADMM with the 126 candidate 4-entry masks, then keeping "
            f"the most used patterns, 126 -> 32 -> 12 -> 8 -> 4 ({budget.admm_iters} ADMM iterations x "
            f"{budget.admm_epochs} epochs per step; the paper trains far longer). Patterns are written as "
            "their kept positions, row-major 0..8 (4 = centre).", "",
            _report.md_table(["step", "kernels choosing a kept pattern", "kept patterns (most used first)"], rows), "",
            f"**{done['phase2_overlap']} of the extracted 8 patterns coincide with the designed Phase-2 library** "
            "(the paper reports that extraction converges to it).", "",
            f"![pattern-use histogram per phase]({_rel(fig, results)})", "",
            f"Run {done['date']}, commit {done['commit']}, {_report.machine_line(done['machine'])}; "
            f"command `{done['command']}`."]
    _report.update_section(f"extraction-{args.dataset}", "\n".join(body), results)


def grid_claims(stored: list[dict]) -> dict[str, tuple[str, str]]:
    """Each accuracy claim's evidence and overall word (yes/partly/no/undecided/-) on one budget's
    stored grid rows."""
    by = accuracy.by_model_row(stored)
    models = sorted({r["config"]["model"] for r in stored})
    verdicts: dict[str, list[tuple[str, str, str]]] = {claim: [] for claim, *_ in accuracy.CLAIMS}
    for model in models:
        for claim, _, _, status, word in accuracy.claim_verdicts(by, model):
            if word != "-":
                verdicts[claim].append((model, status, word))
    claims = {}
    for claim, got in verdicts.items():
        if not got:
            claims[claim] = ("not run", "-")
            continue
        # an interval that spans the bar decides nothing either way
        open_ = [m for m, _, word in got if word == "undecided"]
        yes = [m for m, st, word in got if word != "undecided" and st == "supported"]
        no = [m for m, st, word in got if word != "undecided" and st == "not supported"]
        holds = "undecided" if open_ and not yes and not no else \
            "yes" if yes and not no else "partly" if yes else "no"
        parts = [f"{w} {', '.join(ms)}" for w, ms in (("supported on", yes), ("not on", no),
                                                       ("undecided (interval spans the bar) on", open_)) if ms]
        claims[claim] = ("; ".join(parts), holds)
    return claims


def summary_step(args, results: Path) -> None:
    """Each claim against what is stored: grid rows (the chosen budget first, with its evidence;
    every other budget with stored rows beside it), extraction and enhancement results."""
    budget = accuracy.BUDGETS[args.budget]
    stores = {b: accuracy.collect(Path(args.out), args.dataset, b) for b in accuracy.BUDGETS}
    lead = grid_claims(stores[budget.name])
    others = {b: grid_claims(rows) for b, rows in stores.items() if rows and b != budget.name}
    by = accuracy.by_model_row(stores[budget.name])
    n_runs, n_models = len(stores[budget.name]), len({model for model, _ in by})
    rows = [[claim, evidence, holds, *(others[b][claim][1] for b in others)]
            for claim, (evidence, holds) in lead.items()]
    blank = ["-"] * len(others)
    checks = theory.check_identities()
    rows.insert(0, ["Phase-2 masks sum to the Gaussian and ELoG reference filters (section 4)",
                    ", ".join(f"{k}: {'holds' if ok else 'fails'}" for k, ok in checks.items()),
                    "yes" if all(checks.values()) else "no", *blank])
    ext = _extraction_store(args)
    if ext.exists():
        k = read_json(ext, "extraction result")["phase2_overlap"]
        rows.append(["Extraction (126 -> 8) converges to the designed Phase-2 library (Figure 4)",
                     f"{k} of the extracted 8 are Phase-2 masks ({args.extraction_model})", "yes" if k == 8 else "no",
                     *blank])
    enh_dir = _enhancement_dir(args)
    enh = [read_json(f, "enhancement result") for f in sorted(enh_dir.glob("*.json"))] if enh_dir.exists() else []
    for r in enh:
        judged = [q for q in r["paired"] if q["verdict"] in ("supports", "contradicts", "no difference beyond noise")]
        sup = sum(q["verdict"] == "supports" for q in judged)
        rows.append([f"Pattern pruning gives sharper, less noisy saliency (Figure 5), {r['setting']}",
                     enhancement.conclusions([r])[0],
                     "undecided" if not judged else "yes" if sup == len(judged) else "partly" if sup else "no",
                     *blank])
    unstable = []  # a seed that collapsed widens every interval it enters: say so next to the verdicts
    for (model, row), rs in sorted(by.items()):
        accs = [r["acc"] * 100 for r in rs]
        if len(accs) > 1 and statistics.stdev(accs) > UNSTABLE_SD:
            unstable.append(f"{model} {row} ({', '.join(f'{a:.1f}' for a in accs)} % over seeds)")
    body = ["## Summary: the paper's claims against our runs", "",
            f"Written by `benchmarks/results.py` from the stored results of the sections below "
            f"(dataset {args.dataset}, budget `{budget.name}`: {n_runs} grid runs, {n_models} models"
            + (f"; the last column{'s' * (len(others) > 1)} give{'s' * (len(others) == 1)} the verdict at "
               f"budget {', '.join(f'`{b}`' for b in others)}" if others else "") + "). "
            "An accuracy claim is supported on a model when the whole 95% interval of its paired "
            "difference (by seed) clears the claim's bar, not supported when the whole interval misses "
            "it, and undecided otherwise (see the grid section's claim table).", "",
            _report.md_table(["claim", f"our evidence (`{budget.name}`)", f"holds at `{budget.name}`?",
                              *(f"at `{b}`?" for b in others)], rows), "",
            *([f"Unstable rows (seed spread over {UNSTABLE_SD:.0f} points, so their intervals are wide): "
               f"{'; '.join(unstable)}.", ""] if unstable else []),
            f"What limits this budget: {budget.subset or 'all'} training images, {budget.dense_epochs} dense "
            f"epochs and {budget.prune_epochs} for each pruned row, narrow networks, {args.dataset}; the paper "
            "trains 300-400 epochs at full width on CIFAR-10 and ImageNet. Those rows need a GPU "
            f"(`--budget paper`): `{GPU_COMMAND}`."]
    _report.update_section("summary", "\n".join(body), results, first=True)


def _extraction_store(args) -> Path:
    """Where the extraction step stores its result: beside the grid's rows."""
    return Path(args.out).parent / "extraction" / args.dataset / args.budget / f"{args.extraction_model}.json"


def _enhancement_dir(args) -> Path:
    """Where the enhancement step stores its results: beside the grid's rows."""
    return Path(args.out).parent / "enhancement"


def _rel(path: Path, results: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), results.resolve().parent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(accuracy.DATASETS))
    p.add_argument("--data-root", default=None)
    p.add_argument("--budget", default="small", choices=sorted(accuracy.BUDGETS))
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    p.add_argument("--extraction-model", default="vgg16_bn")
    p.add_argument("--out", default=str(accuracy.GRID_OUT))
    p.add_argument("--docs", default=str(_report.REPO / "docs"))
    p.add_argument("--results", default=str(_report.RESULTS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not steps or any(s not in STEPS for s in steps):
        raise InputError(f"--steps must name some of {', '.join(STEPS)}; got {args.steps!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    docs, results = Path(args.docs), Path(args.results)
    docs.mkdir(parents=True, exist_ok=True)
    common = ["--budget", args.budget, "--results", str(results)] + (["--quiet"] if args.quiet else [])
    for step in STEPS:
        if step not in steps:
            continue
        print(f"== {step}", flush=True)
        if step == "theory":
            theory_step(docs, results)
        elif step == "accuracy":
            accuracy.main(["--dataset", args.dataset, "--out", args.out, *common]
                          + (["--data-root", args.data_root] if args.data_root else []))
        elif step == "extraction":
            extraction_step(args, docs, results)
        elif step == "summary":
            summary_step(args, results)
        elif args.dataset == "fashion-mnist":
            enhancement.main(["--grid-out", args.out, "--out", str(_enhancement_dir(args)), "--docs", str(docs),
                              *common])
        else:
            print("enhancement: runs on Fashion-MNIST models and ImageNet photos; skipped for "
                  f"--dataset {args.dataset}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PatsparseError as e:
        print(f"results: error: {e}", file=sys.stderr)
        sys.exit(1)
