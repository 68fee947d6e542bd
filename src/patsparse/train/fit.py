"""``fit``: whole training runs with checkpoints, metrics and exact resumption.

A run directory holds::

    checkpoint.json        where training stands: epoch, step, config, optimizer scalars,
                           scheduler, metric history; points at the tensor file below
    checkpoints/*.safetensors  model + optimizer tensors (+ RNG state mid-epoch)
    metrics.jsonl          one JSON line per finished epoch
    model.safetensors, model.json   the latest end-of-epoch model, for later stages

Every file is written atomically and checkpoint.json is replaced only after the tensors it
points at are complete (it stores their SHA-256, checked before they are parsed), so an
interruption at any moment leaves the previous checkpoint intact; resuming writes
metrics.jsonl and the model files again from it, so a kill between two of them is repaired,
and deletes the temporary files of writes a kill cut short.

Exactness: each epoch starts from a seed derived from (seed, epoch, rank) and the data order is
a function of (seed, epoch), so resuming from an end-of-epoch checkpoint reproduces the
uninterrupted run bit for bit. Mid-epoch checkpoints (every ``checkpoint_minutes``) also save
the RNG state and resume at the next unseen batch; that is exact with ``workers=0`` on a single
process (worker processes and other ranks are re-seeded instead). Both need loaders from
``patsparse.data.get_loaders``, whose sampler order depends only on (seed, epoch) and can skip
the batches already seen; with other loaders only end-of-epoch checkpoints are written.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import FORMAT_VERSION, atomic_write_bytes, check_state_dict, load_tensors, read_json, \
    remove_dead_temporaries, save_tensors, stored_sha256, write_json
from ..data.loaders import ShuffleSampler
from ..errors import FormatError, InputError
from .artifacts import save_model
from .dist import DistContext, barrier, init_distributed, unwrap
from .loop import evaluate, train_epoch
from .resume import flatten
from .state import optimizer_from_flat, optimizer_to_flat, rng_from_tensors, rng_to_tensors

CHECKPOINT_FORMAT = "patsparse-train-checkpoint"
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
# Fields that do not change the numbers a run produces, so they may differ on --resume.
_FREE_ON_RESUME = {"device", "progress", "checkpoint_minutes"}


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in the checkpoint; --resume must match).

    The learning-rate schedule is stepped every batch: cosine decays from ``lr`` to 0 over the
    whole run; step multiplies by ``gamma`` every ``step_epochs`` epochs.
    """

    epochs: int = 10
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_epochs: int = 30
    gamma: float = 0.1
    seed: int = 0
    device: str = "cpu"
    checkpoint_minutes: float | None = 10.0
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 1:
            raise InputError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise InputError("weight_decay must be >= 0 and momentum in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise InputError("nesterov needs the sgd optimizer with momentum > 0")
        if self.step_epochs < 1 or not 0 < self.gamma <= 1:
            raise InputError("step_epochs must be >= 1 and gamma in (0, 1]")
        if self.checkpoint_minutes is not None and self.checkpoint_minutes < 0:
            raise InputError(f"checkpoint_minutes must be >= 0 or None, got {self.checkpoint_minutes}")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """A per-iteration schedule (or None for a constant rate)."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_epochs * steps_per_epoch,
                                               gamma=config.gamma)
    return None


def seed_everything(*parts: int) -> int:
    """Seed torch, numpy and random from a SeedSequence of ``parts``; returns the seed."""
    seed = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return seed


class _Run:
    """State of one fit() call: what to save, where, and how to restore it."""

    def __init__(self, run_dir: Path, net: nn.Module, optimizer, scheduler, config: TrainConfig,
                 ctx: DistContext, steps_per_epoch: int, meta: dict):
        self.dir, self.net, self.optimizer, self.scheduler = run_dir, net, optimizer, scheduler
        self.config, self.ctx, self.steps_per_epoch, self.meta = config, ctx, steps_per_epoch, meta
        self.pointer = run_dir / "checkpoint.json"
        self.history: list[dict] = []

    def save(self, epoch: int, step: int) -> None:
        """Checkpoint at ``step`` batches into epoch ``epoch`` (rank 0 only)."""
        tensors = {f"model.{k}": v for k, v in unwrap(self.net).state_dict().items()}
        opt_tensors, opt_meta = optimizer_to_flat(self.optimizer)
        tensors.update(opt_tensors)
        if step:
            tensors.update(rng_to_tensors())
        rel = f"checkpoints/ckpt-e{epoch:04d}-s{step:06d}.safetensors"
        sha = save_tensors(self.dir / rel, tensors)
        write_json(self.pointer, {
            "format": CHECKPOINT_FORMAT, "version": FORMAT_VERSION, "epoch": epoch, "step": step,
            "steps_per_epoch": self.steps_per_epoch, "tensors": rel, "tensors_sha256": sha,
            "config": asdict(self.config),
            "optimizer": opt_meta,
            "scheduler": json.loads(json.dumps(self.scheduler.state_dict())) if self.scheduler else None,
            "history": self.history, "meta": self.meta, "torch": torch.__version__})
        for old in (self.dir / "checkpoints").glob("ckpt-*.safetensors"):
            if old.name != Path(rel).name:
                old.unlink(missing_ok=True)

    def restore(self) -> tuple[int, int]:
        state = read_json(self.pointer, "training checkpoint")
        src = str(self.pointer)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise FormatError(f"{src} is not a patsparse training checkpoint")
        saved = state.get("config", {})
        now = asdict(self.config)
        diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in now
                if k not in _FREE_ON_RESUME and saved.get(k) != now[k]]
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            diff.append(f"batches per epoch: checkpoint {state.get('steps_per_epoch')} vs now "
                        f"{self.steps_per_epoch} (dataset, subset, batch size or world size changed)")
        saved_meta, now_meta = flatten(state.get("meta") or {}), flatten(self.meta)
        diff += [f"{k}: checkpoint {saved_meta.get(k)!r} vs now {now_meta.get(k)!r}"
                 for k in sorted(set(saved_meta) | set(now_meta)) if saved_meta.get(k) != now_meta.get(k)]
        if diff:
            raise InputError(f"cannot resume {self.dir}: the run differs from the checkpoint "
                             "(an exact continuation needs the same settings):\n  " + "\n  ".join(diff))
        tensors = load_tensors(self.dir / state["tensors"], "training checkpoint",
                               sha=stored_sha256(state, "tensors_sha256", src))
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        check_state_dict(unwrap(self.net), model_state, str(self.dir / state["tensors"]))
        unwrap(self.net).load_state_dict(model_state)
        optimizer_from_flat(self.optimizer, tensors, state["optimizer"], src)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        epoch, step = int(state["epoch"]), int(state["step"])
        if step:
            if self.ctx.rank == 0 and "rng.cpu" in tensors:
                rng_from_tensors(tensors)
            else:
                seed_everything(self.config.seed, epoch, step, self.ctx.rank)
        return epoch, step

    def write_model(self, epoch: int) -> None:
        """The run's model files as of the end of ``epoch`` (the last entry of the history)."""
        save_model(self.dir, unwrap(self.net), {**self.meta, "epoch": epoch, "metrics": self.history[-1]})

    def write_metrics(self) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history)
        atomic_write_bytes(self.dir / "metrics.jsonl", lines.encode())


def fit(model: nn.Module, train_loader, test_loader, config: TrainConfig, run_dir: str | Path,
        resume: bool = False, *, meta: dict[str, Any] | None = None,
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        after_step: Callable[[nn.Module], None] | None = None) -> dict[str, Any]:
    """Train ``model`` (in place) for ``config.epochs`` epochs, evaluating after each.

    ``run_dir`` receives checkpoints, metrics.jsonl and the final model (see the module doc).
    ``resume=True`` continues from run_dir's checkpoint (or starts fresh if there is none); a
    run_dir that already holds a checkpoint is refused without it, so nothing is overwritten.
    ``meta`` (e.g. the model and dataset names) is stored with the checkpoint and must match
    on resume. ``extra_loss`` / ``after_step`` are passed to :func:`train_epoch`.
    Under torchrun the model is wrapped in DistributedDataParallel and only rank 0 writes.
    Returns the last epoch's metrics plus "history".
    """
    config.validate()
    meta = json.loads(json.dumps(meta or {}))
    ctx = init_distributed(config.device)
    run_dir = Path(run_dir)
    sampler = train_loader.sampler
    if ctx.world > 1 and not (isinstance(sampler, ShuffleSampler) and sampler.world == ctx.world):
        raise InputError("under torchrun the training loader must shard the data: build it with "
                         "patsparse.data.get_loaders after patsparse.train.init_distributed")
    if (run_dir / "checkpoint.json").exists() and not resume:
        raise InputError(f"{run_dir} already holds a training run (checkpoint.json); pass "
                         "resume=True / --resume to continue it, or choose another run directory")
    model.to(ctx.device)
    net: nn.Module = model
    if ctx.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = build_optimizer(model, config)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    steps_per_epoch = len(train_loader)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    run = _Run(run_dir, net, optimizer, scheduler, config, ctx, steps_per_epoch, meta)
    say = print if (config.progress and ctx.is_main) else (lambda *a, **k: None)

    epoch = step = 0
    if resume and run.pointer.exists():
        epoch, step = run.restore()
        say(f"resuming {run_dir} at epoch {epoch + 1}, batch {step} of {steps_per_epoch}", flush=True)
    elif resume:
        say(f"no checkpoint in {run_dir}; starting from scratch", flush=True)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for d in (run_dir, run_dir / "checkpoints"):
            remove_dead_temporaries(d)
        run.write_metrics()
        if step == 0 and run.history:  # a kill between the model's two files left them apart
            run.write_model(epoch)
    barrier()

    last_save = time.monotonic()
    # Mid-epoch checkpoints need a sampler that can skip the batches already seen.
    can_skip = hasattr(sampler, "set_start")

    def step_hook(m: nn.Module) -> None:
        nonlocal step, last_save
        if after_step is not None:
            after_step(m)
        step += 1
        every = config.checkpoint_minutes
        if (ctx.is_main and every is not None and step < steps_per_epoch and can_skip
                and time.monotonic() - last_save >= every * 60):
            run.save(epoch, step)
            last_save = time.monotonic()

    while epoch < config.epochs:
        resumed_at = step
        if step == 0:
            generator_seed = seed_everything(config.seed, epoch, ctx.rank)
            if getattr(train_loader, "generator", None) is not None:
                train_loader.generator.manual_seed(generator_seed)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if step and hasattr(sampler, "set_start"):
            sampler.set_start(step * train_loader.batch_size)
        train = train_epoch(net, train_loader, optimizer, device=ctx.device, extra_loss=extra_loss,
                            after_step=step_hook, scheduler=scheduler, progress=config.progress,
                            desc=f"epoch {epoch + 1}/{config.epochs}")
        test = evaluate(net, test_loader, device=ctx.device)
        record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_acc": train["acc"],
                  "test_loss": test["loss"], "test_acc": test["acc"],
                  "lr": optimizer.param_groups[0]["lr"], "train_seconds": train["seconds"],
                  "eval_seconds": test["seconds"]}
        if "extra" in train:
            record["extra_loss"] = train["extra"]
        if resumed_at:
            record["resumed_at_batch"] = resumed_at  # train_* then cover the remaining batches only
        run.history.append(record)
        epoch, step = epoch + 1, 0
        if ctx.is_main:
            run.save(epoch, 0)
            run.write_model(epoch)
            run.write_metrics()
            last_save = time.monotonic()
        barrier()
        say(f"epoch {epoch}/{config.epochs}: train loss {train['loss']:.4f} acc {train['acc']:.2%} | "
            f"test loss {test['loss']:.4f} acc {test['acc']:.2%} | {train['seconds']:.1f} s train, "
            f"{test['seconds']:.1f} s eval", flush=True)
    if not run.history:
        raise FormatError(f"{run_dir}: checkpoint says training is done but holds no metrics")
    return {**run.history[-1], "history": list(run.history)}


__all__ = ["TrainConfig", "fit", "build_optimizer", "build_scheduler", "seed_everything"]
