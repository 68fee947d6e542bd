"""A kill at any instant of a save leaves the complete old model or the complete new one.

A forked child saves two different models in turn to one path, without end; the parent kills it
(SIGKILL: no cleanup runs) after a random delay, then loads what is there. Spread over many
kills, the delays land in every phase of a save: writing the new directory, between the two
renames of the swap, deleting the old one.
"""

import os
import random
import select
import signal
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

import patsparse as ps

KILLS = 40


def kill_while_saving(path, save_a, save_b, rng):
    """Fork a child that saves A, B, A, ... to ``path``; SIGKILL it at a random point of a cycle."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no exceptions, no cleanup
        try:
            os.close(r)
            save_a()
            os.write(w, b"x")
            while True:
                save_b()
                save_a()
        finally:
            os._exit(1)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 120)
        assert ready and os.read(r, 1) == b"x", "the child never finished its first save"
        time.sleep(rng.uniform(0, 0.03))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()


def test_pruned_model_save_survives_kills(tmp_path):
    """A and B have different sparsity specs, so old metadata with new weights does not load."""
    from patsparse.pruning.projection import project_model

    a, b = (nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3)).eval() for _ in "ab")
    project_model(a, 4.0, "phase2", layers=["2"])
    project_model(b, 8.0, "phase2", layers=["2"])
    path = tmp_path / "m"
    rng = random.Random(0)
    for _ in range(KILLS):
        kill_while_saving(path, lambda: ps.save(a, path), lambda: ps.save(b, path), rng)
        got = ps.load(path, model=nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                                nn.Conv2d(16, 16, 3))).state_dict()
        assert any(all(torch.equal(got[k], v) for k, v in m.state_dict().items()) for m in (a, b))
    ps.save(a, path)  # a save after kills cleans up what the killed ones left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("target", ["cpu", "opencl"])
def test_compiled_model_save_survives_kills(tmp_path, target):
    if target == "opencl":
        pytest.importorskip("pyopencl", reason="pyopencl is not installed")
        from patsparse.compiler.opencl.device import list_devices

        try:
            list_devices()
        except ps.UnsupportedError as e:
            pytest.skip(f"no OpenCL platform on this machine: {e}")
    x = torch.randn(2, 3, 6, 6)
    a, b = (ps.compile(net(s), torch.zeros(1, 3, 6, 6), threads=1, target=None if target == "cpu" else target)
            for s in (1, 2))
    want = [m(x).numpy() for m in (a, b)]
    path = tmp_path / "c"
    rng = random.Random(1)
    for _ in range(KILLS // 2):
        kill_while_saving(path, lambda: a.save(path), lambda: b.save(path), rng)
        got = ps.load(path)(x).numpy()
        assert any(np.array_equal(got, w) for w in want)


def test_load_finds_the_old_model_after_a_kill_between_the_renames(tmp_path):
    """The one window where ``path`` does not exist: the old directory is moved back (or read in
    place when the parent is read-only)."""
    m = net(1)
    ps.save(m, tmp_path / "m")
    os.rename(tmp_path / "m", tmp_path / ".m.old")  # what the first rename of a swap does
    back = ps.load(tmp_path / "m", model=net(3))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in m.state_dict().items())
    assert (tmp_path / "m").is_dir() and not (tmp_path / ".m.old").exists()


@pytest.mark.parametrize("what", ["pruned", "compiled"])
def test_save_refuses_to_replace_a_directory_with_other_files(tmp_path, what):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep")
    m = net(1)
    obj = m if what == "pruned" else ps.compile(m, torch.zeros(1, 3, 6, 6), threads=1)
    with pytest.raises(ps.InputError, match="notes.txt"):
        ps.save(obj, d)
    assert (d / "notes.txt").read_text() == "keep"


def test_save_keeps_the_dense_parent_run_beside_a_pruned_model(tmp_path):
    """`patsparse prune` trains a zoo model's dense parent into OUT/dense, then saves into OUT."""
    (tmp_path / "out" / "dense").mkdir(parents=True)
    (tmp_path / "out" / "dense" / "model.json").write_text("{}")
    for seed in (1, 2):
        ps.save(net(seed), tmp_path / "out")
        assert (tmp_path / "out" / "dense" / "model.json").read_text() == "{}"
