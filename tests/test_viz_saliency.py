"""Saliency methods against answers computed by hand on nets small enough to do so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from patsparse.errors import InputError
from patsparse.viz import saliency as S


class TwoLayer(nn.Module):
    """y = W2 relu(W1 x) with x the 2 pixels of a (1, 1, 1, 2) image; ``functional`` picks
    F.relu in forward instead of an nn.ReLU module (both must be guided)."""

    def __init__(self, functional: bool = False, act: nn.Module | None = None) -> None:
        super().__init__()
        self.l1 = nn.Linear(2, 3, bias=False)
        self.l2 = nn.Linear(3, 2, bias=False)
        self.act = act or nn.ReLU()
        self.functional = functional
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.l2.weight.copy_(torch.tensor([[2.0, -3.0, 1.0], [1.0, 1.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x.flatten(1))
        return self.l2(F.relu(h) if self.functional else self.act(h))


X = torch.tensor([[[[1.0, 2.0]]]])  # pre-activations [1, 2, 3]: all active


@pytest.mark.parametrize("functional", [False, True])
def test_guided_backprop_hand_computed(functional: bool) -> None:
    net = TwoLayer(functional)
    # plain gradient of y0: 2*[1,0] - 3*[0,1] + 1*[1,1] = [3, -2]
    x = X.clone().requires_grad_(True)
    net(x)[0, 0].backward()
    assert torch.allclose(x.grad.flatten(), torch.tensor([3.0, -2.0]))
    # guided: the negative gradient (-3) into the 2nd ReLU is dropped: 2*[1,0] + [1,1] = [3, 1]
    g = S.guided_backprop(net, X, target=0)
    assert torch.allclose(g.flatten(), torch.tensor([3.0, 1.0]))


def test_guided_backprop_blocks_inactive_units() -> None:
    net = TwoLayer()
    x = torch.tensor([[[[1.0, -2.0]]]])  # pre-activations [1, -2, -1]: only unit 0 active
    g = S.guided_backprop(net, x, target=0)
    assert torch.allclose(g.flatten(), torch.tensor([2.0, 0.0]))


def test_guided_backprop_relu6_upper_bound() -> None:
    net = TwoLayer(act=nn.ReLU6())
    x = torch.tensor([[[[7.0, 2.0]]]])  # pre-activations [7, 2, 9]: units 0 and 2 saturate
    g = S.guided_backprop(net, x, target=0)
    # only unit 1 passes, and its gradient -3 is negative: nothing survives
    assert torch.allclose(g.flatten(), torch.zeros(2))
    g1 = S.guided_backprop(net, x, target=1)
    assert torch.allclose(g1.flatten(), torch.tensor([0.0, 1.0]))


def _reference_guided(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """The classic implementation: full backward hooks on nn.ReLU modules clamping grad_input."""
    hooks = [m.register_full_backward_hook(lambda _m, gi, _go: (gi[0].clamp(min=0),))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        xg = x.clone().requires_grad_(True)
        model(xg)[:, target].sum().backward()
    finally:
        for h in hooks:
            h.remove()
    return xg.grad


def test_guided_backprop_matches_hook_reference_on_conv_net() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).eval()
    x = torch.randn(3, 2, 8, 8)
    ours = S.guided_backprop(net, x, target=2)
    ref = _reference_guided(net, x, 2)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(ours, torch.zeros_like(ours))


def test_guided_backprop_restores_model_state_and_handles_inplace() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    net.train()
    S.guided_backprop(net, torch.randn(2, 1, 6, 6))
    assert net.training
    assert all(p.requires_grad and p.grad is None for p in net.parameters())


def test_guided_backprop_rejects_model_without_relu() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(InputError, match="no ReLU"):
        S.guided_backprop(net, torch.randn(1, 1, 2, 2))


def test_bad_inputs_are_named() -> None:
    net = TwoLayer()
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        S.guided_backprop(net, torch.randn(2, 2))
    with pytest.raises(InputError, match="out of range"):
        S.guided_backprop(net, X, target=5)
    with pytest.raises(InputError, match="NaN"):
        S.integrated_gradients(net, torch.full((1, 1, 1, 2), float("nan")))
    with pytest.raises(InputError, match="method"):
        S.integrated_gradients(net, X, method="simpson")


def test_integrated_gradients_linear_model_is_exact() -> None:
    torch.manual_seed(1)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.randn(2, 3, 2, 2)
    base = torch.randn(2, 3, 2, 2)
    res = S.integrated_gradients(lin, x, target=[1, 3], baseline=base, steps=3, method="left")
    w = lin[1].weight
    expected = torch.stack([(x[i] - base[i]).flatten() * w[t] for i, t in enumerate([1, 3])]).view_as(x)
    assert torch.allclose(res.attributions, expected, atol=1e-6)
    assert res.delta.abs().max() < 1e-5


class Square(nn.Module):
    """Logits (sum x^2, sum x): IG of class 0 from baseline b is exactly x^2 - b^2 per pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.pow(2).flatten(1).sum(1), x.flatten(1).sum(1)], 1)


@pytest.mark.parametrize("method", ["middle", "trapezoid"])
def test_integrated_gradients_quadratic_hand_computed(method: str) -> None:
    x = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])
    b = torch.tensor([[[[0.0, 1.0], [0.5, -1.0]]]])
    res = S.integrated_gradients(Square(), x, 0, baseline=b, steps=4, method=method)
    assert torch.allclose(res.attributions, x ** 2 - b ** 2, atol=1e-5)


def test_integrated_gradients_completeness_on_relu_net() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))
    x = torch.randn(2, 1, 10, 10)
    coarse = S.integrated_gradients(net, x, steps=4, method="right")
    fine = S.integrated_gradients(net, x, steps=256, batch_size=64)
    gap = (fine.score_input - fine.score_baseline).abs()
    assert (fine.delta.abs() <= 0.01 * gap + 1e-4).all(), (fine.delta, gap)
    assert fine.delta.abs().sum() < coarse.delta.abs().sum()


def test_inverted_representation_of_identity_layer_recovers_image() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Identity(), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.rand(1, 1, 8, 8)
    inv = S.invert_representation(net, x, "0", steps=300, lr=0.05, tv_weight=0.0, norm_weight=0.0)
    assert (inv.image - x).abs().max() < 1e-2
    assert inv.feature_loss_end < 1e-4 < inv.feature_loss_start


def test_inverted_representation_conv_features_and_errors() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 2))
    x = torch.rand(1, 1, 8, 8)
    inv = S.invert_representation(net, x, "3", steps=150, bounds=(0.0, 1.0))
    assert inv.feature_loss_end < 0.2 * inv.feature_loss_start
    assert inv.image.min() >= 0 and inv.image.max() <= 1
    with pytest.raises(InputError, match="no layer named 'conv9'"):
        S.invert_representation(net, x, "conv9")


def test_total_variation_hand_computed() -> None:
    z = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]]]])
    # one interior corner: dx = 1, dy = 2 -> (1 + 4)^(beta/2)
    assert torch.isclose(S.total_variation(z, beta=2.0), torch.tensor(5.0), atol=1e-6)
    assert torch.isclose(S.total_variation(z, beta=1.0), torch.tensor(5.0).sqrt(), atol=1e-5)
