"""torchrun / DistributedDataParallel plumbing, kept in one place so the loop reads the same
with one process or many.

``init_distributed`` is a no-op for a plain ``python`` run; under ``torchrun`` (WORLD_SIZE > 1)
it joins the process group with gloo on CPU or nccl on CUDA. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under torchrun ``"cuda"`` means this rank's GPU."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unsupported device {device!r}; use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but no CUDA device is available "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def init_distributed(device: str | torch.device = "cpu") -> DistContext:
    """Join the torchrun process group if there is one; idempotent. Call before building
    loaders so they shard the data."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), dev)
    return DistContext(0, 1, dev)


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
