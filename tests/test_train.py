"""patsparse.train: the epoch primitives, checkpoints, exact resume, bad checkpoints, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from patsparse import models
from patsparse.data import get_loaders
from patsparse.errors import FormatError, InputError
from patsparse.train import TrainConfig, evaluate, fit, load_trained, seed_everything, train_epoch
from patsparse.train.state import optimizer_from_flat, optimizer_to_flat


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaders():
    return get_loaders("digits", batch_size=32, subset=192, seed=0)  # 6 batches per epoch


def _model(name="convnet"):
    seed_everything(0)
    return models.get(name, num_classes=10, in_channels=1, width=0.5, variant="cifar")


class Interrupt(Exception):
    pass


def _stop_after(n):
    count = {"steps": 0}

    def hook(model):
        count["steps"] += 1
        if count["steps"] == n:
            raise Interrupt

    return hook


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_epoch_hooks_and_evaluate(loaders):
    train, test = loaders
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    calls = []
    out = train_epoch(model, train, opt, extra_loss=lambda m: 0.01 * sum(p.square().sum() for p in m.parameters()),
                      after_step=lambda m: calls.append(m.training), scheduler=sched, progress=False)
    assert calls == [True] * len(train)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** len(train))
    assert out["extra"] > 0 and 0 <= out["acc"] <= 1 and out["loss"] > 0 and out["seconds"] > 0
    model.train()
    ev = evaluate(model, test)
    assert model.training and set(ev) == {"loss", "acc", "seconds"} and 0 <= ev["acc"] <= 1
    with torch.no_grad():
        logits = torch.cat([model.eval()(x) for x, _ in test])
    labels = torch.cat([y for _, y in test])
    assert ev["acc"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert ev["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)


def test_diverging_loss_is_an_error(loaders):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InputError, match="loss became nan at batch 0"):
        train_epoch(model, loaders[0], opt, loss_fn=lambda o, y: o.sum() * float("nan"), progress=False)


@pytest.mark.parametrize("mid_epoch", [False, True], ids=["epoch-boundary", "mid-epoch"])
def test_resume_is_exact(loaders, tmp_path, mid_epoch):
    train, test = loaders
    config = TrainConfig(epochs=2, lr=0.05, nesterov=not mid_epoch, optimizer="adam" if mid_epoch else "sgd",
                         checkpoint_minutes=0.0 if mid_epoch else None, progress=False)
    if mid_epoch:
        config.lr = 0.003
    reference = _model()
    ref = fit(reference, train, test, config, tmp_path / "a")

    interrupted = _model()
    with pytest.raises(Interrupt):  # stop in the 3rd batch of the second epoch
        fit(interrupted, train, test, config, tmp_path / "b", after_step=_stop_after(len(train) + 3))
    state = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert (state["epoch"], state["step"]) == ((1, 2) if mid_epoch else (1, 0))
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 1

    torch.manual_seed(123)  # the resumed run must not depend on the caller's RNG or model init
    resumed_model = models.get("convnet", num_classes=10, in_channels=1, width=0.5, variant="cifar")
    res = fit(resumed_model, train, test, config, tmp_path / "b", resume=True)
    a, b = _weights(reference), _weights(resumed_model)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert res["test_acc"] == ref["test_acc"] and res["test_loss"] == ref["test_loss"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert lines[1].get("resumed_at_batch") == (2 if mid_epoch else None)
    assert list((tmp_path / "b" / "checkpoints").iterdir()) == [
        tmp_path / "b" / "checkpoints" / "ckpt-e0002-s000000.safetensors"]


def test_run_dir_protection_and_mismatches(loaders, tmp_path):
    train, test = loaders
    config = TrainConfig(epochs=1, lr=0.05, progress=False)
    model = _model()
    fit(model, train, test, config, tmp_path, meta={"model": {"name": "convnet"}})
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(InputError, match="already holds a training run"):
        fit(_model(), train, test, config, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    with pytest.raises(InputError, match=r"lr: checkpoint 0.05 vs now 0.1"):
        fit(_model(), train, test, TrainConfig(epochs=1, lr=0.1, progress=False), tmp_path, resume=True,
            meta={"model": {"name": "convnet"}})
    with pytest.raises(InputError, match=r"model.name: checkpoint 'convnet' vs now 'resnet8'"):
        fit(_model(), train, test, config, tmp_path, resume=True, meta={"model": {"name": "resnet8"}})
    with pytest.raises(FormatError, match="does not match the model architecture"):
        fit(_model("resnet8"), train, test, config, tmp_path, resume=True, meta={"model": {"name": "convnet"}})
    # a finished run resumes to the same result without training
    again = fit(_model(), train, test, config, tmp_path, resume=True, meta={"model": {"name": "convnet"}})
    assert again["epoch"] == 1
    ckpt = next((tmp_path / "checkpoints").iterdir())
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(FormatError, match=ckpt.name):
        fit(_model(), train, test, config, tmp_path, resume=True, meta={"model": {"name": "convnet"}})


def test_saved_model_reloads(loaders, tmp_path):
    train, test = loaders
    spec = {"name": "convnet", "num_classes": 10, "in_channels": 1, "width": 0.5, "variant": "cifar"}
    model = _model()
    out = fit(model, train, test, TrainConfig(epochs=1, lr=0.05, progress=False), tmp_path, meta={"model": spec})
    loaded, meta = load_trained(tmp_path)
    assert meta["epoch"] == 1 and meta["model"] == spec
    assert evaluate(loaded, test)["acc"] == out["test_acc"]
    (tmp_path / "model.json").write_text(json.dumps({**meta, "model": {**spec, "name": "resnet8"}}))
    with pytest.raises(FormatError, match="does not match the model architecture"):
        load_trained(tmp_path)


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the low bit of the last weight: a value that still looks plausible
    path.write_bytes(bytes(data))


def test_saved_weights_and_checkpoints_are_hashed(loaders, tmp_path):
    """A flipped bit in the run's model or checkpoint is an error naming the file, not a weight."""
    import patsparse as ps

    train, test = loaders
    meta = {"model": {"name": "convnet", "num_classes": 10, "in_channels": 1, "width": 0.5, "variant": "cifar"}}
    config = TrainConfig(epochs=1, lr=0.05, progress=False)
    fit(_model(), train, test, config, tmp_path, meta=meta)
    _flip_last_byte(tmp_path / "model.safetensors")
    for load in (load_trained, ps.load):
        with pytest.raises(FormatError, match=r"model.safetensors does not match the hash"):
            load(tmp_path)
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    _flip_last_byte(tmp_path / state["tensors"])
    with pytest.raises(FormatError, match=Path(state["tensors"]).name + " does not match the hash"):
        fit(_model(), train, test, config, tmp_path, resume=True, meta=meta)
    (tmp_path / "checkpoint.json").write_text(json.dumps({**state, "tensors_sha256": 7}))
    with pytest.raises(FormatError, match="checkpoint.json: tensors_sha256 must be a hex SHA-256"):
        fit(_model(), train, test, config, tmp_path, resume=True, meta=meta)


def _train_until_replace(k, killed_log, *args, **kw):
    """In a forked child: train, and die (SIGKILL: no cleanup) just before the ``k``-th file the
    run renames into place, after logging that file's name; exit 0 if training ends first."""
    real = os.replace

    def replace(src, dst, count=[0]):
        count[0] += 1
        if count[0] == k:
            with open(killed_log, "a") as f:
                f.write(Path(dst).name + "\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)

    os.replace = replace
    try:
        fit(*args, **kw)
    finally:
        os._exit(0)


def test_a_run_killed_before_any_write_resumes_exactly(tmp_path):
    """For every file a run replaces (each checkpoint's tensors and pointer, the metrics, the
    model's weights and description), a run is killed just before that write and resumed: it
    ends equal to an uninterrupted run, its model loads with its hash checked, and no temporary
    file is left behind."""
    train, test = get_loaders("digits", batch_size=32, subset=64, seed=0)  # 2 batches per epoch
    meta = {"model": {"name": "convnet", "num_classes": 10, "in_channels": 1, "width": 0.5, "variant": "cifar"}}
    config = TrainConfig(epochs=2, lr=0.003, optimizer="adam", checkpoint_minutes=0.0, progress=False)
    reference = _model()
    fit(reference, train, test, config, tmp_path / "reference", meta=meta)
    want = _weights(reference)
    log = tmp_path / "killed.txt"
    for k in range(1, 100):
        run = tmp_path / f"killed-{k}"
        pid = os.fork()
        if pid == 0:
            _train_until_replace(k, log, _model(), train, test, config, run, meta=meta)
        _, status = os.waitpid(pid, 0)
        if not os.WIFSIGNALED(status):
            break
        resumed = _model()
        fit(resumed, train, test, config, run, resume=True, meta=meta)
        loaded, saved = load_trained(run)
        assert saved["epoch"] == 2, f"killed before write {k}: model.json describes epoch {saved['epoch']}"
        for got in (_weights(resumed), _weights(loaded)):
            assert all(torch.equal(want[n], got[n]) for n in want), f"killed before write {k}"
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [1, 2], f"killed before write {k}"
        assert not list(run.rglob("*.tmp")), f"killed before write {k}"
    killed = log.read_text().split()
    assert {"model.json", "model.safetensors", "checkpoint.json", "metrics.jsonl"} <= set(killed), killed
    assert any(name.startswith("ckpt-") for name in killed), killed


def test_optimizer_state_round_trip_without_pickle():
    model = _model()
    for opt_cls in (lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.95)),
                    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)):
        opt = opt_cls(model.parameters())
        model(torch.randn(4, 1, 28, 28)).sum().backward()
        opt.step()
        tensors, meta = optimizer_to_flat(opt)
        assert all(torch.is_tensor(t) for t in tensors.values())
        json.dumps(meta)
        fresh = opt_cls(model.parameters())
        optimizer_from_flat(fresh, tensors, json.loads(json.dumps(meta)), "test")
        a, b = opt.state_dict(), fresh.state_dict()
        assert a["param_groups"] == b["param_groups"]
        for pid in a["state"]:
            for k, v in a["state"][pid].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))
    with pytest.raises(FormatError, match="optimizer state is for SGD"):
        optimizer_from_flat(torch.optim.Adam(model.parameters()), tensors, meta, "test")


def test_torchrun_two_processes(tmp_path):
    """The unchanged `patsparse train` under torch.distributed.run with 2 CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "patsparse", "train", "--model", "convnet", "--dataset", "digits", "--width", "0.5",
           "--subset", "256", "--batch-size", "32", "--epochs", "2", "--lr", "0.05",
           "--run-dir", str(tmp_path / "run"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("test accuracy") == 1  # rank 0 only
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["steps_per_epoch"] == 4  # 256 examples / 2 ranks / 32 per batch
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and 0 <= json.loads(lines[-1])["test_acc"] <= 1
    model, _ = load_trained(tmp_path / "run")
    acc = evaluate(model, get_loaders("digits", batch_size=64)[1])["acc"]
    assert acc == pytest.approx(json.loads(lines[-1])["test_acc"])  # sharded eval counted every example once


def test_config_and_device_errors():
    from patsparse.train import init_distributed

    for bad, match in [(dict(epochs=0), "epochs"), (dict(optimizer="rmsprop"), "optimizer"),
                       (dict(schedule="linear"), "schedule"), (dict(optimizer="adam", nesterov=True), "nesterov"),
                       (dict(lr=0), "lr")]:
        with pytest.raises(InputError, match=match):
            TrainConfig(**bad).validate()
    with pytest.raises(InputError, match="unsupported device 'tpu'"):
        init_distributed("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device is available"):
            init_distributed("cuda")
