"""Training: one-epoch primitives (``loop``), whole runs with checkpoints and exact resume
(``fit``), and torchrun / DDP support (``dist``).

    from patsparse.train import TrainConfig, fit
    fit(model, train_loader, test_loader, TrainConfig(epochs=3, lr=0.05), "runs/x")
"""

from . import loop
from .artifacts import load_trained, save_model
from .dist import DistContext, init_distributed, is_main
from .fit import TrainConfig, build_optimizer, build_scheduler, fit, seed_everything
from .loop import evaluate, train_epoch

__all__ = ["loop", "train_epoch", "evaluate", "TrainConfig", "fit", "build_optimizer",
           "build_scheduler", "seed_everything", "init_distributed", "DistContext", "is_main",
           "load_trained", "save_model"]
