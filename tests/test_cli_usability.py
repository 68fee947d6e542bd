"""The command line as a new user meets it: paths vs zoo names, errors before slow steps, a
compiled model's profile, a closed pipe, the quick-trial subset, accuracy changes in points."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import patsparse as ps
from patsparse.cli import build_parser, main
from patsparse.data import get_loaders, locate
from patsparse.errors import FormatError, InputError
from patsparse.train.loop import accuracy_change

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pattern-pruned ConvNet saved with its input shape and normalisation, and its compiled form."""
    from patsparse import models
    from patsparse.pruning.projection import project_model

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = models.get("convnet", num_classes=10, in_channels=1, width=0.5, variant="cifar")
    project_model(model, rate=4)
    model.patsparse_normalization = {"mean": [0.286], "std": [0.353]}
    ps.save(model.eval(), root / "pruned", input_shape=(1, 28, 28))
    assert main(["compile", str(root / "pruned"), "-o", str(root / "compiled"), "--threads", "1"]) == 0
    return root


@pytest.fixture
def no_datasets(tmp_path, monkeypatch):
    """Data lookups that find nothing but scikit-learn digits, so loading data first would fail."""
    monkeypatch.setenv("PATSPARSE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if locate("cifar10", "train"):
        pytest.skip("CIFAR-10 is installed system-wide; the test needs a dataset that is missing")


def error_of(argv, capsys) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


def test_model_that_looks_like_a_path_is_reported_missing(tmp_path, capsys, no_datasets):
    err = error_of(["prune", "--model", "runs/r18", "--out", str(tmp_path / "o")], capsys)
    assert "directory runs/r18 does not exist" in err and "unknown model" not in err
    (tmp_path / "file").write_text("x")
    err = error_of(["prune", "--model", str(tmp_path / "file"), "--out", str(tmp_path / "o")], capsys)
    assert "is a file, not a saved model directory" in err
    err = error_of(["extract", "--model", "./nowhere", "--out", str(tmp_path / "o")], capsys)
    assert "does not exist" in err
    err = error_of(["bench", "runs/r18_8x"], capsys)
    assert "runs/r18_8x: no such file or directory" in err and "unknown model" not in err


@pytest.mark.parametrize("argv, message", [
    (["--library", "phase9"], "unknown pattern library 'phase9'"),
    (["--library", "missing_library.json"], "missing_library.json"),
    (["--rate", "1"], "recipe: rate must be"),
    (["--model", "alexnet"], "unknown model 'alexnet'"),
    (["--dense-epochs", "0"], "dense parent must be trained first"),
    (["--dynamic", "2"], "dynamic must be a fraction"),
    (["--dynamic", "0.5", "--admm-iters", "2"], "asks for dynamic masks, which replace ADMM's penalty"),
    (["--dynamic-reach", "5"], "dynamic_reach configure dynamic masks"),
    (["--reconstruct", "-1"], "reconstruct must be an int >= 0"),
])
def test_prune_rejects_bad_options_before_loading_data(tmp_path, capsys, no_datasets, argv, message):
    """CIFAR-10 is missing: had the data been loaded first, the error would name the dataset."""
    base = {"--model": "convnet", "--dataset": "cifar10", "--out": str(tmp_path / "o")}
    for i in range(0, len(argv), 2):
        base[argv[i]] = argv[i + 1]
    err = error_of(["prune", *[v for kv in base.items() for v in kv]], capsys)
    assert message in err and "not found. Looked in" not in err


def test_compile_takes_the_saved_input_shape(saved, tmp_path, capsys):
    assert main(["compile", str(saved / "pruned"), "-o", str(tmp_path / "c"), "--threads", "1"]) == 0
    assert "input (1, 28, 28)" in capsys.readouterr().out
    model = ps.load(saved / "pruned")
    ps.save(model, tmp_path / "no_shape")  # the loaded model carries its shape: drop it from the file
    meta = tmp_path / "no_shape" / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "input_shape": None}))
    err = error_of(["compile", str(tmp_path / "no_shape"), "-o", str(tmp_path / "c2")], capsys)
    assert "does not record its input shape" in err and "--input-shape" in err


@pytest.mark.parametrize("flags, oneshot", [([], True), (["--admm"], False), (["--admm-iters", "2"], False),
                                           (["--penalty-reach", "2"], False), (["--oneshot"], True)])
def test_prune_method_one_shot_unless_admm_is_asked_for(flags, oneshot):
    from patsparse.cli import build_parser
    from patsparse.cli.prune import _recipe

    args = build_parser().parse_args(["prune", "--model", "convnet", "--out", "o", *flags])
    assert _recipe(args).oneshot is oneshot


def test_prune_one_shot_with_an_admm_knob_is_an_error(tmp_path, capsys, no_datasets):
    err = error_of(["prune", "--model", "convnet", "--dataset", "cifar10", "--out", str(tmp_path / "o"),
                    "--oneshot", "--rho", "0.1"], capsys)
    assert "rho configure ADMM, which a one-shot run skips" in err and "not found. Looked in" not in err


def test_run_on_a_pruned_model_says_compile_first(saved, capsys):
    err = error_of(["run", str(saved / "pruned")], capsys)
    assert "not a compiled one" in err and f"patsparse compile {saved / 'pruned'}" in err
    assert "no such compiled model directory" in error_of(["run", str(saved / "missing")], capsys)


def test_profile_shares_are_of_the_measured_latency(saved, capsys):
    assert main(["run", str(saved / "compiled"), "--repeats", "5", "--profile"]) == 0
    out = capsys.readouterr().out
    latency = float(re.search(r"median ([0-9.]+) ms", out).group(1))
    rows = re.findall(r"^(\S+)\s+(?:\S+\s+)?([0-9.-]+)\s+([0-9.-]+)%", out, flags=re.M)
    assert rows and rows[-1][0] == "outside"
    half = 0.0005  # ms and the latency are printed to 3 decimals, the share to 1
    for _, ms, pct in rows:  # the share must be ms / latency for some values that print as these
        lo, hi = (float(ms) - half) / (latency + half), (float(ms) + half) / max(latency - half, 1e-9)
        assert 100 * lo - 0.051 <= float(pct) <= 100 * hi + 0.051
    assert abs(sum(float(ms) for _, ms, _ in rows) - latency) <= 0.0006 * (len(rows) + 1)


def test_profile_into_a_closed_pipe_ends_quietly(saved):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as after `| head` has had enough
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "patsparse", "run", str(saved / "compiled"), "--repeats", "3",
                        "--profile"], stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    os.close(write)
    assert r.returncode == 141 and r.stderr == "", r.stderr


def test_train_out_is_the_run_directory():
    args = build_parser().parse_args(["train", "--model", "convnet", "--out", "runs/x"])
    assert args.run_dir == "runs/x"


def test_quick_subset_caps_train_and_test(tmp_path, monkeypatch, capsys):
    train, test = get_loaders("digits", batch_size=8, subset=40, test_subset=30)
    assert len(train.dataset) == 40 and len(test.dataset) == 30
    monkeypatch.setenv("PATSPARSE_SUBSET", "24")
    run = tmp_path / "run"
    assert main(["train", "--model", "convnet", "--dataset", "digits", "--width", "0.25", "--epochs", "1",
                 "--batch-size", "8", "--out", str(run), "--quiet"]) == 0
    settings = json.loads((run / "model.json").read_text())["cli"]
    assert settings["subset"] == 24 and settings["batch_size"] == 3  # 24 // 8: several steps an epoch
    monkeypatch.setenv("PATSPARSE_SUBSET", "lots")
    err = error_of(["train", "--model", "convnet", "--dataset", "digits", "--out", str(tmp_path / "r2")], capsys)
    assert "PATSPARSE_SUBSET must be a positive integer" in err


def test_accuracy_change_is_in_points():
    assert accuracy_change(0.9120, 0.9010) == "dense 91.20% -> pruned 90.10% (-1.10 points)"
    assert accuracy_change(0.5, 0.525).endswith("(+2.50 points)")


def test_normalisation_travels_with_the_saved_model(saved, tmp_path):
    model = ps.load(saved / "pruned")
    assert model.patsparse_normalization == {"mean": [0.286], "std": [0.353]}
    ps.save(model, tmp_path / "again")
    assert ps.load(tmp_path / "again").patsparse_normalization == model.patsparse_normalization
    meta = tmp_path / "again" / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "std": [0]}))
    with pytest.raises(FormatError, match="input normalisation"):
        ps.load(tmp_path / "again")
    model.patsparse_normalization = {"mean": [0.1], "std": [float("nan")]}
    with pytest.raises(InputError, match="patsparse_normalization"):
        ps.save(model, tmp_path / "bad")
