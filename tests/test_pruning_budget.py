"""ADMM at a user's budget: the derived penalty schedule, LAMP allocation, distillation, the
per-iteration record (residuals, projection gap) and the errors for unusable input.

Small and fast: digits and a ConvNet of width 0.25, a few batches.
"""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import patsparse as ps
from patsparse import models
from patsparse.data import get_loaders
from patsparse.errors import DivergedError, InputError
from patsparse.pruning import ADMMState, PruneRecipe, plan_layers
from patsparse.pruning.admm import warmup_cosine
from patsparse.pruning.layers import lamp_shares
from patsparse.pruning.recipe import contraction
from patsparse.train.distill import Distillation


@pytest.fixture(scope="module")
def loaders():
    return get_loaders("digits", batch_size=64, subset=384)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return models.get("convnet", num_classes=10, in_channels=1, width=0.25, variant="cifar")


def test_contraction_matches_nesterov_sgd_on_a_quadratic():
    """The model behind the derived schedule, checked against torch's own optimizer."""
    for lr, rho, m in ((0.01, 0.1, 0.9), (0.01, 2.0, 0.9), (0.1, 0.5, 0.5)):
        w = nn.Parameter(torch.tensor([1.0]))
        opt = torch.optim.SGD([w], lr=lr, momentum=m, nesterov=True)
        dist = []
        for _ in range(400):
            opt.zero_grad()
            (0.5 * rho * w.pow(2).sum()).backward()
            opt.step()
            dist.append(abs(float(w)))
        measured = (max(dist[300:]) / max(dist[200:300])) ** (1 / 100)  # envelope decay per step
        assert measured == pytest.approx(contraction(lr * rho, m), rel=0.02)


def test_derived_rho_meets_strength_and_reach_at_the_last_iteration():
    r = PruneRecipe(admm_iters=4, rho_growth=2.0, penalty_strength=0.05, penalty_reach=3.0, lr=0.01, momentum=0.9)
    for steps in (47, 470, 4700):  # enough steps: the strength decides, whatever the loader
        rhos = r.rho_schedule(steps)
        assert r.lr * rhos[-1] == pytest.approx(0.05) and r.reach(rhos[-1], steps) >= 3.0
        assert all(math.isclose(b / a, 2.0) for a, b in zip(rhos, rhos[1:])) and len(rhos) == 4
    # a short loader: rho grows until the reach is met
    rhos = r.rho_schedule(10)
    assert r.lr * rhos[-1] > 0.05 and r.reach(rhos[-1], 10) == pytest.approx(3.0, rel=1e-6)
    assert r.min_steps() == 3  # the fewest steps that reach 1 at the strongest pull
    # an explicit rho is the classic geometric schedule
    assert PruneRecipe(rho=0.01, rho_growth=3.0, rho_max=0.05, admm_iters=3).rho_schedule(100) == [0.01, 0.03, 0.05]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=6), st.data())
def test_lamp_shares_sum_to_the_budget_and_respect_floors(sizes, data):
    g = torch.Generator().manual_seed(len(sizes))
    energies = [torch.rand(n, generator=g) ** 3 for n in sizes]
    floors = [data.draw(st.integers(1, n)) for n in sizes]
    total = data.draw(st.integers(sum(floors), sum(sizes)))
    counts = lamp_shares(energies, total, floors)
    assert sum(counts) == total
    assert all(f <= c <= n for f, c, n in zip(floors, counts, sizes))


def test_lamp_takes_more_from_the_layer_whose_energy_is_concentrated():
    flat = torch.ones(100)                       # every kernel matters as much as any other
    peaked = torch.cat([torch.full((5,), 100.0), torch.full((95,), 1e-4)])  # five kernels carry it
    counts = lamp_shares([flat, peaked], 60, [1, 1])
    assert counts[0] > counts[1] >= 5


@pytest.mark.parametrize("rate", [4.0, 8.0, 16.0])
def test_lamp_plan_meets_the_rate_within_two_percent(rate):
    m = small_net()
    plans = plan_layers(m, rate, allocation="lamp", library=ps.pattern_library("phase2"))
    kernels = sum(p.kernels for p in plans)
    kept = sum(p.keep for p in plans)
    assert abs(9 * kernels / (4 * kept) / rate - 1) <= 0.02
    uniform = plan_layers(m, rate)
    assert [p.keep for p in plans] != [p.keep for p in uniform] or rate == 4.0


def test_rate_granularity_error_does_not_contradict_itself():
    m = models.get("convnet", num_classes=10, in_channels=1, width=0.5, variant="cifar")
    with pytest.raises(InputError, match="kept whole") as e:  # 3 kernels give 1248x, 4 give 936x
        plan_layers(m, 1000)
    assert "limits the rate" not in str(e.value)


def test_distillation_term_is_zero_for_the_teacher_itself_and_mixes_linearly():
    m = small_net().eval().requires_grad_(False)
    d = Distillation.frozen_copy(m, weight=0.5, temperature=4.0)
    x = torch.randn(8, 1, 28, 28)
    logits = m(x)
    task = torch.tensor(2.0)
    assert torch.allclose(d.mix(task, logits, x), 0.5 * task, atol=1e-6)
    assert not any(p.requires_grad for p in d.teacher.parameters()) and d.teacher is not m
    other = logits + torch.randn_like(logits)
    assert float(d.mix(task, other, x)) > 1.0


def test_warmup_cosine_ramps_then_decays_to_zero():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, steps=100, warmup=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0, abs=1e-3)
    assert lrs.index(max(lrs)) <= 10 and lrs[-1] < 0.01
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:]))


def test_progressive_connectivity_tightens_to_the_plan():
    m = small_net()
    plans = plan_layers(m, 8.0)
    state = ADMMState(plans, ps.pattern_library("phase2"), 0.1)
    state.set_progress(0.0)
    assert all(lv.keep == lv.plan.kernels for lv in state.layers if lv.y is not None)
    state.set_progress(0.5)
    mid = [lv.keep for lv in state.layers if lv.y is not None]
    state.set_progress(1.0)
    assert [lv.keep for lv in state.layers if lv.y is not None] == [p.keep for p in plans]
    assert all(p.keep < k < p.kernels for p, k in zip(plans, mid))


def test_prune_records_residuals_and_projection_gap_per_iteration(loaders, capsys):
    m = small_net()
    ps.prune(m, loaders[0], rate=8, admm_iters=2, epochs=1, retrain_epochs=1, eval_loader=loaders[1], progress=True)
    admm = [h for h in m.patsparse_history if h["phase"] == "admm"]
    assert [h["iteration"] for h in admm] == [1, 2]
    for h in admm:
        assert set(h["layers"]) == set(m.patsparse_spec["layers"])
        assert all(0 <= v for rec in h["layers"].values() for v in rec.values())
        assert {"acc", "projected_acc", "gap"} <= set(h["trial"])
        assert 0 < h["reach"] <= 3.0 + 1e-6
    out = capsys.readouterr().out
    assert "projected" in out and "furthest from their sparse sets" in out


def test_empty_loader_is_an_error_before_training():
    with pytest.raises(InputError, match="empty"):
        ps.prune(small_net(), [], rate=8, progress=False)


def test_tiny_loader_is_an_error_naming_the_steps(loaders):
    batch = next(iter(loaders[0]))
    with pytest.raises(InputError, match="needs at least 3 steps"):
        ps.prune(small_net(), [batch, batch], rate=8, epochs=1, progress=False)


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_net()

    def forward(self, x):
        return self.net(x), x.mean()


def test_tuple_output_needs_a_selector_and_works_with_one(loaders):
    with pytest.raises(InputError, match=r"output=lambda out: out\[0\]"):
        ps.prune(TupleNet(), loaders[0], rate=8, progress=False)
    m = TupleNet()
    ps.prune(m, loaders[0], rate=8, admm_iters=1, epochs=1, retrain_epochs=1, distill=0.5, output=lambda o: o[0],
             progress=False)
    assert set(m.patsparse_spec["layers"]) and isinstance(m(torch.zeros(1, 1, 28, 28)), tuple)


def test_divergence_stops_with_the_last_good_weights(loaders):
    m = small_net()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(DivergedError, match=r"ADMM iteration 1/1 .*start of that iteration"):
        ps.prune(m, loaders[0], rate=8, admm_iters=1, epochs=1, lr=1e6, retrain_epochs=0, distill=0.0, progress=False)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unset_retraining_rate_is_a_multiple_of_lr_and_is_saved_resolved():
    from patsparse.pruning.recipe import RETRAIN_LR_FACTOR

    r = PruneRecipe(lr=0.02)
    assert r.retrain_rate == pytest.approx(RETRAIN_LR_FACTOR * 0.02)
    assert r.for_loader(10).retrain_lr == pytest.approx(RETRAIN_LR_FACTOR * 0.02)
    assert PruneRecipe(lr=0.02, retrain_lr=0.005).for_loader(10).retrain_lr == 0.005


def test_prune_retrains_at_the_resolved_rate(loaders):
    m = small_net()
    ps.prune(m, loaders[0], rate=8, admm_iters=1, epochs=1, retrain_epochs=1, lr=0.004, progress=False)
    assert m.patsparse_recipe.retrain_lr == pytest.approx(3 * 0.004)


def test_steps_split_between_admm_and_retraining_and_all_retrain_when_oneshot():
    r = PruneRecipe(steps=1500, oneshot=False, admm_iters=4).for_loader(47)  # 6,000 images in batches of 128
    assert (r.epochs, r.retrain_epochs) == (4, 16)
    one = PruneRecipe(steps=1500, oneshot=True).for_loader(47)
    assert one.retrain_epochs == 32  # the steps ADMM would have taken retrain instead
    assert PruneRecipe(steps=1500, oneshot=True, retrain_epochs=3).for_loader(47).retrain_epochs == 3


def test_default_is_one_shot_and_an_admm_knob_selects_admm(loaders):
    one = small_net()
    ps.prune(one, loaders[0], rate=8, retrain_epochs=1, progress=False)
    assert one.patsparse_recipe.oneshot and one.patsparse_recipe.epochs is None
    assert one.patsparse_history[-1]["phase"] == "done" and one.patsparse_history[-1]["seconds"] > 0
    assert not [h for h in one.patsparse_history if h["phase"] == "admm"]
    # the recipe a one-shot run saves loads back as it ran
    assert PruneRecipe.from_dict(one.patsparse_recipe.to_dict()) == one.patsparse_recipe
    admm = small_net()
    # a small step budget: from the default one, the single ADMM iteration would run 250 epochs here
    ps.prune(admm, loaders[0], rate=8, admm_iters=1, retrain_epochs=1, progress=False, recipe=PruneRecipe(steps=12))
    assert not admm.patsparse_recipe.oneshot
    assert [h["iteration"] for h in admm.patsparse_history if h["phase"] == "admm"] == [1]


@pytest.mark.parametrize("knobs,named", [({"admm_iters": 2}, "admm_iters"), ({"rho": 0.1}, "rho"),
                                          ({"epochs": 1, "rho": 0.1}, "epochs, rho")])
def test_one_shot_with_admm_knobs_is_an_error_naming_them(loaders, knobs, named):
    with pytest.raises(InputError, match=f"{named} configure ADMM, which a one-shot run skips"):
        ps.prune(small_net(), loaders[0], rate=8, oneshot=True, progress=False, **knobs)
    with pytest.raises(InputError, match=f"{named} configure ADMM"):
        PruneRecipe(oneshot=True, **knobs).validate()
