"""Datasets and loaders: MNIST, Fashion-MNIST (IDX), CIFAR-10/100 (python batches),
ImageNet-style image folders, and scikit-learn digits as an always-available fallback.

    from patsparse.data import get_loaders, info
    train_loader, test_loader = get_loaders("fashion-mnist", batch_size=128)
    info("fashion-mnist").num_classes   # 10
"""

from .catalog import DatasetInfo, info
from .loaders import ShuffleSampler, ShardSampler, get_loaders
from .registry import cache_dir, get_dataset, locate

__all__ = ["DatasetInfo", "info", "get_dataset", "get_loaders", "locate", "cache_dir",
           "ShuffleSampler", "ShardSampler"]
