"""One SGD phase of a pruning run: the loop that masked retraining and dynamic masks share.

Both run whole epochs of the caller's loader under one per-step schedule (linear warm-up, then
cosine to zero), optionally distilling from the unpruned model, and record one history entry
per epoch; they differ only in what runs around each optimizer step (``before_step`` /
``after_step``, see :func:`patsparse.train.loop.train_epoch`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

from ..train.distill import Distillation
from ..train.resume import EpochCheckpoint
from .admm import make_optimizer, warmup_cosine


def log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[patsparse prune] {msg}", flush=True)


def fmt(record: dict) -> str:
    """A history record's numbers on one line (nested evaluation results as their accuracy)."""
    parts = []
    for k, v in record.items():
        if k in ("phase", "epoch", "iteration", "layers"):
            continue
        if isinstance(v, dict):
            parts.append(f"{k} acc {v.get('acc', float('nan')):.4f}")
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
    return ", ".join(parts)


def count_batches(loader: Iterable) -> int:
    """Batches in one pass of ``loader`` (``len`` when it has one, else by iterating once)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in loader)


def train_phase(net: nn.Module, loader: Iterable, phase: str, *, epochs: int, lr: float, momentum: float,
                weight_decay: float, warmup: float, device: str = "cpu", progress: bool = True,
                eval_loader: Iterable | None = None, history: list | None = None,
                distill: Distillation | None = None, before_step: Callable[[nn.Module], None] | None = None,
                after_step: Callable[[nn.Module], None] | None = None,
                epoch_info: Callable[[], dict[str, Any]] | None = None,
                checkpoint: EpochCheckpoint | None = None) -> None:
    """``epochs`` epochs of Nesterov SGD at ``lr`` (warm-up over ``warmup`` of the steps, then
    cosine), each reshuffled and recorded in ``history`` as ``{"phase": phase, "epoch": n,
    **train stats, **epoch_info(), "eval": ...}`` (``eval`` only with an ``eval_loader``).
    ``checkpoint`` stores the state (and ``history``) after every epoch; a stored state is
    continued from its next epoch, ``history`` replaced by the stored one."""
    from ..train.loop import evaluate, reshuffle, train_epoch

    optimizer = make_optimizer(net, lr, momentum, weight_decay)
    scheduler = warmup_cosine(optimizer, epochs * count_batches(loader), warmup)
    start = checkpoint.restore(net, optimizer, scheduler) if checkpoint is not None else 0
    if start and history is not None:
        history[:] = checkpoint.extra or []
    for ep in range(start, epochs):
        reshuffle(loader, ep)
        stats = train_epoch(net, loader, optimizer, device=device, before_step=before_step,
                            after_step=after_step, scheduler=scheduler, progress=progress, distill=distill,
                            desc=f"{phase} {ep + 1}/{epochs}")
        record = {"phase": phase, "epoch": ep + 1, **stats, **(epoch_info() if epoch_info else {})}
        if eval_loader is not None:
            record["eval"] = evaluate(net, eval_loader, device=device)
        log(progress, f"{phase} epoch {ep + 1}/{epochs}: {fmt(record)}")
        if history is not None:
            history.append(record)
        if checkpoint is not None:
            checkpoint.save(ep + 1, net, optimizer, scheduler, extra=history)
