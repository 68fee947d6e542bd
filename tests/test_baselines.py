"""Unstructured-magnitude and L1-filter baselines: rate met, masks held through retraining."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from patsparse.errors import InputError
from patsparse.pruning import baselines as B


def small_net(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 3))


PRUNED = ["3", "7"]  # the 3x3 convs but the first (the 1x1 conv is not pruned by default)


def test_layer_selection_matches_pattern_pruning() -> None:
    assert [n for n, _ in B.pruned_convs(small_net())] == PRUNED


def _apply(model: nn.Module, masks: dict) -> None:
    mods = dict(model.named_modules())
    with torch.no_grad():
        for n, m in masks.items():
            mods[n].weight.mul_(m)


@settings(max_examples=15, deadline=None)
@given(rate=st.floats(2.0, 16.0), method=st.sampled_from(B.METHODS), seed=st.integers(0, 1000))
def test_rate_within_two_percent(rate: float, method: str, seed: int) -> None:
    model = small_net(seed, width=32)
    masks = B.baseline_masks(model, method, rate)
    _apply(model, masks)
    total = sum(m.weight.numel() for _, m in B.pruned_convs(model))
    kept = sum(int(m.sum()) for m in masks.values())
    if method == "magnitude":
        assert abs(B.measured_rate(model, PRUNED) - rate) / rate < 0.02
    else:  # whole filters: as close as half of the smallest filter (3x3 x 32 inputs) allows
        assert abs(kept - total / rate) <= 9 * 32 / 2


def test_filter_rate_exact_when_divisible() -> None:
    model = small_net(1, width=32)
    _apply(model, B.filter_masks(model, 8))
    assert B.measured_rate(model, PRUNED) == pytest.approx(8.0)


def test_filter_rate_within_two_percent_on_a_realistic_stack() -> None:
    """Nine 3x3 convs of 64..256 channels (a VGG-ish stack): whole filters still land in 2%."""
    torch.manual_seed(0)
    chans = [3, 64, 64, 128, 128, 128, 256, 256, 256, 256]
    model = nn.Sequential(*[nn.Conv2d(a, b, 3, bias=False) for a, b in zip(chans, chans[1:])])
    names = [n for n, _ in B.pruned_convs(model)]
    for rate in (8.0, 12.0, 16.0):
        m = B.filter_masks(model, rate)
        total = sum(x.numel() for x in m.values())
        assert abs(total / sum(int(x.sum()) for x in m.values()) - rate) / rate < 0.02, rate
    assert len(names) == 8


def test_magnitude_keeps_largest_weights() -> None:
    model = small_net(2)
    masks = B.magnitude_masks(model, 4.0)
    for name, m in B.pruned_convs(model):
        w = m.weight.detach().abs()
        kept, dropped = w[masks[name].bool()], w[~masks[name].bool()]
        assert kept.min() >= dropped.max()
        assert int(masks[name].sum()) == round(w.numel() / 4)


def test_global_magnitude_ranks_across_layers() -> None:
    model = small_net(3)
    with torch.no_grad():
        model[7].weight.mul_(100.0)  # layer "7" dominates: global ranking keeps mostly it
    masks = B.magnitude_masks(model, 4.0, scope="global")
    total = sum(m.weight.numel() for _, m in B.pruned_convs(model))
    assert int(sum(m.sum() for m in masks.values())) == round(total / 4)
    assert masks["7"].mean() > masks["3"].mean()


def test_filter_masks_remove_whole_filters_of_smallest_l1() -> None:
    model = small_net(4)
    with torch.no_grad():
        model[3].weight[5].mul_(1e-3)
    masks = B.filter_masks(model, 2.0)
    per_filter = masks["3"].flatten(1)
    assert ((per_filter.sum(1) == 0) | (per_filter.sum(1) == per_filter.shape[1])).all()
    assert per_filter[5].sum() == 0
    assert int((per_filter.sum(1) > 0).sum()) == 8


def test_bad_inputs() -> None:
    model = small_net()
    with pytest.raises(InputError, match="rate"):
        B.baseline_masks(model, "magnitude", 0.5)
    with pytest.raises(InputError, match="unknown baseline method"):
        B.baseline_masks(model, "random", 4)
    with pytest.raises(InputError, match="scope"):
        B.magnitude_masks(model, 4, scope="everywhere")
    with pytest.raises(InputError, match="no prunable 3x3"):
        B.baseline_masks(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "filter", 4)


@pytest.mark.parametrize("method", B.METHODS)
def test_masks_stay_zero_through_retraining(method: str) -> None:
    pytest.importorskip("patsparse.train.loop", reason="the training loop lands with the foundation")
    torch.manual_seed(0)
    x = torch.randn(96, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    model = small_net(5)
    before = {n: m.weight.detach().clone() for n, m in B.pruned_convs(model)}
    masks = B.prune_baseline(model, loader, method, 4.0, epochs=2, lr=0.1, progress=False)
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        w = mods[name].weight.detach()
        assert (w[mask == 0] == 0).all(), f"{name}: a pruned weight came back"
        assert not torch.equal(w[mask == 1], before[name][mask == 1]), f"{name}: kept weights did not train"
    assert B.measured_rate(model, PRUNED) >= 4.0 * 0.98
    # the enforcer's gradient hooks are gone after retraining: no leaked hooks
    model.eval()
    with torch.no_grad():
        mods["3"].weight.copy_(torch.randn_like(mods["3"].weight))
    mods["3"].weight.grad = None
    (model(x[:8]) * torch.randn(8, 3)).sum().backward()
    assert (mods["3"].weight.grad[masks["3"] == 0] != 0).any()
