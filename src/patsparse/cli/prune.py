"""``patsparse prune``: pattern-prune a trained model (a ``patsparse train`` run directory, a
saved patsparse model, or a zoo name trained here first) and write the pruned model."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

from ..errors import InputError
from .options import looks_like_path, model_dir, quick_batch_size, quick_subset
from .train import calm_openmp

EXAMPLE = textwrap.dedent("""\
    examples:
      patsparse train --model resnet8 --dataset fashion-mnist --epochs 10 --run-dir runs/r8
      patsparse prune --model runs/r8 --rate 8 --library phase2 --out runs/r8_8x
      patsparse prune --model convnet --dataset digits --dense-epochs 5 --rate 4 --out runs/cn_4x
      patsparse prune --model runs/r8 --rate 8 --admm --out runs/r8_8x_admm
      patsparse prune --model runs/r8 --rate 8 --dynamic 0.5 --out runs/r8_8x_dynamic
      patsparse prune --model runs/r8 --rate 8 --reconstruct 512 --out runs/r8_8x_refit
      patsparse prune --model runs/r8 --recipe my_recipe.yaml --out runs/r8_custom

    Writes OUT/model.safetensors + OUT/model.json (weights, sparsity spec, input shape and
    normalisation, read by patsparse.load, patsparse compile and patsparse export-onnx),
    OUT/recipe.yaml (every knob) and OUT/history.json (per-phase loss/accuracy), then prints the
    per-layer sparsity table and dense vs pruned accuracy. PATSPARSE_SUBSET=N in the environment
    caps the training and test images at N and the batch size at N/8 (a quick trial; --subset
    wins).""")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Options naming the model and the data, shared with ``patsparse extract``."""
    a = p.add_argument
    a("--model", required=True,
      help="run directory of `patsparse train`, a saved patsparse model directory, or a zoo name "
           "(anything that looks like a path is read as a directory)")
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


def check_source(args: argparse.Namespace) -> Path | None:
    """The model directory ``--model`` names (None for a zoo name), checked before any data is
    loaded: a path that does not exist is reported as such, not as an unknown model."""
    from .. import models

    if looks_like_path(args.model):
        return model_dir(args.model, "--model")
    models.canonical(args.model)  # an unknown zoo name fails here, listing the known ones
    if args.dense_epochs < 1:
        raise InputError(f"--model {args.model} is a zoo name: its dense parent must be trained "
                         f"first (--dense-epochs >= 1), or pass a `patsparse train` run directory")
    return None


def load_source(args: argparse.Namespace, out: Path):
    """(model, train_loader, test_loader, dataset name): the model to work on and its data.

    A directory is loaded as a trained (or saved pruned) model; a zoo name is built and trained
    dense for ``--dense-epochs`` with ``patsparse.train.fit`` into ``OUT/dense`` first. The model
    records the input shape and normalisation of the data it was given.
    """
    import torch

    from .. import models
    from ..data import get_loaders
    from ..serialize import load
    from ..train import TrainConfig, fit, seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    source = check_source(args)
    if source is not None:
        meta = json.loads((source / "model.json").read_text()) if (source / "model.json").is_file() else {}
        model = load(source)
        dataset = args.dataset or meta.get("dataset") or "fashion-mnist"
    else:
        model, dataset = None, args.dataset or "fashion-mnist"
    quick = quick_subset()
    train_loader, test_loader = get_loaders(dataset, batch_size=quick_batch_size(args.batch_size),
                                            root=args.data_root, subset=args.subset or quick, test_subset=quick)
    info = train_loader.dataset.info
    if model is None:
        arch = {"name": models.canonical(args.model), "num_classes": info.num_classes,
                "in_channels": info.in_channels, "width": args.width,
                "variant": "cifar" if info.image_size[0] < 100 else "imagenet"}
        seed_everything(0)
        model = models.get(**arch)
        fit(model, train_loader, test_loader, TrainConfig(epochs=args.dense_epochs, lr=0.1, device=args.device,
                                                          progress=not args.quiet),
            out / "dense", resume=True, meta={"model": arch, "dataset": info.name})
    model.patsparse_input_shape = (info.in_channels, *info.image_size)
    model.patsparse_normalization = {"mean": list(info.mean), "std": list(info.std)}
    return model, train_loader, test_loader, dataset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="pattern + connectivity pruning (rate, library, one-shot or ADMM, recipe)",
                       description="Prune every 3x3 conv but the first (and every 1x1 conv but the first and the "
                                   "classifier, in virtual 3x3 kernels) to patterns from a library, plus "
                                   "connectivity pruning above 2.25x: project the weights once (or run "
                                   "pattern-aware ADMM first with --admm), retrain with masks, and save the "
                                   "pruned model with its sparsity spec.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_args(p)
    a = p.add_argument
    a("--out", required=True, help="output directory for the pruned model")
    a("--recipe", help="YAML recipe with every knob (options given here override it)")
    a("--rate", type=float, help="compression rate over the pruned convs (default 8; 2.25 = patterns only)")
    a("--library", help="phase1, phase2 (default), phase3, candidates or a JSON library file")
    a("--admm-iters", type=int, help="ADMM iterations (default 4)")
    a("--epochs", type=int, help="SGD epochs per ADMM iteration (default: from --steps and the loader)")
    a("--retrain-epochs", type=int, help="masked retraining epochs (default: from --steps and the loader)")
    a("--steps", type=int, help="SGD steps to aim for when epochs are not given: all retraining, or half "
                                "ADMM and half retraining with --admm (default 3000)")
    a("--rho", type=float, help="explicit initial ADMM penalty (default: derived from --penalty-reach)")
    a("--penalty-reach", type=float, help="how far ADMM pulls the weights into the sparse sets by its last "
                                          "iteration, lr*rho*steps/(1-momentum) (default 3)")
    a("--distill", type=float, help="weight of distillation from the unpruned model (default 0.5, 0 = off)")
    a("--allocation", choices=("lamp", "uniform"), help="kernels kept per layer: lamp (global ranking, "
                                                        "default) or uniform (the same fraction everywhere)")
    a("--dynamic", type=float, metavar="FRACTION",
      help="run this fraction of the retraining epochs with dynamic masks, re-chosen from dense weights that "
           "keep training (SR-STE), before they freeze (default 0: one fixed projection; not with --admm)")
    a("--dynamic-reach", type=float, help="with --dynamic: how far the decay pulls pruned weights to zero "
                                          "over that phase, exp(-reach) left (default 3)")
    a("--reconstruct", type=int, metavar="IMAGES",
      help="after hard pruning, refit the kept weights of every pruned conv by least squares so that it "
           "reproduces the unpruned network's outputs on this many training images (default 0: off)")
    a("--lr", type=float, help="SGD learning rate (default 0.01)")
    a("--layers", help="comma-separated conv names to prune (default: every 3x3 conv but the first, "
                         "1x1 convs per --conv1x1)")
    a("--conv1x1", choices=("grouped", "connectivity", "dense"),
      help="1x1 convs: grouped (default: patterns on virtual 3x3 kernels of 9 input channels), "
           "connectivity (single weights) or dense")
    a("--balanced", action="store_true", help="filter-balanced connectivity (same kernels per filter)")
    method = p.add_mutually_exclusive_group()
    method.add_argument("--oneshot", action="store_true", help="project once, then retrain (the default; "
                                                                "overrides a --recipe that asks for ADMM)")
    method.add_argument("--admm", action="store_true", help="run the paper's ADMM before retraining (implied "
                                                             "by --admm-iters, --epochs, --rho, --penalty-reach)")
    p.set_defaults(func=run)


def _recipe(args: argparse.Namespace):
    from ..pruning.recipe import PruneRecipe, method_for

    recipe = PruneRecipe.load(args.recipe) if args.recipe else PruneRecipe()
    knobs: dict[str, Any] = {
        "rate": args.rate, "library": args.library, "admm_iters": args.admm_iters, "epochs": args.epochs,
        "retrain_epochs": args.retrain_epochs, "rho": args.rho, "lr": args.lr,
        "penalty_reach": args.penalty_reach, "steps": args.steps, "dynamic": args.dynamic,
        "dynamic_reach": args.dynamic_reach, "distill": args.distill, "allocation": args.allocation,
        "reconstruct": args.reconstruct,
        "layers": args.layers.split(",") if args.layers else None,
        "conv1x1": args.conv1x1, "connectivity_balanced": args.balanced or None}
    knobs["oneshot"] = method_for(True if args.oneshot else False if args.admm else None, knobs)
    given = {k: v for k, v in knobs.items() if v is not None}
    return PruneRecipe.from_dict({**recipe.to_dict(), **given}, "command line")


def check_library(recipe) -> None:
    """Resolve the recipe's pattern library now, so a wrong name or file fails before data loads."""
    from ..patterns.library import pattern_library

    pattern_library(recipe.library)


def run(args: argparse.Namespace) -> int:
    calm_openmp()  # before the first torch import: ADMM and retraining are training
    from ..checkpoint import write_json
    from ..pruning import describe, prune
    from ..pruning.api import admm_summary
    from ..serialize import save
    from ..train.loop import accuracy_change, evaluate

    recipe = _recipe(args)
    check_library(recipe)
    out = Path(args.out)
    model, train_loader, test_loader, dataset = load_source(args, out)
    dense = evaluate(model, test_loader, device=args.device)
    print(f"dense model: test accuracy {dense['acc']:.2%} on {dataset}")
    # an interrupted run goes on from here when the same command is run again
    checkpoint = out / "prune-checkpoint"
    prune(model, train_loader, recipe=recipe, eval_loader=test_loader, device=args.device,
          progress=not args.quiet, checkpoint=checkpoint)
    seconds = model.patsparse_history[-1]["seconds"]
    pruned = evaluate(model, test_loader, device=args.device)
    info = train_loader.dataset.info
    # the loaders normalise with these, so the pruned weights expect them
    model.patsparse_normalization = {"mean": list(info.mean), "std": list(info.std)}
    save(model, out, input_shape=(info.in_channels, *info.image_size))
    write_json(out / "history.json", {"dense_acc": dense["acc"], "pruned_acc": pruned["acc"],
                                      "prune_seconds": seconds, "dataset": dataset,
                                      "history": model.patsparse_history})
    shutil.rmtree(checkpoint, ignore_errors=True)  # the pruned model is stored
    print(describe(model))
    if args.quiet:  # otherwise prune printed it already
        print("\n".join(admm_summary(model.patsparse_history, model.patsparse_recipe)))
    print(f"test accuracy: {accuracy_change(dense['acc'], pruned['acc'])} at {recipe.rate}x with "
          f"{recipe.library}; pruning took {seconds / 60:.1f} min; saved to {out}")
    return 0
