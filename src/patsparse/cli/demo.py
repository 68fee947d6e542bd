"""``patsparse demo``: train (and, as the project grows, prune, compile and benchmark) a small
model on real data in a few minutes."""

from __future__ import annotations

import argparse

from .train import calm_openmp


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the end-to-end demo on Fashion-MNIST (a few minutes on 2 cores)",
        description="The whole flow on real data: train a small ConvNet on Fashion-MNIST "
                    "(scikit-learn digits when Fashion-MNIST is not installed), prune it at 8x with "
                    "the Phase-2 pattern library (ADMM + masked retraining), compile it to native "
                    "code and time it against PyTorch and ONNX Runtime on the same pruned model.",
        epilog="example: patsparse demo --epochs 3 --out runs/demo")
    p.add_argument("--out", help="output directory (default runs/demo-<timestamp>)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--subset", type=int, default=20000,
                   help="training examples used (default 20000; 0 = all)")
    p.add_argument("--dataset", help="override the dataset (default fashion-mnist, else digits)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=8.0, help="3x3-conv compression rate (default 8)")
    p.add_argument("--admm-iters", type=int, default=2, help="ADMM iterations, 1 epoch each (default 2)")
    p.add_argument("--retrain-epochs", type=int, default=2, help="masked retraining epochs (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads for the speed comparison (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    calm_openmp()  # before torch loads its OpenMP runtime (imported by ..demo)
    from ..demo import run_demo

    run_demo(args.out, epochs=args.epochs, subset=args.subset or None, seed=args.seed,
             device=args.device, dataset=args.dataset, rate=args.rate, admm_iters=args.admm_iters,
             retrain_epochs=args.retrain_epochs, threads=args.threads)
    return 0
