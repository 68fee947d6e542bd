"""Run a function in its own process, so that a crash or a hang fails one case, not the run.

Processes are forked from a multiprocessing forkserver that has imported the heavy modules once
(torch, patsparse, the test module), so a case costs its own work, not an interpreter start;
the server never runs OpenMP, so every case starts with a fresh thread pool.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Callable


def forkserver(preload: list[str]):
    """A forkserver context that preloads ``preload``. The server imports them with the
    environment's path (Python 3.11 ignores this process's sys.path there), so this directory
    joins PYTHONPATH first; call it before any other forkserver use in the process."""
    here = str(Path(__file__).parent)
    path = os.environ.get("PYTHONPATH", "")
    if here not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, path]))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    return ctx


def run(ctx, target: Callable, args: tuple, timeout_s: float) -> int | None:
    """Exit code of ``target(*args)`` in a forked process (0 = returned, 1 = raised, < 0 = killed
    by that signal), or None if it was still running after ``timeout_s`` (it is then killed)."""
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(timeout_s)
    if p.is_alive():
        p.kill()
        p.join()
        return None
    return p.exitcode
