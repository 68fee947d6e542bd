"""Where and when a number was measured: CPU, commit and date, for every benchmark's header.

One place reads them so that the harness's JSON and the scripts' markdown name a run alike.
Only the standard library is imported (the harness imports this before any engine).
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def cpu() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags (empty where /proc/cpuinfo is missing)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def git_commit(where: str | Path) -> str:
    """Short commit of the checkout holding ``where``, "+dirty" when tracked files under it differ
    from that commit (the commit alone would then misname the code); "unknown" outside git."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty else "")
