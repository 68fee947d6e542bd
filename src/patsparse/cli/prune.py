"""``patsparse prune``: pattern-prune a trained model (a ``patsparse train`` run directory, a
saved patsparse model, or a zoo name trained here first) and write the pruned model."""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path
from typing import Any

from ..errors import InputError

EXAMPLE = textwrap.dedent("""\
    examples:
      patsparse train --model resnet8 --dataset fashion-mnist --epochs 10 --run-dir runs/r8
      patsparse prune --model runs/r8 --rate 8 --library phase2 --out runs/r8_8x
      patsparse prune --model convnet --dataset digits --dense-epochs 5 --rate 4 --out runs/cn_4x
      patsparse prune --model runs/r8 --recipe my_recipe.yaml --out runs/r8_custom

    Writes OUT/model.safetensors + OUT/model.json (weights and sparsity spec, read by
    patsparse.load and patsparse compile), OUT/recipe.yaml (every knob) and OUT/history.json
    (per-phase loss/accuracy), then prints the per-layer sparsity table and dense vs pruned
    accuracy.""")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Options naming the model and the data, shared with ``patsparse extract``."""
    a = p.add_argument
    a("--model", required=True,
      help="run directory of `patsparse train`, a saved patsparse model directory, or a zoo name")
    a("--dataset", help="dataset (default: the one the run was trained on, else fashion-mnist)")
    a("--data-root", help="directory holding the dataset")
    a("--batch-size", type=int, default=128, help="batch size (default 128)")
    a("--subset", type=int, help="use only this many training examples (quick runs)")
    a("--width", type=float, default=1.0, help="zoo name only: width multiplier (default 1.0)")
    a("--dense-epochs", type=int, default=5,
      help="zoo name only: epochs to train the dense parent first (default 5)")
    a("--device", default="cpu", help="cpu (default) or cuda")
    a("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a("--quiet", action="store_true", help="no progress bars")


def load_source(args: argparse.Namespace, out: Path):
    """(model, train_loader, test_loader, dataset name): the model to work on and its data.

    A directory is loaded as a trained (or saved pruned) model; a zoo name is built and trained
    dense for ``--dense-epochs`` with ``patsparse.train.fit`` into ``OUT/dense`` first.
    """
    import torch

    from .. import models
    from ..data import get_loaders
    from ..serialize import load
    from ..train import TrainConfig, fit, seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.model)
    if source.is_dir():
        meta = json.loads((source / "model.json").read_text()) if (source / "model.json").is_file() else {}
        model = load(source)
        dataset = args.dataset or meta.get("dataset") or "fashion-mnist"
    else:
        model, dataset = None, args.dataset or "fashion-mnist"
    train_loader, test_loader = get_loaders(dataset, batch_size=args.batch_size, root=args.data_root,
                                            subset=args.subset)
    if model is None:
        info = train_loader.dataset.info
        arch = {"name": models.canonical(args.model), "num_classes": info.num_classes,
                "in_channels": info.in_channels, "width": args.width,
                "variant": "cifar" if info.image_size[0] < 100 else "imagenet"}
        if args.dense_epochs < 1:
            raise InputError(f"--model {args.model} is a zoo name: its dense parent must be trained "
                             f"first (--dense-epochs >= 1), or pass a `patsparse train` run directory")
        seed_everything(0)
        model = models.get(**arch)
        fit(model, train_loader, test_loader, TrainConfig(epochs=args.dense_epochs, lr=0.1, device=args.device,
                                                          progress=not args.quiet),
            out / "dense", resume=True, meta={"model": arch, "dataset": info.name})
    return model, train_loader, test_loader, dataset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="pattern + connectivity pruning with ADMM (rate, library, recipe)",
                       description="Prune every 3x3 conv but the first with pattern-aware ADMM (patterns "
                                   "from a library, plus connectivity pruning above 2.25x), hard-prune, "
                                   "retrain with masks, and save the pruned model with its sparsity spec.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    a = p.add_argument
    a("--out", required=True, help="output directory for the pruned model")
    a("--recipe", help="YAML recipe with every knob (options given here override it)")
    a("--rate", type=float, help="3x3-conv compression rate (default 8; 2.25 = patterns only)")
    a("--library", help="phase1, phase2 (default), phase3, candidates or a JSON library file")
    a("--admm-iters", type=int, help="ADMM iterations (default 4)")
    a("--epochs", type=int, help="SGD epochs per ADMM iteration (default 1)")
    a("--retrain-epochs", type=int, help="masked retraining epochs (default 3)")
    a("--rho", type=float, help="initial ADMM penalty (default 0.01, x3 per iteration, cap 1)")
    a("--lr", type=float, help="SGD learning rate (default 0.01)")
    a("--layers", help="comma-separated conv names to prune (default: every 3x3 conv but the first)")
    a("--conv1x1", action="store_true", help="also connectivity-prune 1x1 convs")
    a("--balanced", action="store_true", help="filter-balanced connectivity (same kernels per filter)")
    a("--oneshot", action="store_true", help="project once without ADMM (then retrain)")
    p.set_defaults(func=run)


def _recipe(args: argparse.Namespace):
    from ..pruning.recipe import PruneRecipe

    recipe = PruneRecipe.load(args.recipe) if args.recipe else PruneRecipe()
    given: dict[str, Any] = {k: v for k, v in {
        "rate": args.rate, "library": args.library, "admm_iters": args.admm_iters, "epochs": args.epochs,
        "retrain_epochs": args.retrain_epochs, "rho": args.rho, "lr": args.lr,
        "layers": args.layers.split(",") if args.layers else None,
        "conv1x1": args.conv1x1 or None, "connectivity_balanced": args.balanced or None,
        "oneshot": args.oneshot or None}.items() if v is not None}
    return PruneRecipe.from_dict({**recipe.to_dict(), **given}, "command line")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import write_json
    from ..pruning import describe, prune
    from ..serialize import save
    from ..train.loop import evaluate

    recipe = _recipe(args)
    out = Path(args.out)
    model, train_loader, test_loader, dataset = load_source(args, out)
    dense = evaluate(model, test_loader, device=args.device)
    print(f"dense model: test accuracy {dense['acc']:.2%} on {dataset}")
    t0 = time.perf_counter()
    prune(model, train_loader, recipe=recipe, eval_loader=test_loader, device=args.device,
          progress=not args.quiet)
    seconds = time.perf_counter() - t0
    pruned = evaluate(model, test_loader, device=args.device)
    info = train_loader.dataset.info
    # the loaders normalise with these, so the pruned weights expect them
    model.patsparse_normalization = {"mean": list(info.mean), "std": list(info.std)}
    save(model, out, input_shape=(info.in_channels, *info.image_size))
    write_json(out / "history.json", {"dense_acc": dense["acc"], "pruned_acc": pruned["acc"],
                                      "prune_seconds": seconds, "dataset": dataset,
                                      "history": model.patsparse_history})
    print(describe(model))
    print(f"test accuracy: dense {dense['acc']:.2%} -> pruned {pruned['acc']:.2%} "
          f"({(pruned['acc'] - dense['acc']) * 100:+.2f} points) at {recipe.rate}x with {recipe.library}; "
          f"pruning took {seconds / 60:.1f} min; saved to {out}")
    return 0
