"""``patsparse extract``: find which patterns a trained model wants (paper section 5.2 / 7.1).

Runs the extraction schedule (default 126 -> 32 -> 12 -> 8 -> 4), prints each phase's library,
writes one JSON library per phase (usable as ``--library`` of ``patsparse prune``), a plot of each
library, the pattern-use histogram (the paper's Figure 4) and says how many of the extracted 8
coincide with the designed Phase-2 library.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from ..errors import InputError
from .prune import add_source_args, load_source
from .train import calm_openmp

EXAMPLE = textwrap.dedent("""\
    examples:
      patsparse extract --model runs/r8 --out runs/r8_extract
      patsparse extract --model runs/r8 --schedule 32,12,8,4 --include-centre --admm-iters 3 --out ex

    Writes OUT/library_<K>.json and OUT/library_<K>.png per phase, OUT/histogram.png and
    OUT/summary.txt.""")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract a pattern library from a trained model (126 -> ... -> 4)",
                       description="Pattern library extraction: ADMM steps from all candidate patterns "
                                   "down a schedule of library sizes, keeping the most selected patterns.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    a = p.add_argument
    a("--out", required=True, help="output directory")
    a("--schedule", default="32,12,8,4", help="library sizes after each step (default 32,12,8,4)")
    a("--include-centre", action="store_true", help="start from the 56 masks keeping the centre, not 126")
    a("--admm-iters", type=int, default=2, help="ADMM iterations per step (default 2)")
    a("--epochs", type=int, default=1, help="SGD epochs per ADMM iteration (default 1)")
    a("--rho", type=float, default=1e-2, help="initial ADMM penalty (default 0.01, x3 per iteration)")
    a("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    p.set_defaults(func=run)


def _schedule(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--schedule must be comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    calm_openmp()  # before the first torch import: extraction trains with ADMM
    from ..patterns.library import positions, save_library
    from ..patterns.theory import plot_library
    from ..pruning.extraction import extract_library, plot_extraction

    out = Path(args.out)
    schedule = _schedule(args.schedule)
    model, train_loader, _, dataset = load_source(args, out)
    result = extract_library(model, train_loader, schedule, include_centre=args.include_centre,
                             admm_iters=args.admm_iters, epochs=args.epochs, rho=args.rho, lr=args.lr,
                             device=args.device, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    for step in result.steps:
        lib = step.next_library
        counts = step.counts[step.kept].tolist()
        save_library(lib, out / f"library_{step.size}.json", name=f"extracted from {args.model} on {dataset}")
        plot_library(lib, out / f"library_{step.size}.png", f"{step.size} patterns (kernels selecting each)", counts)
        print(f"library of {step.size}: " + ", ".join(
            f"{''.join(map(str, p))} ({c})" for p, c in zip(positions(lib), counts)))
    plot_extraction(result, out / "histogram.png")
    summary = result.summary()
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"libraries, plots and histogram written to {out}")
    return 0
