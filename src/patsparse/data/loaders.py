"""Training and test DataLoaders that behave the same alone and under torchrun.

Shuffling is a pure function of (seed, epoch), as in DistributedSampler, so a resumed run
sees exactly the batches an uninterrupted one would. Under torch.distributed each rank takes
its share of the same permutation and the test set is sharded without padding, so every test
example is counted exactly once when the ranks' sums are all-reduced.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler, Subset

from ..errors import InputError
from .registry import get_dataset


class ShuffleSampler(Sampler[int]):
    """This rank's share of a permutation seeded by (seed, epoch), padded like
    DistributedSampler so every rank gets the same number of samples.

    ``set_epoch(e)`` picks the permutation; ``set_start(i)`` skips this rank's first ``i``
    samples of it, which is how a run resumed in the middle of an epoch continues with exactly
    the batches it had not seen yet. Each pass also moves on to the next epoch's permutation, so
    a loop that never calls ``set_epoch`` (ADMM, retraining, a user's own loop) still sees a new
    order every pass, as with a shuffling DataLoader.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise InputError(f"rank {rank} out of range for world size {world}")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0
        self.per_rank = -(-n // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def set_start(self, start: int) -> None:
        self.start = min(max(0, start), self.per_rank)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = self.per_rank * self.world  # pad by repeating, as DistributedSampler does
        order = (order * -(-total // self.n))[:total]
        mine = order[self.rank::self.world][self.start:]
        self.epoch, self.start = self.epoch + 1, 0
        return iter(mine)

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: an exact, unpadded split of an evaluation set."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _distributed() -> tuple[int, int] | None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def _subset(ds, n: int | None, seed: int, what: str):
    """At most ``n`` examples of ``ds``: a fixed random subset chosen by ``seed``."""
    if n is None:
        return ds
    if n < 1:
        raise InputError(f"{what} must be >= 1, got {n}")
    if n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    part = Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())
    part.info = ds.info
    return part


def get_loaders(name: str, batch_size: int = 128, root: str | os.PathLike | None = None,
                download: bool = False, workers: int = 0, subset: int | None = None, seed: int = 0,
                augment: bool = True, test_subset: int | None = None) -> tuple[DataLoader, DataLoader]:
    """(train_loader, test_loader) for dataset ``name``. ``subset`` caps the number of training
    examples and ``test_subset`` that of test examples (fixed random subsets chosen by ``seed``);
    ``batch_size`` is per process."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    train = _subset(get_dataset(name, "train", root=root, download=download, augment=augment),
                    subset, seed, "subset")
    test = _subset(get_dataset(name, "test", root=root, download=download, augment=False),
                   test_subset, seed, "test_subset")
    ddp = _distributed()
    if ddp:
        rank, world = ddp
        train_sampler = ShuffleSampler(len(train), seed, rank, world)
        test_sampler = ShardSampler(len(test), rank, world)
    else:
        train_sampler, test_sampler = ShuffleSampler(len(train), seed), None
    # BatchNorm cannot train on a batch of one when features are 1x1, so the ragged last
    # training batch is dropped, unless that would leave no batch at all.
    drop_last = len(train_sampler) > batch_size
    common = dict(num_workers=workers, persistent_workers=False, pin_memory=torch.cuda.is_available())
    # A private generator keeps DataLoader's own seed draws off the global RNG, which the
    # training loop saves and restores for exact resumption.
    train_loader = DataLoader(train, batch_size=batch_size, sampler=train_sampler, drop_last=drop_last,
                              generator=torch.Generator().manual_seed(seed), **common)
    test_loader = DataLoader(test, batch_size=batch_size, sampler=test_sampler, shuffle=False, **common)
    return train_loader, test_loader
