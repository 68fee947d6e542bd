"""patsparse.data: formats, corrupt files, lookup order, checksum-verified download, loaders."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patsparse.data import ShuffleSampler, ShardSampler, get_dataset, get_loaders, info
from patsparse.data import catalog, registry
from patsparse.data.download import Resource
from patsparse.data.idx import read_idx
from patsparse.errors import FormatError, InputError

FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- writers of the real formats
def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist_dir(d: Path, n_train=40, n_test=20, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, n_test),
    }
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (d / name).write_bytes(data)
    return arrays


def cifar_batch_bytes(n: int, num_classes=10, label_key="labels", seed=0) -> bytes:
    rng = np.random.RandomState(seed)
    batch = {"batch_label": "testing batch 1 of 1", label_key: rng.randint(0, num_classes, n).tolist(),
             "data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
             "filenames": [f"img_{i}.png" for i in range(n)]}
    return pickle.dumps(batch, protocol=2)  # the real batches are protocol-2 pickles


def write_cifar10_dir(d: Path, n=12) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(cifar_batch_bytes(n, seed=i))
    (d / "test_batch").write_bytes(cifar_batch_bytes(n, seed=9))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No system or user data directories: only what a test puts in place."""
    monkeypatch.setattr(registry, "DEBIAN_ROOT", tmp_path / "debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PATSPARSE_DATA", raising=False)
    return tmp_path


# ---------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_normalisation(isolated, gz):
    arrays = write_mnist_dir(isolated / "m", gz=gz)
    ds = get_dataset("mnist", "train", root=isolated / "m", augment=False)
    assert len(ds) == 40 and ds.info.num_classes == 10
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    expect = (arrays["train-images-idx3-ubyte"][3] / 255.0 - 0.1307) / 0.3081
    assert np.allclose(x[0].numpy(), expect, atol=1e-5)
    assert y == arrays["train-labels-idx1-ubyte"][3]
    assert len(get_dataset("mnist", "test", root=isolated / "m")) == 20


def test_idx_corrupt_files_name_the_file(isolated):
    d = isolated / "m"
    write_mnist_dir(d)
    img = d / "train-images-idx3-ubyte.gz"
    good = gzip.decompress(img.read_bytes())
    img.write_bytes(gzip.compress(good[:-100]))  # truncated data
    with pytest.raises(FormatError, match="train-images-idx3-ubyte.gz.*truncated"):
        get_dataset("mnist", root=d)
    img.write_bytes(gzip.compress(b"\x12\x34" + good[2:]))  # bad magic
    with pytest.raises(FormatError, match="not an IDX file"):
        get_dataset("mnist", root=d)
    img.write_bytes(img.read_bytes()[:50])  # broken gzip stream
    with pytest.raises(FormatError, match="train-images-idx3-ubyte.gz"):
        get_dataset("mnist", root=d)
    write_mnist_dir(d)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(39))))
    with pytest.raises(FormatError, match="40 images but .* 39 labels"):
        get_dataset("mnist", root=d)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(40, 10))))
    with pytest.raises(FormatError, match="label 10 out of range"):
        get_dataset("mnist", root=d)


def test_read_idx_rank_check(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(idx_bytes(np.zeros((2, 2))))
    with pytest.raises(FormatError, match="expected an IDX file with 1 dimensions, found 2"):
        read_idx(p, ndim=1)


# ---------------------------------------------------------------- lookup order and the error
def test_missing_dataset_says_where_it_looked_and_how_to_get_it(isolated, monkeypatch):
    monkeypatch.setenv("PATSPARSE_DATA", str(isolated / "envdir"))
    with pytest.raises(FormatError) as e:
        get_dataset("fashion-mnist", root=isolated / "given")
    msg = str(e.value)
    for place in ("given", "envdir", "debian", "cache"):
        assert place in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg


def test_lookup_order_given_root_then_env_then_system(isolated, monkeypatch):
    write_mnist_dir(isolated / "env" / "mnist", n_train=7)
    write_mnist_dir(isolated / "debian" / "mnist", n_train=9)
    assert len(get_dataset("mnist", root=isolated / "nothing-here")) == 9
    monkeypatch.setenv("PATSPARSE_DATA", str(isolated / "env"))
    assert len(get_dataset("mnist")) == 7
    write_mnist_dir(isolated / "given" / "MNIST" / "raw", n_train=5)  # torchvision's layout
    assert len(get_dataset("mnist", root=isolated / "given")) == 5


def test_unknown_names_and_splits():
    with pytest.raises(InputError, match="unknown dataset 'svhn'"):
        info("svhn")
    with pytest.raises(InputError, match="split"):
        get_dataset("digits", split="val")
    assert info("FashionMNIST").name == "fashion-mnist" and info("cifar-10").in_channels == 3


# ---------------------------------------------------------------- CIFAR
def test_cifar10_batches_load(isolated):
    write_cifar10_dir(isolated / "cifar-10-batches-py")
    ds = get_dataset("cifar10", "train", root=isolated, augment=False)
    assert len(ds) == 60 and ds.info.num_classes == 10
    x, _ = ds[0]
    assert x.shape == (3, 32, 32)
    raw = pickle.loads(cifar_batch_bytes(12, seed=1))["data"][0].reshape(3, 32, 32)
    mean = torch.tensor(catalog.INFO["cifar10"].mean).view(3, 1, 1)
    std = torch.tensor(catalog.INFO["cifar10"].std).view(3, 1, 1)
    assert torch.allclose(x, (torch.tensor(raw) / 255.0 - mean) / std, atol=1e-5)
    assert len(get_dataset("cifar10", "test", root=isolated)) == 12


def test_cifar100_fine_labels(isolated):
    d = isolated / "cifar-100-python"
    d.mkdir()
    (d / "train").write_bytes(cifar_batch_bytes(10, 100, "fine_labels"))
    (d / "test").write_bytes(cifar_batch_bytes(5, 100, "fine_labels"))
    ds = get_dataset("cifar100", root=isolated)
    assert len(ds) == 10 and ds.info.num_classes == 100


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/patsparse-pwned",))


def test_cifar_refuses_code_in_pickles_and_corrupt_batches(isolated):
    d = isolated / "cifar-10-batches-py"
    write_cifar10_dir(d)
    (d / "data_batch_2").write_bytes(pickle.dumps({"data": _Boom()}, protocol=2))
    with pytest.raises(FormatError, match="data_batch_2: refusing to unpickle (posix|os).system"):
        get_dataset("cifar10", root=isolated)
    assert not Path("/tmp/patsparse-pwned").exists()
    (d / "data_batch_2").write_bytes(cifar_batch_bytes(12)[:200])
    with pytest.raises(FormatError, match="data_batch_2 is not a readable CIFAR batch"):
        get_dataset("cifar10", root=isolated)
    bad = pickle.loads(cifar_batch_bytes(12))
    bad["data"] = bad["data"][:, :100]
    (d / "data_batch_2").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(FormatError, match=r"data_batch_2: 'data' must be a uint8 array of shape \(N, 3072\)"):
        get_dataset("cifar10", root=isolated)


# ---------------------------------------------------------------- download over loopback HTTP
@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(www), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_download_idx_with_checksum(isolated, http_dir, monkeypatch):
    www, url = http_dir
    arrays = write_mnist_dir(www)
    files = sorted(www.iterdir())
    monkeypatch.setitem(catalog.RESOURCES, "mnist", tuple(Resource(url + f.name, md5=_md5(f)) for f in files))
    with pytest.raises(FormatError, match="not found"):
        get_dataset("mnist", root=isolated / "dl")
    ds = get_dataset("mnist", root=isolated / "dl", download=True, augment=False)
    assert len(ds) == 40
    assert int(ds.labels[5]) == arrays["train-labels-idx1-ubyte"][5]
    assert sorted(p.name for p in (isolated / "dl" / "mnist").iterdir()) == [f.name for f in files]


def test_download_checksum_mismatch_keeps_nothing(isolated, http_dir, monkeypatch):
    www, url = http_dir
    write_mnist_dir(www)
    files = sorted(www.iterdir())
    res = [Resource(url + f.name, md5=_md5(f)) for f in files]
    res[0] = Resource(res[0].url, md5="0" * 32)
    monkeypatch.setitem(catalog.RESOURCES, "mnist", tuple(res))
    with pytest.raises(FormatError, match=f"download of {res[0].url} is corrupt: md5"):
        get_dataset("mnist", download=True)  # no root: goes to the (isolated) cache
    left = list((isolated / "cache").rglob("*"))
    assert not [p for p in left if p.is_file()], left


def test_download_cifar_archive(isolated, http_dir, monkeypatch):
    www, url = http_dir
    src = isolated / "src" / "cifar-10-batches-py"
    write_cifar10_dir(src)
    with tarfile.open(www / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    sha = hashlib.sha256((www / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(catalog.RESOURCES, "cifar10",
                        (Resource(url + "cifar-10-python.tar.gz", sha256=sha),))
    ds = get_dataset("cifar10", "test", download=True)
    assert len(ds) == 12
    assert (isolated / "cache" / "patsparse" / "data" / "cifar-10-batches-py" / "test_batch").is_file()


def test_download_unreachable_is_a_clear_error(isolated, monkeypatch):
    monkeypatch.setitem(catalog.RESOURCES, "mnist",
                        (Resource("http://127.0.0.1:9/train-images-idx3-ubyte.gz", md5="0" * 32),))
    with pytest.raises(FormatError, match="could not download http://127.0.0.1:9/"):
        get_dataset("mnist", download=True)


# ---------------------------------------------------------------- image folders
def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                arr = rng.randint(0, 256, (40 + 7 * i, 50, 3)).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / split / c / f"{i}.png")
    ds = get_dataset("imagefolder", "train", root=tmp_path)
    assert len(ds) == 6 and ds.info.num_classes == 2 and ds.classes == ["cat", "dog"]
    x, y = ds[4]
    assert x.shape == (3, 224, 224) and y == 1
    test = get_dataset("imagefolder", "test", root=tmp_path)
    assert test[0][0].shape == (3, 224, 224)
    (tmp_path / "val" / "dog" / "1.png").write_bytes(b"not a png")
    with pytest.raises(FormatError, match="cannot decode image .*dog/1.png"):
        test[4]
    with pytest.raises(InputError, match="needs root"):
        get_dataset("imagefolder")
    with pytest.raises(FormatError, match="no train sub-folder"):
        get_dataset("imagefolder", root=tmp_path / "val")


# ---------------------------------------------------------------- augmentation and loaders
def test_augmentation_crops_and_keeps_shape(isolated):
    write_mnist_dir(isolated / "m", n_train=4)
    aug = get_dataset("mnist", root=isolated / "m", augment=True)
    plain = get_dataset("mnist", root=isolated / "m", augment=False)
    torch.manual_seed(0)
    views = [aug[0][0] for _ in range(20)]
    assert all(v.shape == (1, 28, 28) for v in views)
    assert any(not torch.equal(v, plain[0][0]) for v in views)  # some crops move the image
    torch.manual_seed(0)
    assert all(torch.equal(v, aug[0][0]) for v in views[:1])  # reproducible under a seed


def test_get_loaders_subset_and_determinism():
    tr, te = get_loaders("digits", batch_size=32, subset=100, seed=3)
    assert len(tr.dataset) == 100 and len(te.dataset) == 359 and tr.dataset.info.name == "digits"
    tr2, _ = get_loaders("digits", batch_size=32, subset=100, seed=3)
    assert tr.dataset.indices == tr2.dataset.indices
    tr.sampler.set_epoch(1), tr2.sampler.set_epoch(1)
    assert list(tr.sampler) == list(tr2.sampler)
    tr.sampler.set_epoch(1), tr2.sampler.set_epoch(2)
    assert list(tr.sampler) != list(tr2.sampler)
    with pytest.raises(InputError, match="subset"):
        get_loaders("digits", subset=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), world=st.integers(1, 5), epoch=st.integers(0, 3), start=st.integers(0, 50))
def test_shuffle_sampler_partitions(n, world, epoch, start):
    shards = []
    for rank in range(world):
        s = ShuffleSampler(n, seed=1, rank=rank, world=world)
        s.set_epoch(epoch)
        full = list(s)
        assert len(full) == -(-n // world)
        s.set_epoch(epoch)
        assert len(s) == len(full)
        s.set_start(start)
        assert len(s) == len(full[start:]) and list(s) == full[start:]
        shards.append(full)
    assert set().union(*map(set, shards)) == set(range(n))
    evals = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(sum(evals, [])) == list(range(n))


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    train = get_dataset("fashion-mnist", "train", augment=False)
    test = get_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    mean = train.images[:5000].float().mean() / 255
    assert abs(float(mean) - 0.2860) < 0.01


def test_shuffle_sampler_new_order_each_pass_without_set_epoch():
    from patsparse.data.loaders import ShuffleSampler

    s = ShuffleSampler(50, seed=3)
    first, second = list(s), list(s)
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    s.set_epoch(0)
    assert list(s) == first  # set_epoch still chooses the permutation exactly
