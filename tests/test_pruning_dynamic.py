"""Dynamic masks (SR-STE): each step of :mod:`patsparse.pruning.dynamic` against a plain PyTorch
reference, the gradual connectivity schedule, and ``ps.prune(dynamic=...)`` end to end.

Small and fast: digits and a ConvNet of width 0.25, a few batches.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import patsparse as ps
from patsparse.errors import InputError
from patsparse.pruning import PruneRecipe, check_weights, plan_layers
from patsparse.pruning.admm import warmup_cosine
from patsparse.pruning.dynamic import DynamicMasks, decay_for_reach
from patsparse.pruning.layers import PATTERN, scheduled_keep
from patsparse.pruning.projection import prune_layer
from patsparse.pruning.spec import PRUNED
from test_pruning_budget import loaders, small_net  # noqa: F401  (loaders is a fixture)

LIB = ps.pattern_library("phase2")


def batch(loaders):
    return next(iter(loaders[0]))


def projected(weight: torch.Tensor, plan) -> torch.Tensor:
    return prune_layer(weight, plan, LIB)[0]


def test_ste_step_applies_the_gradient_at_the_projected_weights_to_the_dense_ones(loaders):
    x, y = batch(loaders)
    m = small_net()
    ref = copy.deepcopy(m)
    dense = {n: p.detach().clone() for n, p in m.named_parameters()}
    ref_plans = plan_layers(ref, 8.0)
    with torch.no_grad():
        for p in ref_plans:
            p.module.weight.copy_(projected(p.module.weight, p))
    F.cross_entropy(ref(x), y).backward()  # the reference: plain autograd at proj(W)

    plans = plan_layers(m, 8.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with DynamicMasks(plans, LIB, decay=0.0) as dyn:
        F.cross_entropy(m(x), y).backward()
        ref_params = dict(ref.named_parameters())
        for n, p in m.named_parameters():
            assert torch.allclose(p.grad, ref_params[n].grad, atol=1e-6), n
        dyn.before_step()
        for p in plans:  # the dense weights are back before the optimizer steps
            name = next(n for n, mod in m.named_modules() if mod is p.module)
            assert torch.equal(p.module.weight, dense[f"{name}.weight"])
        opt.step()
        dyn.after_step()
        for p, w in zip(plans, dyn.dense):
            name = next(n for n, mod in m.named_modules() if mod is p.module)
            want = dense[f"{name}.weight"] - 0.1 * ref_params[f"{name}.weight"].grad
            assert torch.allclose(w, want, atol=1e-6), name  # W - lr * grad at proj(W): straight-through
            assert torch.equal(p.module.weight, projected(w, p))  # the next forward sees proj(W)
    for p, w in zip(plans, dyn.dense):  # leaving puts the dense weights back
        assert torch.equal(p.module.weight, w)


def test_decay_touches_only_pruned_entries():
    m = small_net()
    plans = plan_layers(m, 8.0)
    dyn = DynamicMasks(plans, LIB, decay=0.3)
    grads = []
    for p in plans:
        p.module.weight.grad = torch.randn_like(p.module.weight)
        grads.append(p.module.weight.grad.clone())
    dyn.before_step()
    for p, g, w, mask in zip(plans, grads, dyn.dense, dyn.masks):
        got = p.module.weight.grad
        kept = mask.bool()
        assert torch.equal(got[kept], g[kept])  # kept entries: the data gradient alone
        assert torch.allclose(got[~kept], g[~kept] + 0.3 * w[~kept])
        assert bool((~kept).any()) and bool((w[~kept] != 0).any())  # the check above had something to see


def test_masks_rederived_every_k_steps_are_those_of_the_projection_of_w():
    m = small_net()
    plans = plan_layers(m, 8.0)
    dyn = DynamicMasks(plans, LIB, decay=0.0, every=3)
    first = [ids.clone() for ids in dyn.ids]
    torch.manual_seed(1)
    for step in range(1, 4):
        dyn.before_step()
        with torch.no_grad():
            for p in plans:  # an optimizer step that moves the dense weights a lot
                p.module.weight.add_(torch.randn_like(p.module.weight))
        dyn.after_step()
        for p, w, ids, mask, old in zip(plans, dyn.dense, dyn.ids, dyn.masks, first):
            want_w, want_ids = prune_layer(w, p, LIB)
            if step < 3:  # not due yet: the masks of the start, applied to the new W
                assert torch.equal(ids, old)
                assert torch.equal(p.module.weight, w * mask)
            else:
                assert torch.equal(ids, want_ids.cpu())
                assert torch.equal(p.module.weight, want_w)
    assert dyn.epoch_info()["mask_changes"] > 0


def test_cubic_schedule_goes_from_every_kernel_to_the_target_exactly():
    plans = [p for p in plan_layers(small_net(), 8.0) if p.mode != PATTERN]
    for p in plans:
        keeps = [scheduled_keep(p, f / 20, "cubic") for f in range(21)]
        assert keeps[0] == p.kernels and keeps[-1] == p.keep
        assert all(b <= a for a, b in zip(keeps, keeps[1:]))
        assert keeps[10] == max(p.keep, round(p.kernels - (p.kernels - p.keep) * (1 - 0.5 ** 3)))
    with pytest.raises(InputError, match="schedule must be one of"):
        scheduled_keep(plans[0], 0.5, "linear")


def test_gradual_dynamic_masks_keep_every_kernel_first_and_the_budget_at_the_end():
    m = small_net()
    plans = plan_layers(m, 8.0)
    total = 4
    dyn = DynamicMasks(plans, LIB, decay=0.0, ramp=lambda step: step / total)
    conn = [(p, i) for i, p in enumerate(plans) if p.mode != PATTERN]
    assert all(int((dyn.ids[i] != PRUNED).sum()) == p.kernels for p, i in conn)
    for _ in range(total):
        dyn.before_step()
        dyn.after_step()
    assert [int((dyn.ids[i] != PRUNED).sum()) for p, i in conn] == [p.keep for p, _ in conn]


def test_decay_for_reach_leaves_exp_minus_reach_under_momentum_sgd():
    """The reference: one weight under torch's Nesterov SGD and the warm-up + cosine schedule,
    pulled by the decay alone."""
    steps, lr, momentum, reach = 400, 0.03, 0.9, 3.0
    decay = decay_for_reach(reach, lr, momentum, steps, 0.05)
    w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=True)
    sched = warmup_cosine(opt, steps, 0.05)
    for _ in range(steps):
        w.grad = decay * w.detach().clone()
        opt.step()
        sched.step()
    assert -math.log(float(w.detach())) == pytest.approx(reach, rel=0.1)


@pytest.mark.parametrize("progressive", [False, True])
def test_prune_with_dynamic_masks_meets_its_spec_and_records_the_phases(loaders, progressive):
    m = small_net()
    ps.prune(m, loaders[0], rate=8, dynamic=0.5, retrain_epochs=2, eval_loader=loaders[1], progress=False,
             recipe=PruneRecipe(progressive=progressive))
    check_weights(m, m.patsparse_spec, "pruned")
    assert ps.describe(m).conv3x3_rate == pytest.approx(8.0, rel=0.02)
    r = m.patsparse_recipe
    assert (r.dynamic, r.retrain_epochs, r.dynamic_epochs, r.progressive) == (0.5, 2, 1, progressive)
    phases = [h["phase"] for h in m.patsparse_history]
    assert phases == ["dynamic", "hard-pruned", "retrain", "done"]
    dyn = m.patsparse_history[0]
    assert 0 <= dyn["mask_changes"] <= 1 and "eval" in dyn
    plans = plan_layers(small_net(), 8.0)  # what prune planned: from the same initial weights
    assert dyn["kept"] == pytest.approx(sum(p.keep for p in plans) / sum(p.kernels for p in plans))


class _Batches:
    """A loader without ``len`` whose passes are a few fixed batches."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_short_loader_without_len_and_masks_rederived_across_epochs(loaders):
    batches = [b for _, b in zip(range(3), loaders[0])]
    m = small_net()
    ps.prune(m, _Batches(batches), rate=8, dynamic=1.0, retrain_epochs=2,
             recipe=PruneRecipe(dynamic_every=2, dynamic=1.0), progress=False)
    check_weights(m, m.patsparse_spec, "pruned")
    assert [h["phase"] for h in m.patsparse_history] == ["dynamic", "dynamic", "done"]  # no masked phase left


class _Untouchable:
    """A loader that fails the test if anything reads it: knobs must be checked first."""

    def __len__(self):
        raise AssertionError("the loader was read")

    def __iter__(self):
        raise AssertionError("the loader was read")


@pytest.mark.parametrize("kwargs,match", [
    ({"dynamic": 1.5}, "dynamic must be a fraction"),
    ({"dynamic": 0.5, "admm_iters": 2}, "dynamic=0.5 asks for dynamic masks, which replace ADMM's penalty"),
    ({"dynamic": 0.5, "oneshot": False}, "drop one of the two"),
    ({"dynamic": 0.5, "retrain_epochs": 0}, "retrain_epochs=0 leaves none"),
    ({"recipe": PruneRecipe(dynamic_reach=10.0)}, "dynamic_reach configure dynamic masks"),
    ({"recipe": PruneRecipe(progressive=True)}, "progressive tightens connectivity"),
    ({"recipe": PruneRecipe(dynamic=0.5, dynamic_every=0)}, "dynamic_every must be an int >= 1"),
])
def test_bad_dynamic_knobs_fail_before_any_data_loads(kwargs, match):
    with pytest.raises(InputError, match=match):
        ps.prune(small_net(), _Untouchable(), rate=8, progress=False, **kwargs)


def test_cli_dynamic_flag_and_its_conflict_with_admm(tmp_path, capsys):
    from patsparse.cli import main

    common = ["--model", "convnet", "--width", "0.25", "--dense-epochs", "1", "--dataset", "digits",
              "--subset", "128", "--batch-size", "64", "--quiet", "--rate", "8"]
    assert main(["prune", *common, "--admm", "--dynamic", "0.5", "--out", str(tmp_path / "x")]) == 1
    assert "dynamic=0.5 asks for dynamic masks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # failed before the dense parent was trained
    assert main(["prune", *common, "--dynamic", "0.5", "--dynamic-reach", "5", "--retrain-epochs", "2",
                 "--out", str(tmp_path / "d")]) == 0
    saved = PruneRecipe.load(tmp_path / "d" / "recipe.yaml")
    assert (saved.dynamic, saved.dynamic_reach) == (0.5, 5.0)
