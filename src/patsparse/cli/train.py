"""``patsparse train``: train a zoo model on a dataset with checkpoints and exact --resume."""

from __future__ import annotations

import argparse
import os
import textwrap
from dataclasses import fields
from pathlib import Path

from ..errors import InputError
from .options import quick_batch_size, quick_subset

EXAMPLE = textwrap.dedent("""\
    examples:
      patsparse train --model resnet18 --dataset fashion-mnist --width 0.25 --epochs 1 --out runs/r18
      patsparse train --out runs/r18 --resume   # continue it exactly
      torchrun --standalone --nproc_per_node=2 -m patsparse train --model convnet --dataset mnist

    Writes <out>/metrics.jsonl (one line per epoch), checkpoint.json + checkpoints/ (every
    epoch and every --checkpoint-minutes), model.safetensors + model.json (the trained model).
    With --resume, options not given are taken from the run's checkpoint; options given must
    match it (an exact continuation needs the same settings). PATSPARSE_SUBSET=N in the
    environment caps the training and test images at N and the batch size at N/8 (a quick
    trial; --subset wins).""")

# option -> default; None in argparse means "not given" so --resume can fill it from the run
DEFAULTS = {
    "model": None, "dataset": "fashion-mnist", "width": 1.0, "variant": "auto", "epochs": 10,
    "lr": 0.1, "batch_size": 128, "optimizer": "sgd", "momentum": 0.9, "nesterov": False,
    "weight_decay": 5e-4, "schedule": "cosine", "step_epochs": 30, "gamma": 0.1, "subset": None,
    "seed": 0, "device": "cpu", "checkpoint_minutes": 10.0,
}


CALMED = "PATSPARSE_CALMED_OPENMP"


def calm_openmp() -> None:
    """Make idle OpenMP threads sleep instead of spin, unless the user chose otherwise.

    On a machine whose cores are already busy, spinning threads of PyTorch's OpenMP pool fight
    the other processes: a ConvNet training step was measured 4x slower with 2 spinning threads
    than with 2 passive ones (and slower than 1 thread). It must be set before torch loads its
    OpenMP runtime, hence first thing in the commands that train (train, prune, extract, demo),
    before they import torch.
    Only those: timing commands (run, bench) keep OpenMP's default so latency is not hurt.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ[CALMED] = "1"  # child processes that time things can undo it (demo's bench)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model (VGG-16, ResNet-18/50, MobileNet-V2, small nets) on a dataset",
        description="Train a model from the zoo on a dataset with SGD/Adam and a cosine or step "
                    "schedule, logging metrics per epoch and checkpointing so that --resume continues "
                    "an interrupted run exactly. Runs unchanged under torchrun (DDP).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", help="resnet18, resnet50, vgg16_bn, mobilenet_v2, resnet8, convnet")
    a("--dataset", help="fashion-mnist (default), mnist, cifar10, cifar100, imagefolder, digits")
    a("--data-root", help="directory holding the dataset (searched first; download target)")
    a("--download", action="store_true", help="download the dataset from its official URL if missing")
    a("--width", type=float, help="channel width multiplier (default 1.0)")
    a("--variant", choices=["auto", "imagenet", "cifar"],
      help="stem type; auto = cifar (3x3 stride-1) below 100 px, else imagenet")
    a("--epochs", type=int, help="number of epochs (default 10)")
    a("--lr", type=float, help="peak learning rate (default 0.1)")
    a("--batch-size", type=int, help="batch size per process (default 128)")
    a("--optimizer", choices=["sgd", "adam"], help="default sgd")
    a("--momentum", type=float, help="SGD momentum (default 0.9)")
    a("--nesterov", action="store_const", const=True, help="Nesterov momentum")
    a("--weight-decay", type=float, help="default 5e-4")
    a("--schedule", choices=["cosine", "step", "constant"], help="per-batch LR schedule (default cosine)")
    a("--step-epochs", type=int, help="step schedule: decay every N epochs (default 30)")
    a("--gamma", type=float, help="step schedule: decay factor (default 0.1)")
    a("--subset", type=int, help="train on at most N examples (a fixed random subset)")
    a("--seed", type=int, help="random seed (default 0)")
    a("--device", help="cpu (default), cuda or cuda:N")
    a("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    a("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a("--checkpoint-minutes", type=float, help="also checkpoint mid-epoch this often (default 10)")
    a("--out", "--run-dir", dest="run_dir", help="output (run) directory (default runs/<model>_<dataset>)")
    a("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    a("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> tuple[dict, Path]:
    """Effective options: defaults < the resumed run's saved options < options given now."""
    from ..checkpoint import read_json

    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    run_dir = Path(args.run_dir) if args.run_dir else None
    saved: dict = {}
    if args.resume:
        if run_dir is None:
            if "model" not in given:
                raise InputError("--resume needs --out (or --model/--dataset to find the default run dir)")
            run_dir = Path("runs") / f"{given['model']}_{given.get('dataset', DEFAULTS['dataset'])}"
        if (run_dir / "checkpoint.json").exists():
            saved = read_json(run_dir / "checkpoint.json", "training checkpoint").get("meta", {}).get("cli", {})
    s = {**DEFAULTS, **saved, **given}
    if s["subset"] is None:
        s["subset"] = quick_subset()
    s["batch_size"] = quick_batch_size(s["batch_size"])
    if not s["model"]:
        raise InputError("--model is required (e.g. --model resnet18)")
    if run_dir is None:
        run_dir = Path("runs") / f"{s['model']}_{s['dataset']}"
    return s, run_dir


def run(args: argparse.Namespace) -> int:
    calm_openmp()  # before the first torch import
    import torch

    from .. import models
    from ..data import get_loaders
    from ..train import TrainConfig, fit, init_distributed, seed_everything

    s, run_dir = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(s["device"])
    train_loader, test_loader = get_loaders(
        s["dataset"], batch_size=s["batch_size"], root=args.data_root, download=args.download,
        workers=args.workers, subset=s["subset"], seed=s["seed"], test_subset=quick_subset())
    info = train_loader.dataset.info
    variant = s["variant"]
    if variant == "auto":
        variant = "cifar" if info.image_size[0] < 100 else "imagenet"
    spec = {"name": models.canonical(s["model"]), "num_classes": info.num_classes,
            "in_channels": info.in_channels, "width": s["width"], "variant": variant}
    seed_everything(s["seed"])
    model = models.get(**spec)
    config = TrainConfig(**{f.name: s[f.name] for f in fields(TrainConfig) if f.name in s},
                         progress=not args.quiet)
    meta = {"model": spec, "dataset": info.name, "input_shape": [info.in_channels, *info.image_size],
            "mean": list(info.mean), "std": list(info.std),
            "cli": {k: v for k, v in s.items() if k != "device" and k != "checkpoint_minutes"}}
    result = fit(model, train_loader, test_loader, config, run_dir, resume=args.resume, meta=meta)
    if ctx.is_main:
        print(f"test accuracy {result['test_acc']:.2%} after {result['epoch']} epochs "
              f"({spec['name']} width {spec['width']} on {info.name}); run dir {run_dir}")
    return 0
