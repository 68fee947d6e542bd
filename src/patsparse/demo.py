"""``patsparse demo``: the whole flow on real data, small enough for a 2-core machine.

The demo is a list of stages. Each stage is a function taking the shared :class:`DemoContext`
and the previous stages' results and returning its own result, so later parts of the project
(prune, compile, bench) append a stage without touching the earlier ones.

Stage 1, :func:`train_stage`: trains the small ConvNet on Fashion-MNIST (falling back to
scikit-learn's digits, saying so, when Fashion-MNIST is not installed) and reports test accuracy.
Stage 2, :func:`prune_stage`: pattern + connectivity pruning at 8x (Phase-2 library, ADMM then
masked retraining) of a copy of that model; prints dense vs pruned accuracy and saves it.
Stage 3, :func:`compile_stage`: compiles the pruned model to native code, checks it gives the
same test accuracy, and times it side by side against PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import models
from .data import get_loaders, locate
from .train import TrainConfig, fit, seed_everything


@dataclass
class DemoContext:
    """Settings shared by all stages. ``out_dir`` gets one sub-directory per stage."""

    out_dir: Path
    epochs: int = 3
    subset: int | None = 20000
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    dataset: str | None = None  # None: Fashion-MNIST if installed, else digits
    log: Callable[[str], None] = print
    rate: float = 8.0
    admm_iters: int = 2
    retrain_epochs: int = 2
    threads: int = 2
    results: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    model: nn.Module
    train_loader: DataLoader
    test_loader: DataLoader
    accuracy: float
    dataset: str
    run_dir: Path
    seconds: float


def pick_dataset(ctx: DemoContext) -> str:
    if ctx.dataset:
        return ctx.dataset
    if locate("fashion-mnist", "train") and locate("fashion-mnist", "test"):
        return "fashion-mnist"
    ctx.log("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist, or "
            "patsparse train --download); the demo uses scikit-learn's 8x8 digits instead.")
    return "digits"


def train_stage(ctx: DemoContext) -> TrainResult:
    """Train the demo ConvNet for ``ctx.epochs`` epochs and measure its test accuracy."""
    name = pick_dataset(ctx)
    start = time.perf_counter()
    train_loader, test_loader = get_loaders(name, batch_size=ctx.batch_size, subset=ctx.subset,
                                            seed=ctx.seed)
    info = train_loader.dataset.info
    spec = {"name": "convnet", "num_classes": info.num_classes, "in_channels": info.in_channels,
            "width": 1.0, "variant": "cifar"}
    seed_everything(ctx.seed)
    model = models.get(**spec)
    ctx.log(f"[train] ConvNet ({sum(p.numel() for p in model.parameters()):,} parameters) on "
            f"{name}: {len(train_loader.dataset):,} training / {len(test_loader.dataset):,} test "
            f"images, {ctx.epochs} epochs, {torch.get_num_threads()} threads")
    run_dir = ctx.out_dir / "train"
    # Adam reached 84% vs SGD's 82% on 10k images in 2 epochs (measured): the better demo start.
    config = TrainConfig(epochs=ctx.epochs, optimizer="adam", lr=2e-3, weight_decay=0.0, seed=ctx.seed,
                         device=ctx.device, checkpoint_minutes=None)
    meta = {"model": spec, "dataset": name, "input_shape": [info.in_channels, *info.image_size],
            "mean": list(info.mean), "std": list(info.std)}
    result = fit(model, train_loader, test_loader, config, run_dir, meta=meta)
    seconds = time.perf_counter() - start
    ctx.log(f"[train] {name} test accuracy: {result['test_acc']:.2%} ({seconds:.0f} s)")
    return TrainResult(model.eval(), train_loader, test_loader, result["test_acc"], name, run_dir, seconds)


@dataclass
class PruneResult:
    model: nn.Module
    accuracy: float
    conv_rate: float
    model_rate: float
    path: Path
    seconds: float


def prune_stage(ctx: DemoContext, trained: TrainResult) -> PruneResult:
    """Prune a copy of the trained model at ``ctx.rate`` with the Phase-2 library and save it."""
    from . import describe, prune, save
    from .train.loop import accuracy_change, evaluate

    start = time.perf_counter()
    model = copy.deepcopy(trained.model)
    ctx.log(f"[prune] pattern + connectivity pruning at {ctx.rate:g}x (Phase-2 library): "
            f"{ctx.admm_iters} ADMM iterations x 1 epoch, then {ctx.retrain_epochs} epochs of masked "
            "retraining")
    prune(model, trained.train_loader, rate=ctx.rate, library="phase2", oneshot=False, epochs=1,
          admm_iters=ctx.admm_iters, retrain_epochs=ctx.retrain_epochs, device=ctx.device)
    model.eval()
    accuracy = evaluate(model, trained.test_loader, device=ctx.device)["acc"]
    report = describe(model)
    ctx.log(str(report))
    path = ctx.out_dir / "prune" / "model.pats"
    info = trained.train_loader.dataset.info
    model.patsparse_normalization = {"mean": list(info.mean), "std": list(info.std)}  # what the loaders applied
    save(model, path, input_shape=(info.in_channels, *info.image_size))
    seconds = time.perf_counter() - start
    ctx.log(f"[prune] test accuracy: {accuracy_change(trained.accuracy, accuracy)}; 3x3-conv rate "
            f"{report.conv3x3_rate:.2f}x, whole model {report.model_rate:.2f}x; saved to {path} ({seconds:.0f} s)")
    return PruneResult(model, accuracy, report.conv3x3_rate, report.model_rate, path, seconds)


def compile_stage(ctx: DemoContext, trained: TrainResult, pruned: PruneResult) -> Any:
    """Compile the pruned model, check its test accuracy, and time it against PyTorch and ONNX
    Runtime side by side (each engine in its own process, interleaved, medians)."""
    from . import compile as ps_compile
    from .bench.model import BenchModel
    from .bench.report import table

    x0, _ = next(iter(trained.test_loader))
    example = x0[:1].to("cpu")
    start = time.perf_counter()
    fast = ps_compile(pruned.model.cpu(), example, threads=ctx.threads)
    ctx.log(f"[compile] built native code in {time.perf_counter() - start:.1f} s")
    correct = total = 0
    worst = 0.0
    with torch.no_grad():
        for x, y in trained.test_loader:
            out = fast(x)
            ref = pruned.model(x)
            worst = max(worst, float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    ctx.log(f"[compile] compiled model test accuracy {correct / total:.2%} (PyTorch: "
            f"{pruned.accuracy:.2%}); max relative difference from PyTorch {worst:.1e}")
    fast.save(ctx.out_dir / "compile")
    bench_model = BenchModel.from_module(pruned.model, tuple(example.shape[1:]), name="demo ConvNet",
                                         rate=ctx.rate)
    result = _bench_with_default_openmp(bench_model, ctx.threads)
    ctx.log(f"[bench] batch 1, {ctx.threads} threads, the same pruned model in every engine:")
    ctx.log(table(result))
    ours = next((e for e in result.ok() if e.name == "patsparse"), None)
    if ours:
        for e in result.ok():
            if e.name != "patsparse":
                ratio = e.median_ms / ours.median_ms
                ctx.log(f"[bench] patsparse vs {e.label}: {ratio:.2f}x "
                        f"({'faster' if ratio >= 1 else 'slower'}, median latency)")
    return result


def _bench_with_default_openmp(bench_model: Any, threads: int) -> Any:
    """Time the engines as a user serving the model would run them: the demo's training set
    passive OpenMP waits (cli.train.calm_openmp), which cost every layer a thread wake-up; the
    bench workers drop them (harness.Worker) and run with OpenMP's defaults."""
    from .bench.harness import run_bench

    return run_bench(bench_model, ["patsparse", "torch", "onnxruntime"], threads=threads,
                     repeats=200, block=10)


def run_demo(out_dir: str | Path | None = None, *, epochs: int = 3, subset: int | None = 20000,
             seed: int = 0, device: str = "cpu", dataset: str | None = None,
             rate: float = 8.0, admm_iters: int = 2, retrain_epochs: int = 2, threads: int = 2,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage; returns {stage name: result}. ``out_dir`` defaults to a new
    ``runs/demo-<timestamp>`` so earlier demo outputs are never overwritten."""
    out = Path(out_dir) if out_dir else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    ctx = DemoContext(out, epochs=epochs, subset=subset, seed=seed, device=device, dataset=dataset,
                      log=log, rate=rate, admm_iters=admm_iters, retrain_epochs=retrain_epochs,
                      threads=threads)
    ctx.results["train"] = train_stage(ctx)
    ctx.results["prune"] = prune_stage(ctx, ctx.results["train"])
    ctx.results["compile"] = compile_stage(ctx, ctx.results["train"], ctx.results["prune"])
    log(f"demo outputs in {out}")
    return ctx.results
