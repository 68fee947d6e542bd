"""A stopped ``prune`` run goes on from its checkpoint to the very weights an uninterrupted run
reaches, with and without ADMM, and refuses state from another recipe or a damaged file."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import patsparse as ps
import patsparse.train.loop as loop
from patsparse import models
from patsparse.data import get_loaders
from patsparse.errors import FormatError
from patsparse.pruning import PruneRecipe
from patsparse.pruning.spec import spec_to_json


@pytest.fixture
def loaders():
    """Fresh loaders per run, as a re-run in a new process has: a loader's sampler remembers
    the last epoch it was given, which decides the order of the batches outside epochs."""
    return lambda: get_loaders("digits", batch_size=64, subset=256)


def dense_net() -> nn.Module:
    torch.manual_seed(0)
    return models.get("convnet", num_classes=10, in_channels=1, width=0.25, variant="cifar")


def _stop_after(monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Make the training loop raise KeyboardInterrupt when epoch ``epochs + 1`` starts."""
    real, done = loop.train_epoch, []

    def stopping(*a, **k):
        if len(done) == epochs:
            raise KeyboardInterrupt
        done.append(1)
        return real(*a, **k)

    monkeypatch.setattr(loop, "train_epoch", stopping)


@pytest.mark.parametrize("recipe,done", [
    # stopped in the first retraining epoch: only the hard-pruned state is stored
    pytest.param(PruneRecipe(rate=4, retrain_epochs=3, seed=1), 0, id="oneshot"),
    pytest.param(PruneRecipe(rate=4, oneshot=False, admm_iters=1, epochs=1, retrain_epochs=3, seed=1), 2, id="admm",
                 marks=pytest.mark.slow)])
def test_a_stopped_prune_goes_on_to_the_same_weights(tmp_path: Path, loaders, recipe: PruneRecipe, done: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    whole = ps.prune(dense_net(), *loaders()[:1], recipe=recipe, eval_loader=loaders()[1], progress=False)

    admm_epochs = 0 if recipe.oneshot else 1
    _stop_after(monkeypatch, admm_epochs + done)
    with pytest.raises(KeyboardInterrupt):
        ps.prune(dense_net(), loaders()[0], recipe=recipe, eval_loader=loaders()[1], progress=False,
                 checkpoint=tmp_path / "ck")
    monkeypatch.undo()
    assert (tmp_path / "ck" / "pruned.json").exists()
    if done:
        assert json.loads((tmp_path / "ck" / "retrain.json").read_text())["epochs"] == done

    ran = []
    real = loop.train_epoch
    monkeypatch.setattr(loop, "train_epoch", lambda *a, **k: ran.append(1) or real(*a, **k))
    resumed = ps.prune(dense_net(), loaders()[0], recipe=recipe, eval_loader=loaders()[1], progress=False,
                       checkpoint=tmp_path / "ck")
    assert len(ran) == 3 - done  # the retraining epochs not stored: no ADMM, no projection
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert spec_to_json(resumed.patsparse_spec) == spec_to_json(whole.patsparse_spec)
    phases = [h["phase"] for h in resumed.patsparse_history]
    assert phases == [h["phase"] for h in whole.patsparse_history] and phases[-1] == "done"
    assert resumed.patsparse_history[-1]["seconds"] > 0


def test_a_stopped_prune_is_not_continued_under_another_recipe_or_from_damaged_files(
        tmp_path: Path, loaders, monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = loaders()
    recipe = PruneRecipe(rate=4, retrain_epochs=2, seed=1)
    _stop_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        ps.prune(dense_net(), train, recipe=recipe, progress=False, checkpoint=tmp_path / "ck")
    monkeypatch.undo()
    with pytest.raises(FormatError, match="another configuration.*recipe.rate: stored 4, now 8"):
        ps.prune(dense_net(), train, recipe=PruneRecipe(rate=8, retrain_epochs=2, seed=1), progress=False,
                 checkpoint=tmp_path / "ck")
    other = dense_net()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(FormatError, match="another configuration.*model_sha256"):  # another dense model
        ps.prune(other, train, recipe=recipe, progress=False, checkpoint=tmp_path / "ck")
    stored = tmp_path / "ck" / json.loads((tmp_path / "ck" / "retrain.json").read_text())["tensors"]
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="does not match the hash"):
        ps.prune(dense_net(), train, recipe=recipe, progress=False, checkpoint=tmp_path / "ck")


def test_a_kill_between_an_epochs_two_writes_leaves_the_previous_epoch(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import patsparse.train.resume as resume

    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    ck = resume.EpochCheckpoint(tmp_path / "loop.json", {"lr": 0.1})
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    ck.save(1, net, opt)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    opt.step()

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(resume, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.save(2, net, opt)  # the epoch-2 tensors are written, the pointer is not
    monkeypatch.undo()
    again = nn.Linear(3, 2)
    assert resume.EpochCheckpoint(tmp_path / "loop.json", {"lr": 0.1}).restore(
        again, torch.optim.SGD(again.parameters(), lr=0.1, momentum=0.9)) == 1
    assert all(torch.equal(again.state_dict()[k], v) for k, v in first.items())
    with pytest.raises(FormatError, match=r"another configuration \(lr: stored 0.1, now 0.2\)"):
        resume.EpochCheckpoint(tmp_path / "loop.json", {"lr": 0.2}).restore(again, opt)
