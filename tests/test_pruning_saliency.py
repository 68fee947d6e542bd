"""Activation-aware saliency (:mod:`patsparse.pruning.saliency`) against plain PyTorch references:
the measured input moments against im2col columns, the weighted projections against a brute-force
choice, and ``ps.prune(saliency=...)`` end to end."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import patsparse as ps
from patsparse.errors import InputError
from patsparse.patterns.library import pattern_library
from patsparse.pruning import PruneRecipe, check_weights, plan_layers, project_connectivity, project_pattern
from patsparse.pruning.layers import LayerPlan, kernel_energies
from patsparse.pruning.reconstruct import conv_columns
from patsparse.pruning.saliency import input_moments
from test_pruning_budget import loaders, small_net  # noqa: F401  (loaders is a fixture)
from test_pruning_reconstruct import Unloadable


def _reference_moments(conv: nn.Conv2d, xs: list[torch.Tensor]) -> torch.Tensor:
    """E[x^2] per weight from im2col columns, broadcast to the weight's shape, mean 1."""
    cols = torch.cat([conv_columns(conv, x).double() for x in xs], dim=0)  # (B, C*kh*kw, L)
    per_row = cols.pow(2).mean(dim=(0, 2))
    g, o = conv.groups, conv.out_channels
    m = per_row.view(g, -1).repeat_interleave(o // g, dim=0).view(conv.weight.shape)
    return (m / m.mean()).float()


class _Wrap(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.pre = nn.Conv2d(conv.in_channels, conv.in_channels, 1)  # a different scale per channel
        self.conv = conv

    def forward(self, x):
        return self.conv(torch.relu(self.pre(x)))


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, stride=2, padding=1),
    nn.Conv2d(4, 6, 3, padding=2, dilation=2),
    nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"),
    nn.Conv2d(6, 6, 3, padding=1, groups=3),
    nn.Conv2d(6, 6, 3, padding=1, groups=6),
    nn.Conv2d(11, 5, 1, stride=2),
], ids=["stride2", "dilation", "same-reflect", "groups", "depthwise", "1x1"])
def test_moments_match_im2col_columns(conv):
    torch.manual_seed(0)
    net = _Wrap(conv)
    xs = [torch.randn(3, conv.in_channels, 9, 10), torch.randn(2, conv.in_channels, 9, 10)]
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in xs]
    plan = LayerPlan("conv", conv, "pattern")
    got = input_moments(net, [plan], loader, images=5)["conv"]
    with torch.no_grad():
        ref = _reference_moments(conv, [torch.relu(net.pre(x)) for x in xs])
    assert got.shape == conv.weight.shape and torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert net.training  # the training mode is put back


def _weights(o, i, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i, 3, 3, generator=g)
    imp = torch.rand(o, i, 3, 3, generator=g) * 3
    return w, imp


@settings(max_examples=25, deadline=None)
@given(o=st.integers(1, 5), i=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_weighted_pattern_choice_is_the_brute_force_argmax(o, i, seed):
    w, imp = _weights(o, i, seed)
    lib = pattern_library("phase2")
    projected, ids = project_pattern(w, lib, importance=imp)
    kept = torch.einsum("oihw,phw->oip", w * w * imp, lib.to(w))  # kept saliency of every mask
    assert torch.equal(ids, kept.argmax(dim=2))
    assert torch.equal(projected, w * lib[ids].to(w))  # the kept values are the weights themselves


@settings(max_examples=25, deadline=None)
@given(o=st.integers(1, 5), i=st.integers(1, 5), keep=st.integers(1, 25), seed=st.integers(0, 10_000))
def test_weighted_connectivity_keeps_the_most_salient_kernels(o, i, keep, seed):
    w, imp = _weights(o, i, seed)
    keep = min(keep, o * i)
    projected, kept = project_connectivity(w, keep, importance=imp)
    score = (w * w * imp).sum(dim=(2, 3)).flatten()
    assert int(kept.sum()) == keep
    if keep < o * i:
        assert score[kept.flatten()].min() >= score[~kept.flatten()].max()
    assert torch.equal(projected, w * kept[:, :, None, None])


def test_importance_changes_what_is_kept():
    """A large weight on an input that is never active loses to a smaller one on a busy input."""
    w = torch.zeros(1, 2, 3, 3)
    w[0, 0] = 3.0  # big weights, silent channel
    w[0, 1] = 1.0
    imp = torch.ones_like(w)
    imp[0, 0] = 0.01
    assert project_connectivity(w, 1)[1].tolist() == [[True, False]]
    assert project_connectivity(w, 1, importance=imp)[1].tolist() == [[False, True]]
    # within a kernel the taps compete too: the mask moves off the quiet taps
    w1 = torch.ones(1, 1, 3, 3)
    imp1 = torch.ones_like(w1)
    lib = pattern_library("phase2")
    first = project_pattern(w1, lib)[1].item()
    imp1[0, 0] = torch.where(lib[first].bool(), 0.1, 1.0)
    assert not (lib[project_pattern(w1, lib, importance=imp1)[1].item()].bool() & lib[first].bool()).all()


def test_plans_carry_the_importance_into_the_allocation():
    """The plans hold each layer's importance, and LAMP's energies are the weighted ones: the
    kept ``w^2 * importance`` of every kernel's best mask."""
    net = small_net()
    modules = dict(net.named_modules())
    g = torch.Generator().manual_seed(3)
    imp = {p.name: torch.rand(p.module.weight.shape, generator=g) for p in plan_layers(net, 8)}
    plans = plan_layers(net, 8, importance=imp)
    lib = pattern_library("phase2")
    for p in plans:
        assert p.importance is imp[p.name]
        w = modules[p.name].weight.detach()
        ref = torch.einsum("oihw,phw->oip", w * w * imp[p.name], lib.to(w)).amax(dim=2).flatten()
        assert torch.allclose(kernel_energies(p, lib), ref, rtol=1e-5, atol=1e-8)


def test_prune_with_saliency_keeps_the_spec_and_records_the_knob(loaders):
    m = small_net()
    ps.prune(m, loaders[0], rate=8, retrain_epochs=1, saliency=128, progress=False)
    check_weights(m, m.patsparse_spec, "pruned model")
    assert m.patsparse_recipe.saliency == 128


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_bad_saliency_fails_before_data_loads(value):
    with pytest.raises(InputError, match=r"saliency must be an int >= 0"):
        PruneRecipe(saliency=value).validate()
    with pytest.raises(InputError, match=r"saliency must be an int >= 0"):
        ps.prune(small_net(), Unloadable(), rate=8, saliency=value, progress=False)
