"""Static facts about each supported dataset: shape, class count, normalisation statistics,
the folder names it is usually stored under, and its official download URLs with checksums."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .download import Resource


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing it."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()


_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot")
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                    "ship", "truck")
_DIGITS = tuple(str(i) for i in range(10))

INFO: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, (28, 28), (0.2860,), (0.3530,), _FASHION_CLASSES),
    "mnist": DatasetInfo("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,), _DIGITS),
    "cifar10": DatasetInfo("cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), _CIFAR10_CLASSES),
    "cifar100": DatasetInfo("cifar100", 100, 3, (32, 32), (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762)),
    # ImageNet statistics; num_classes is replaced by the number of class folders found.
    "imagefolder": DatasetInfo("imagefolder", 1000, 3, (224, 224), (0.485, 0.456, 0.406),
                               (0.229, 0.224, 0.225)),
    # scikit-learn's 8x8 digits, upsampled to 28x28 so MNIST-sized models run on them unchanged;
    # mean/std measured on the upsampled images.
    "digits": DatasetInfo("digits", 10, 1, (28, 28), (0.3053,), (0.3247,), _DIGITS),
}

ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
           "cifar-10": "cifar10", "cifar-100": "cifar100", "image-folder": "imagefolder",
           "imagenet": "imagefolder"}

# Folder names a dataset is commonly stored under, tried inside every search root.
FOLDERS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
    "mnist": ("mnist", "MNIST/raw"),
    "cifar10": ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"),
    "cifar100": ("cifar-100-python", "cifar100/cifar-100-python"),
}

_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# The checksums published with each dataset (the ones torchvision verifies as well).
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "fashion-mnist": (
        Resource(_FASHION + "train-images-idx3-ubyte.gz", md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        Resource(_FASHION + "train-labels-idx1-ubyte.gz", md5="25c81989df183df01b3e8a0aad5dffbe"),
        Resource(_FASHION + "t10k-images-idx3-ubyte.gz", md5="bef4ecab320f06d8554ea6380940ec79"),
        Resource(_FASHION + "t10k-labels-idx1-ubyte.gz", md5="bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "mnist": (
        Resource(_MNIST + "train-images-idx3-ubyte.gz", md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        Resource(_MNIST + "train-labels-idx1-ubyte.gz", md5="d53e105ee54ea40749a09fcbcd1e9432"),
        Resource(_MNIST + "t10k-images-idx3-ubyte.gz", md5="9fb629c4189551a2d022fa330f9573f3"),
        Resource(_MNIST + "t10k-labels-idx1-ubyte.gz", md5="ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "cifar10": (Resource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         md5="c58f30108f718f92721af3b95e74349a"),),
    "cifar100": (Resource("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          md5="eb9058c3a382ffc7106e4002c42a8d85"),),
}

DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}


def canonical(name: str) -> str:
    """Normalise a user-supplied dataset name, rejecting unknown ones with the list of known."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in INFO:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(sorted(INFO))}")
    return key


def info(name: str) -> DatasetInfo:
    """Static description of dataset ``name`` (for imagefolder, num_classes is ImageNet's 1000
    until a tree is loaded; the dataset object's ``.info`` has the real count)."""
    return INFO[canonical(name)]
