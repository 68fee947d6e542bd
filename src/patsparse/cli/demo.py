"""``patsparse demo``: train (and, as the project grows, prune, compile and benchmark) a small
model on real data in a few minutes."""

from __future__ import annotations

import argparse

from .train import calm_openmp


def register(sub: argparse._SubParsersAction) -> None:
    calm_openmp()
    p = sub.add_parser(
        "demo", help="run the end-to-end demo on Fashion-MNIST (a few minutes on 2 cores)",
        description="Train a small ConvNet on Fashion-MNIST (scikit-learn digits when Fashion-MNIST "
                    "is not installed) and print its test accuracy; later stages of the flow run "
                    "on the trained model.",
        epilog="example: patsparse demo --epochs 3 --out runs/demo")
    p.add_argument("--out", help="output directory (default runs/demo-<timestamp>)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--subset", type=int, default=20000,
                   help="training examples used (default 20000; 0 = all)")
    p.add_argument("--dataset", help="override the dataset (default fashion-mnist, else digits)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, epochs=args.epochs, subset=args.subset or None, seed=args.seed,
             device=args.device, dataset=args.dataset)
    return 0
