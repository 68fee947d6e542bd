"""Shared plumbing of the evidence scripts: provenance (machine, date, commit, command) and
docs/RESULTS.md written in sections, so that each script (accuracy grid, enhancement figure,
extraction...) replaces only its own part and a re-run never clobbers another script's results.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shlex
import statistics
from pathlib import Path
from typing import Sequence

import torch

from patsparse.bench import provenance as prov
from patsparse.checkpoint import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "RESULTS.md"
BENCH = REPO / "docs" / "bench"  # what benchmark scripts store and commit

_HEADER = """# Results: which of the paper's claims our runs support

Every section below is written by a script in `benchmarks/` (named in the section) from runs
on the machine it names; re-running a script replaces its section only. Numbers are ours, not
the paper's; the paper's are quoted as such.
"""


utc_now = prov.utc_now


def command_line(script: str | Path, argv: list[str]) -> str:
    """The command as a user would retype it from the repository root: ``python -m benchmarks.X``
    for the script file ``script`` (its ``__file__``)."""
    module = Path(script).resolve().relative_to(REPO).with_suffix("")
    return " ".join(shlex.quote(a) for a in ["python", "-m", ".".join(module.parts), *argv])


def add_zoo_args(ap, *, rate: float) -> None:
    """--model / --variant / --rate for the scripts that time one zoo model (rate 1 = dense)."""
    ap.add_argument("--model", default="vgg16_bn")
    ap.add_argument("--variant", default="cifar", choices=["cifar", "imagenet"])
    ap.add_argument("--rate", type=float, default=rate, help="1 = dense")


def machine() -> dict[str, str | int]:
    """What a reader needs to judge a timing or a budget: CPU model, cores, torch, threads."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": prov.cpu()[0], "cores": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "os": f"{platform.system()} {platform.release()}"}


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), GPU: {m['gpu']}, "
            f"torch {m['torch']}, Python {m['python']}, {m['os']}")


def git_commit() -> str:
    return prov.git_commit(REPO)


def provenance(script: str | Path, argv: list[str]) -> list[str]:
    """The header every benchmark page starts with: date and commit, machine, the command that
    wrote it (``script`` is the writing script's ``__file__``), as markdown bullets."""
    return [f"- date {utc_now()}, commit {git_commit()}", f"- machine: {machine_line(machine())}",
            f"- command: `{command_line(script, argv)}`"]


def update_section(name: str, body: str, path: Path = RESULTS, *, first: bool = False) -> None:
    """Replace (or add) the section ``name`` of ``path``, delimited by HTML comments; a new
    section goes at the end, or before every other section with ``first``."""
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    elif first and "<!-- section:" in text:
        i = text.index("<!-- section:")
        text = text[:i] + block + "\n" + text[i:]
    else:
        text = text.rstrip() + "\n\n" + block
    atomic_write_bytes(path, text.encode())


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval of the mean (half-width nan
    for a single value): every verdict over seeds in the benchmarks is read from this."""
    from scipy import stats

    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
