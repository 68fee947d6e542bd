"""`patsparse train` / `patsparse demo` from the command line: help, a run, --resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from patsparse.cli import build_parser, main

TINY = ["--model", "convnet", "--dataset", "digits", "--width", "0.5", "--subset", "128",
        "--batch-size", "32", "--lr", "0.05", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_help_says_what_and_shows_examples(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "Train a model" in out and "--resume" in out
    assert "patsparse train --model resnet18 --dataset fashion-mnist --width 0.25 --epochs 1" in out
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--help"])
    assert "example: patsparse demo" in capsys.readouterr().out


def test_train_then_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and str(run) in out
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"] == {"name": "convnet", "num_classes": 10, "in_channels": 1, "width": 0.5,
                             "variant": "cifar"}
    assert meta["input_shape"] == [1, 28, 28] and meta["dataset"] == "digits"

    # the same command again must not overwrite the finished run
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", str(run)]) == 1
    assert "already holds a training run" in capsys.readouterr().err

    # --resume with only the run dir takes every option from the checkpoint
    assert main(["train", "--run-dir", str(run), "--resume", "--quiet"]) == 0
    assert "after 1 epochs" in capsys.readouterr().out

    # changing a setting that alters the numbers is refused, naming it
    assert main(["train", "--run-dir", str(run), "--resume", "--epochs", "2"]) == 1
    assert "epochs: checkpoint 1 vs now 2" in capsys.readouterr().err


def test_bad_input_exit_codes(tmp_path, capsys):
    assert main(["train", "--model", "alexnet", "--dataset", "digits", "--run-dir", str(tmp_path)]) == 1
    assert "unknown model 'alexnet'" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits"]) == 1
    assert "--model is required" in capsys.readouterr().err
    assert main(["train", "--model", "convnet", "--dataset", "mnist", "--data-root", str(tmp_path / "none"),
                 "--run-dir", str(tmp_path / "r")]) in (0, 1)  # 1 unless MNIST is installed somewhere


def test_demo_all_stages(tmp_path):
    """train -> prune 8x -> compile -> side-by-side timing, on a tiny digits budget."""
    from patsparse import describe
    from patsparse.demo import run_demo

    lines = []
    results = run_demo(tmp_path / "demo", epochs=1, subset=512, dataset="digits", admm_iters=1,
                       retrain_epochs=1, log=lines.append)
    stage = results["train"]
    assert 0.0 <= stage.accuracy <= 1.0 and stage.dataset == "digits"
    assert any("digits test accuracy" in line for line in lines)
    assert (tmp_path / "demo" / "train" / "model.safetensors").is_file()
    x, _ = next(iter(stage.test_loader))
    assert stage.model(x).shape == (len(x), 10)

    pruned = results["prune"]
    assert abs(pruned.conv_rate - 8.0) / 8.0 < 0.02
    assert describe(pruned.model).conv3x3_rate == pytest.approx(pruned.conv_rate)
    assert (pruned.path / "model.json").is_file()
    assert any(line.startswith("[prune] test accuracy: dense ") and " points); " in line for line in lines)
    # the compiled model reproduces PyTorch on the whole test set
    assert any("compiled model test accuracy" in line and f"(PyTorch: {pruned.accuracy:.2%})" in line
               and f"accuracy {pruned.accuracy:.2%}" in line for line in lines)
    bench = results["compile"]
    assert {e.name for e in bench.ok()} >= {"patsparse", "torch", "onnxruntime"}
    assert any(line.startswith("[bench] patsparse vs ONNX Runtime") for line in lines)


@pytest.mark.slow
@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_demo_reaches_real_fashion_mnist_accuracy(tmp_path):
    """The default demo training stage on real Fashion-MNIST (measured 88.4% on 2026-11-22)."""
    from patsparse.demo import run_demo

    torch.set_num_threads(2)
    results = run_demo(tmp_path / "demo", log=lambda s: None)
    stage = results["train"]
    assert stage.dataset == "fashion-mnist" and stage.accuracy >= 0.86
    # issue 3's bar for the demo: 8x pruning keeps accuracy within a point of the dense parent
    assert results["prune"].accuracy >= stage.accuracy - 0.01
