"""The hostile-input suite: every case of hostile_cases.py in its own process, with a timeout.

Why processes: the failures this suite exists for are crashes (SIGSEGV, SIGBUS, heap aborts)
and hangs, which would end an in-process test run instead of failing one test (isolated.py).
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostile_cases  # noqa: E402
import isolated  # noqa: E402

TIMEOUT_S = 300  # generous: a busy neighbour on both cores must not turn a pass into a hang


def run_case(ctx, base: Path, name: str, tmp: Path) -> None:
    log = tmp / f"{name}.log"
    rc = isolated.run(ctx, hostile_cases.run, (str(base), name, str(tmp), str(log)), TIMEOUT_S)
    out = log.read_text()[-3000:] if log.exists() else ""
    assert rc is not None, f"{name} hung (no exit within {TIMEOUT_S} s)\n{out}"
    assert rc >= 0, f"{name} crashed with signal {-rc}\n{out}"
    assert rc == 0, f"{name} failed:\n{out}"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The process context (one build cache for all cases: the untampered model is built once)
    and the base files."""
    saved = os.environ.get("PATSPARSE_CACHE")
    os.environ["PATSPARSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    ctx = isolated.forkserver(["hostile_cases", "onnx"])
    base = tmp_path_factory.mktemp("base")
    run_case(ctx, base, "make_base", base)
    yield ctx, base
    if saved is None:
        os.environ.pop("PATSPARSE_CACHE")
    else:
        os.environ["PATSPARSE_CACHE"] = saved


@pytest.mark.parametrize("name", hostile_cases.CASES)
def test_hostile_case(hostile, name, tmp_path):
    ctx, base = hostile
    run_case(ctx, base, name, tmp_path)


def test_there_are_enough_cases():
    assert len(hostile_cases.CASES) >= 40
