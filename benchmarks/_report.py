"""Shared plumbing of the evidence scripts: provenance (machine, date, commit, command) and
docs/RESULTS.md written in sections, so that each script (accuracy grid, enhancement figure,
extraction...) replaces only its own part and a re-run never clobbers another script's results.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import subprocess
from pathlib import Path

import torch

from patsparse.checkpoint import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "RESULTS.md"
BENCH = REPO / "docs" / "bench"  # what benchmark scripts store and commit

_HEADER = """# Results: which of the paper's claims our runs support

Every section below is written by a script in `benchmarks/` (named in the section) from runs
on the machine it names; re-running a script replaces its section only. Numbers are ours, not
the paper's; the paper's are quoted as such.
"""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(script: str | Path, argv: list[str]) -> str:
    """The command as a user would retype it from the repository root."""
    script = Path(script).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in ["python", str(script), *argv])


def add_zoo_args(ap, *, rate: float) -> None:
    """--model / --variant / --rate for the scripts that time one zoo model (rate 1 = dense)."""
    ap.add_argument("--model", default="vgg16_bn")
    ap.add_argument("--variant", default="cifar", choices=["cifar", "imagenet"])
    ap.add_argument("--rate", type=float, default=rate, help="1 = dense")


def machine() -> dict[str, str | int]:
    """What a reader needs to judge a timing or a budget: CPU model, cores, torch, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "os": f"{platform.system()} {platform.release()}"}


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), GPU: {m['gpu']}, "
            f"torch {m['torch']}, Python {m['python']}, {m['os']}")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
