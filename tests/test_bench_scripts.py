"""benchmarks/ is one package: scripts import each other as ``benchmarks.X``, never patch sys.path,
and each runs as ``python -m benchmarks.X``."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "__init__.py")
SIBLINGS = {p.stem for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_imports_siblings_through_the_package(path):
    source = path.read_text()
    assert "sys.path" not in source, f"{path.name} patches sys.path; import benchmarks.X instead"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bare = [a.name for a in node.names if a.name.split(".")[0] in SIBLINGS]
        elif isinstance(node, ast.ImportFrom):
            bare = [node.module] if node.level == 0 and (node.module or "").split(".")[0] in SIBLINGS else []
        else:
            continue
        assert not bare, f"{path.name}:{node.lineno} imports {bare} bare; write `from benchmarks import ...`"


@pytest.mark.slow  # one interpreter with torch per script
@pytest.mark.parametrize("path", [p for p in SCRIPTS if not p.stem.startswith("_")], ids=lambda p: p.stem)
def test_runs_as_a_module(path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", f"benchmarks.{path.stem}", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]
