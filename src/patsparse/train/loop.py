"""One epoch of training and one pass of evaluation: the two primitives everything else uses.

The pruning code drives ``train_epoch`` directly: ADMM adds its rho terms through
``extra_loss(model)``, masked retraining re-applies masks through ``after_step(model)``, which
runs after the optimizer and scheduler steps of every batch, and dynamic masks also use
``before_step(model)``, which runs between the backward pass and the optimizer step.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import DivergedError
from .dist import all_reduce_sum, is_main, unwrap
from .distill import Distillation

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _stats(sums: torch.Tensor) -> tuple[float, float]:
    n = max(float(sums[2]), 1.0)
    return float(sums[0]) / n, float(sums[1]) / n


def reshuffle(loader: Iterable, epoch: int) -> None:
    """Give the loader's sampler its epoch (``set_epoch``) so each epoch sees a new order;
    a no-op for loaders whose sampler has no epochs."""
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if set_epoch is not None:
        set_epoch(epoch)


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, *,
                device: str | torch.device = "cpu", loss_fn: LossFn = F.cross_entropy,
                extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
                after_step: Callable[[nn.Module], None] | None = None,
                before_step: Callable[[nn.Module], None] | None = None,
                scheduler=None, progress: bool = True, desc: str = "",
                distill: Distillation | None = None) -> dict:
    """Train ``model`` for one pass over ``loader``.

    Per batch: forward, ``loss_fn(logits, y)`` (mixed with a distillation term when ``distill``
    is given), + ``extra_loss(model)`` when given, backward, ``before_step(model)`` when given,
    ``optimizer.step()``, ``scheduler.step()`` (a per-iteration schedule) when given, then
    ``after_step(model)``. Returns {"loss", "acc", "seconds"} averaged over examples (and over
    ranks under torchrun); "loss" is the data loss, "extra" the mean extra loss if any.
    A non-finite loss stops training with an error naming the batch.
    """
    model.train()
    sums = torch.zeros(4, dtype=torch.float64)  # data loss * n, correct, n, extra * n
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc or "train", leave=False, dynamic_ncols=True,
               disable=not (progress and is_main()))
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        total = loss if distill is None else distill.mix(loss, logits, x)
        extra = None
        if extra_loss is not None:
            extra = extra_loss(model)
            total = total + extra
        if not torch.isfinite(total.detach()):
            raise DivergedError(f"{desc or 'training'}: loss became {float(total.detach()):.4g} at batch {i}; "
                             "the run diverged (try a lower learning rate)")
        total.backward()
        if before_step is not None:
            before_step(model)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(model)
        n = y.numel()
        sums += torch.tensor([float(loss.detach()) * n, float((logits.detach().argmax(1) == y).sum()), n,
                              float(extra.detach()) * n if extra is not None else 0.0],
                             dtype=torch.float64)
        if not bar.disable and i % 10 == 0:
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}")
    all_reduce_sum(sums)
    loss_avg, acc = _stats(sums)
    out = {"loss": loss_avg, "acc": acc, "seconds": time.perf_counter() - start}
    if extra_loss is not None:
        out["extra"] = float(sums[3]) / max(float(sums[2]), 1.0)
    return out


def accuracy_change(before: float, after: float) -> str:
    """"dense 91.20% -> pruned 90.10% (-1.10 points)": accuracies as percentages, their change in
    percentage points (a relative "%" change would read as a different, smaller number)."""
    return f"dense {before:.2%} -> pruned {after:.2%} ({(after - before) * 100:+.2f} points)"


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device = "cpu",
             progress: bool = False) -> dict:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``loader`` (summed over ranks,
    so a sharded test set counts each example once). Returns {"loss", "acc", "seconds"}."""
    model = unwrap(model)  # no DDP collectives: ranks may hold different numbers of batches
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    start = time.perf_counter()
    for x, y in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True,
                     disable=not (progress and is_main())):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        sums += torch.tensor([float(F.cross_entropy(logits, y, reduction="sum")),
                              float((logits.argmax(1) == y).sum()), y.numel()], dtype=torch.float64)
    all_reduce_sum(sums)
    model.train(was_training)
    loss, acc = _stats(sums)
    return {"loss": loss, "acc": acc, "seconds": time.perf_counter() - start}
