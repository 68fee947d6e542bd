"""The hostile-input suite: every case of hostile_cases.py in its own process, with a timeout.

Why processes: the failures this suite exists for are crashes (SIGSEGV, SIGBUS, heap aborts)
and hangs, which would end an in-process test run instead of failing one test. A case passes
when its process exits 0 (it got the clear error or the right numbers it expects).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hostile_cases import CASES  # noqa: E402

SCRIPT = Path(__file__).parent / "hostile_cases.py"
TIMEOUT_S = 300  # generous: a busy neighbour on both cores must not turn a pass into a hang


def run_case(base: Path, name: str, tmp: Path, env: dict) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, str(SCRIPT), str(base), name, str(tmp)], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} hung (no exit within {TIMEOUT_S} s)")


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory):
    """One build cache for all cases (the untampered model is built once), and the base files."""
    env = {**os.environ, "PATSPARSE_CACHE": str(tmp_path_factory.mktemp("cache")), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    base = tmp_path_factory.mktemp("base")
    proc = run_case(base, "make_base", base, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, env


@pytest.mark.parametrize("name", CASES)
def test_hostile_case(hostile_env, name, tmp_path):
    base, env = hostile_env
    proc = run_case(base, name, tmp_path, env)
    assert proc.returncode >= 0, f"{name} crashed with signal {-proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0 and "case passed" in proc.stdout, f"{name} failed:\n{proc.stderr[-3000:]}"


def test_there_are_enough_cases():
    assert len(CASES) >= 40
