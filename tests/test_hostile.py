"""The hostile-input suite: every case of hostile_cases.py in its own process, with a timeout.

Why processes: the failures this suite exists for are crashes (SIGSEGV, SIGBUS, heap aborts)
and hangs, which would end an in-process test run instead of failing one test. The processes
are forked from a server that has imported torch and patsparse once (multiprocessing's
forkserver), so a case costs its own work, not an interpreter start; the server never runs
OpenMP, so every case starts with a fresh thread pool.
"""

import multiprocessing
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostile_cases  # noqa: E402

TIMEOUT_S = 300  # generous: a busy neighbour on both cores must not turn a pass into a hang


def run_case(ctx, base: Path, name: str, tmp: Path) -> None:
    log = tmp / f"{name}.log"
    p = ctx.Process(target=hostile_cases.run, args=(str(base), name, str(tmp), str(log)))
    p.start()
    p.join(TIMEOUT_S)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{name} hung (no exit within {TIMEOUT_S} s)\n{log.read_text()[-3000:]}")
    out = log.read_text()[-3000:] if log.exists() else ""
    assert p.exitcode >= 0, f"{name} crashed with signal {-p.exitcode}\n{out}"
    assert p.exitcode == 0, f"{name} failed:\n{out}"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The process context (one build cache for all cases: the untampered model is built once)
    and the base files."""
    saved = {k: os.environ.get(k) for k in ("PATSPARSE_CACHE", "PYTHONPATH")}
    os.environ["PATSPARSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    # the server imports its preload with the environment's path, not this process's sys.path
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), saved["PYTHONPATH"]]))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["hostile_cases", "onnx"])
    base = tmp_path_factory.mktemp("base")
    run_case(ctx, base, "make_base", base)
    yield ctx, base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("name", hostile_cases.CASES)
def test_hostile_case(hostile, name, tmp_path):
    ctx, base = hostile
    run_case(ctx, base, name, tmp_path)


def test_there_are_enough_cases():
    assert len(hostile_cases.CASES) >= 40
