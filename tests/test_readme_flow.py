"""The README's command-line block, run in sequence exactly as written.

The commands are taken from README.md itself, so the README cannot drift from what works. The
budget is made tiny only through what the README documents (``PATSPARSE_SUBSET``); the commands
run in a fresh directory through ``bash``, with ``patsparse`` and ``python`` on PATH pointing at
this interpreter and these sources.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The lines of the one ``sh`` block of README.md that starts the flow with `patsparse train`."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    flows = [b for b in blocks if "patsparse train" in b]
    assert len(flows) == 1, f"README.md must hold exactly one sh block with the CLI flow, found {len(flows)}"
    return [line for line in flows[0].splitlines() if line.strip()]


def _shims(bin_dir: Path) -> None:
    """``patsparse`` and ``python`` as a user's venv would have them, for this checkout."""
    bin_dir.mkdir()
    for name, args in (("patsparse", '-m patsparse "$@"'), ("python", '"$@"')):
        f = bin_dir / name
        f.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args}\n')
        f.chmod(f.stat().st_mode | stat.S_IXUSR)


def run_readme_flow(tmp_path: Path, subset: int) -> dict[str, str]:
    from patsparse.data import locate

    if not (locate("fashion-mnist", "train") and locate("fashion-mnist", "test")):
        pytest.skip("the README flow trains on Fashion-MNIST, which is not installed here")
    _shims(tmp_path / "bin")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATSPARSE_SUBSET": str(subset),
           "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    outputs = {}
    for line in readme_commands():
        r = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"README command failed ({r.returncode}): {line}\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stderr, f"README command printed a traceback: {line}\n{r.stderr}"
        outputs[line] = r.stdout
    return outputs


def check_results(work: Path, outputs: dict[str, str]) -> None:
    for f in ("runs/r18/model.json", "runs/r18_8x/model.json", "runs/r18_extract/library_4.json",
              "r18.compiled/manifest.json", "r18.onnx"):
        assert (work / f).is_file(), f"the README flow did not write {f}"
    profile = next(out for line, out in outputs.items() if "--profile" in line)
    assert "latency" in profile and "pattern_conv" in profile
    # the compiled model and the ONNX export of the same pruned model agree
    import onnxruntime as ort

    x, y = np.load(work / "x.npy"), np.load(work / "y.npy")
    sess = ort.InferenceSession(str(work / "r18.onnx"), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert y.shape == ref.shape == (4, 10)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    # the normalisation train recorded reached the ONNX file through prune (README's metadata example)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(work / "r18.onnx")).metadata_props}
    assert json.loads(meta["patsparse.normalization"])["mean"] == [0.286]


def test_readme_block_is_the_flow():
    lines = readme_commands()
    firsts = [line.split()[1] for line in lines if line.startswith("patsparse ")]
    assert firsts[:5] == ["train", "prune", "extract", "compile", "export-onnx"]
    assert not any("[" in line.split("#")[0] for line in lines), "optional [..] arguments do not run"


def test_readme_flow_tiny(tmp_path):
    """16 training and 16 test images: every command runs; the numbers mean nothing."""
    check_results(tmp_path / "work", run_readme_flow(tmp_path, subset=16))


@pytest.mark.slow
def test_readme_flow_as_documented(tmp_path):
    """The budget the README suggests for a first try (PATSPARSE_SUBSET=2000)."""
    outputs = run_readme_flow(tmp_path, subset=2000)
    check_results(tmp_path / "work", outputs)
    prune = next(out for line, out in outputs.items() if line.startswith("patsparse prune"))
    assert "points) at 8.0x with phase2" in prune
