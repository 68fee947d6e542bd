"""Pattern-aware ADMM on real (small) training: digits, a small ConvNet, a few short epochs.

These hold the promises of ``patsparse.prune``: every pruned 3x3 kernel is all-zero or exactly a
library pattern, through retraining and save/load; the requested rate is met within 2%; ADMM
terms are the squared-norm ones of the paper; bad input fails before training.
"""

import copy
import pytest
import torch
import yaml
from torch import nn

import patsparse as ps
from patsparse import models
from patsparse.data import get_loaders
from patsparse.errors import InputError
from patsparse.pruning import ADMMState, MaskEnforcer, PruneRecipe, plan_layers, run_admm
from patsparse.pruning.extraction import extract_library, plot_extraction
from patsparse.pruning.projection import project_connectivity, project_model, project_pattern
from patsparse.train.loop import evaluate, train_epoch


@pytest.fixture(scope="module")
def loaders():
    torch.manual_seed(0)
    return get_loaders("digits", batch_size=64, subset=512)


@pytest.fixture(scope="module")
def dense(loaders):
    """A ConvNet trained dense on digits: the parent every test prunes a copy of."""
    torch.manual_seed(0)
    m = models.get("convnet", num_classes=10, in_channels=1, width=0.5, variant="cifar")
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        train_epoch(m, loaders[0], opt, progress=False)
    m.patsparse_arch = {"name": "convnet", "num_classes": 10, "in_channels": 1, "width": 0.5, "variant": "cifar"}
    return m


def assert_pattern_invariant(model, library):
    """Every pruned-layer kernel is all-zero or has <= 4 non-zeros inside its spec pattern."""
    spec = model.patsparse_spec
    modules = dict(model.named_modules())
    lib = library.reshape(-1, 9).bool()
    for name, entry in spec["layers"].items():
        w = modules[name].weight.detach()
        nz = (w != 0).flatten(2)
        ids = entry["kernels"]
        assert bool((nz[ids < 0].sum(1) == 0).all()), f"{name}: pruned kernel has non-zeros"
        if entry["mode"] != "connectivity":
            kept = ids >= 0
            assert bool((nz[kept] <= lib[ids[kept]]).all()), f"{name}: weight outside its pattern"
            assert bool(((nz[kept].sum(1)) <= 4).all())


def test_prune_end_to_end_invariants(dense, loaders, tmp_path):
    train, test = loaders
    m = copy.deepcopy(dense)
    before = evaluate(m, test)["acc"]
    out = ps.prune(m, train, rate=8, admm_iters=2, epochs=1, retrain_epochs=2, progress=False)
    assert out is m
    assert_pattern_invariant(m, ps.pattern_library("phase2"))
    report = ps.describe(m)
    assert abs(report.conv3x3_rate - 8) / 8 < 0.02
    assert report.dense_3x3_layers == ["features.0"]
    after = evaluate(m, test)["acc"]
    assert after > 0.6, (before, after)  # real learning survived 8x pruning of a tiny net
    # the history records ADMM iterations with shrinking feasibility residuals and retraining
    admm = [h for h in m.patsparse_history if h["phase"] == "admm"]
    assert len(admm) == 2 and all(h["residual_pattern"] > 0 for h in admm)
    # save / load keeps everything, and the reloaded model still obeys the spec
    ps.save(m, tmp_path / "m")
    assert PruneRecipe.load(tmp_path / "m" / "recipe.yaml").rate == 8.0
    back = ps.load(tmp_path / "m")
    assert_pattern_invariant(back, ps.pattern_library("phase2"))
    x = next(iter(test))[0][:4]
    assert torch.equal(back(x), m.eval()(x))


def test_masked_retraining_keeps_zeros_with_momentum_decay_and_adam(dense, loaders):
    m = copy.deepcopy(dense)
    spec = project_model(m, 6.0, "phase3")
    for opt in (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
                torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-2)):
        with MaskEnforcer.from_spec(m, spec) as enforcer:
            # momentum built up on every weight *before* masking must not resurrect pruned ones
            x, y = next(iter(loaders[0]))
            train_epoch(m, loaders[0], opt, after_step=enforcer.after_step, progress=False)
            nn.functional.cross_entropy(m(x), y).backward()
            for name, entry in spec["layers"].items():
                w = dict(m.named_modules())[name].weight
                mask = ps.pruning.spec_masks(spec)[name]
                assert bool((w.grad[mask == 0] == 0).all()), "gradient of a pruned weight"
            m.zero_grad()
        m.patsparse_spec = spec
        assert_pattern_invariant(m, ps.pattern_library("phase3"))


def test_admm_terms_are_squared_norms_and_updates_follow_the_formulas(dense):
    m = copy.deepcopy(dense)
    plans = plan_layers(m, 8.0)
    lib = ps.pattern_library("phase2")
    state = ADMMState(plans, lib, rho=0.5)
    with torch.no_grad():  # move W off the feasible sets so every term is non-trivial
        for p in plans:
            p.module.weight.add_(0.05 * torch.randn_like(p.module.weight))
    for lv in state.layers:
        lv.u = torch.randn_like(lv.u) * 0.01
        lv.v = torch.randn_like(lv.v) * 0.01
    expected = sum(0.25 * ((lv.plan.module.weight - lv.z + lv.u) ** 2).sum()
                   + 0.25 * ((lv.plan.module.weight - lv.y + lv.v) ** 2).sum() for lv in state.layers)
    pen = state.penalty(m)
    assert torch.allclose(pen, expected)
    pen.backward()
    for lv in state.layers:
        w = lv.plan.module.weight
        assert torch.allclose(w.grad, 0.5 * (w - lv.z + lv.u) + 0.5 * (w - lv.y + lv.v), atol=1e-6)
    old = [(lv.plan.module.weight.detach().clone(), lv.u.clone(), lv.v.clone()) for lv in state.layers]
    state.update()
    for lv, (w, u, v) in zip(state.layers, old):
        assert torch.equal(lv.z, project_pattern(w + u, lib)[0])
        assert torch.equal(lv.y, project_connectivity(w + v, lv.plan.keep)[0])
        assert torch.allclose(lv.u, u + w - lv.z, atol=1e-6) and torch.allclose(lv.v, v + w - lv.y, atol=1e-6)
    u_before = state.layers[0].u.clone()
    state.set_rho(1.0)  # scaled duals rescale so rho * U is unchanged
    assert torch.allclose(state.layers[0].u * 1.0, u_before * 0.5)


def test_admm_drives_weights_towards_the_constraint_sets(dense, loaders):
    m = copy.deepcopy(dense)
    records = []
    run_admm(m, loaders[0], plan_layers(m, 8.0), ps.pattern_library("phase2"), rhos=[0.05, 0.15, 0.45],
             epochs=1, lr=0.01, progress=False,
             on_iteration=lambda it, r: records.append(r))
    res = [r["residual_pattern"] + r["residual_connectivity"] for r in records]
    assert res[-1] < res[0], res


def test_oneshot_equals_projection(dense, loaders):
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    ps.prune(a, loaders[0], rate=4, oneshot=True, retrain_epochs=0, progress=False)
    project_model(b, 4, allocation="lamp")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na


def test_extraction_schedule_counts_and_plot(dense, loaders, tmp_path):
    batches = [b for _, b in zip(range(2), loaders[0])]  # any iterable of batches is a loader
    res = extract_library(dense, batches, (32, 12, 8, 4), admm_iters=1, epochs=1, progress=False)
    kernels = sum(p.kernels for p in plan_layers(dense, 2.25))
    assert [s.library.shape[0] for s in res.steps] == [126, 32, 12, 8]
    for s, nxt in zip(res.steps, res.steps[1:]):
        assert int(s.counts.sum()) == kernels
        assert set(map(tuple, nxt.library.flatten(1).tolist())) <= set(map(tuple, s.library.flatten(1).tolist()))
        # kept = most used
        assert int(s.counts[s.kept].min()) >= int(s.counts[~torch.isin(torch.arange(len(s.counts)), s.kept)].max())
    assert res.library(4).shape == (4, 3, 3)
    assert 0 <= res.phase2_overlap() <= 8
    assert "coincide with the designed Phase-2 library" in res.summary()
    plot_extraction(res, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    # extraction trains a copy: the dense parent keeps all its weights
    assert bool((dense.features[4].weight != 0).all())


def test_bad_inputs_fail_before_training(dense, loaders):
    train = loaders[0]
    with pytest.raises(InputError, match="2.25"):
        ps.prune(copy.deepcopy(dense), train, rate=2.0, progress=False)
    with pytest.raises(InputError, match="cannot be reached"):
        ps.prune(copy.deepcopy(dense), train, rate=5000, progress=False)
    with pytest.raises(InputError, match="no prunable 3x3 conv"):
        ps.prune(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), train, progress=False)
    with pytest.raises(InputError, match="admm_iters"):
        ps.prune(copy.deepcopy(dense), train, admm_iters=-1, progress=False)
    with pytest.raises(InputError, match="unknown pattern library"):
        ps.prune(copy.deepcopy(dense), train, library="phase7", progress=False)
    with pytest.raises(InputError, match="must be a torch.nn.Module"):
        ps.prune("model", train)


def test_recipe_yaml_round_trip_and_validation(tmp_path):
    r = PruneRecipe(rate=12, library="phase3", layers=["a", "b"], rho=0.02, oneshot=False)
    r.save(tmp_path / "r.yaml")
    assert PruneRecipe.load(tmp_path / "r.yaml") == r
    assert yaml.safe_load((tmp_path / "r.yaml").read_text())["rate"] == 12
    (tmp_path / "bad.yaml").write_text("rate: 8\nrhoo: 1\n")
    with pytest.raises(InputError, match="unknown recipe keys \\['rhoo'\\]"):
        PruneRecipe.load(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="momentum"):
        PruneRecipe(momentum=1.5).validate()
    assert PruneRecipe(rho=0.01, rho_growth=3, rho_max=0.05, admm_iters=4).rho_schedule(100)[3] == 0.05


def test_cli_prune_and_extract(tmp_path, capsys):
    """The commands in-process (a subprocess per command would double the time on 2 cores)."""
    from patsparse.cli import main

    common = ["--dataset", "digits", "--subset", "128", "--batch-size", "64", "--quiet"]
    assert main(["prune", "--model", "convnet", "--width", "0.5", "--dense-epochs", "1", *common, "--rate", "4",
                 "--admm-iters", "1", "--epochs", "2", "--retrain-epochs", "1", "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "3x3-conv rate (pruned 3x3 layers): 4.0" in out and "test accuracy: dense" in out
    assert ps.describe(ps.load(tmp_path / "p")).conv3x3_rate == pytest.approx(4.0, rel=0.02)
    assert (tmp_path / "p" / "recipe.yaml").is_file() and (tmp_path / "p" / "history.json").is_file()
    assert not (tmp_path / "p" / "prune-checkpoint").exists()  # kept only until the pruned model is saved
    assert main(["extract", "--model", str(tmp_path / "p" / "dense"), *common, "--schedule", "16,8",
                 "--admm-iters", "1", "--out", str(tmp_path / "e")]) == 0
    assert "coincide with the designed Phase-2 library" in capsys.readouterr().out
    assert ps.pattern_library(tmp_path / "e" / "library_8.json").shape == (8, 3, 3)
    assert (tmp_path / "e" / "histogram.png").is_file()
    assert main(["prune", "--model", "convnet", *common, "--rate", "1.5", "--out", str(tmp_path / "x")]) == 1
    assert "rate must be a number >= 2.25" in capsys.readouterr().err


def test_batchnorm_recalibration_is_the_mean_of_batch_statistics(dense, loaders):
    from patsparse.pruning.api import recalibrate_batchnorm

    m = copy.deepcopy(dense)
    project_model(m, 8.0)
    batches = [b for _, b in zip(range(3), loaders[0])]
    assert recalibrate_batchnorm(m, batches, batches=2) == 2
    bn = m.features[1]
    conv = m.features[0]
    with torch.no_grad():
        means = [conv(x).mean(dim=(0, 2, 3)) for x, _ in batches[:2]]
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert bn.momentum == 0.1  # the usual momentum is restored for later training
