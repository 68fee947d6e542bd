"""Layer-wise reconstruction (:mod:`patsparse.pruning.reconstruct`) against plain PyTorch
references: im2col columns against the conv itself, the per-filter solve against
``torch.linalg.lstsq`` of the masked problem, the recorded output errors against the layers'
real outputs, the spec after the refit, and ``ps.prune(reconstruct=...)`` end to end.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import patsparse as ps
from patsparse.errors import InputError
from patsparse.patterns.library import pattern_library
from patsparse.pruning import PruneRecipe, check_weights, plan_layers
from patsparse.pruning.projection import prune_planned
from patsparse.pruning.reconstruct import (conv_columns, layer_input, output_error, reconstruct,
                                           refit_weights)
from test_pruning_budget import loaders, small_net  # noqa: F401  (loaders is a fixture)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True),
    nn.Conv2d(4, 6, 3, padding=2, dilation=2, bias=False),
    nn.Conv2d(4, 6, 3, padding="same", padding_mode="reflect"),
    nn.Conv2d(6, 6, 3, padding=1, groups=3),
    nn.Conv2d(11, 5, 1, stride=2),
], ids=["stride2-bias", "dilation", "same-reflect", "groups", "1x1"])
def test_columns_reproduce_the_conv(conv):
    torch.manual_seed(0)
    x = torch.randn(2, conv.in_channels, 9, 10)
    cols = conv_columns(conv, x)
    b, k, length = cols.shape
    g, o = conv.groups, conv.out_channels
    w = conv.weight.detach().reshape(g, o // g, -1)
    out = torch.einsum("gfk,bgkl->bgfl", w, cols.view(b, g, k // g, length)).reshape(b, o, length)
    if conv.bias is not None:
        out = out + conv.bias.detach()[:, None]
    ref = conv(x).detach().flatten(2)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_refit_equals_lstsq_of_the_masked_problem(damping):
    """Each filter's kept weights solve min ||w X - w_d X_d||^2 + lam ||w - w_p||^2 over its kept
    set: torch.linalg.lstsq of the stacked system gives the same weights, and the rest are 0."""
    torch.manual_seed(1)
    g, per, k, n = 2, 5, 10, 300
    x = torch.randn(g, k, n, dtype=torch.float64)
    xd = x + 0.3 * torch.randn(g, k, n, dtype=torch.float64)
    w_dense = torch.randn(g, per, k, dtype=torch.float64)
    mask = (torch.rand(g, per, k) < 0.5).double()
    mask[0, 0] = 0  # a filter with nothing kept
    mask[0, 1] = 1  # one with everything kept
    w_p = w_dense * mask
    h, c = x @ x.transpose(1, 2), x @ xd.transpose(1, 2)
    got = refit_weights(w_dense, w_p, mask, h, c, damping)
    assert torch.equal(got[mask == 0], torch.zeros_like(got[mask == 0]))
    for gi in range(g):
        lam = damping * float(h[gi].diagonal().mean())
        for f in range(per):
            s = torch.nonzero(mask[gi, f]).flatten()
            if len(s) == 0:
                continue
            a = torch.cat([x[gi, s].T, math.sqrt(lam) * torch.eye(len(s), dtype=torch.float64)])
            rhs = torch.cat([xd[gi].T @ w_dense[gi, f], math.sqrt(lam) * w_p[gi, f, s]])
            ref = torch.linalg.lstsq(a, rhs[:, None]).solution.flatten()
            assert torch.allclose(got[gi, f, s], ref, atol=1e-8), (gi, f)
    direct = ((torch.einsum("gfk,gkn->gfn", got, x) - torch.einsum("gfk,gkn->gfn", w_dense, xd)) ** 2).sum()
    target = (torch.einsum("gfk,gkn->gfn", w_dense, xd) ** 2).sum()
    assert output_error(got, w_dense, h, c, xd @ xd.transpose(1, 2)) == pytest.approx(float(direct / target))


class TupleNet(nn.Module):
    """Every kind of layer the refit handles: a dense first conv, a 3x3 conv with bias, a
    stride-2 3x3 conv, a grouped 1x1 conv (virtual 3x3 kernels), BatchNorm; the forward returns a
    tuple, which only ``ps.prune`` needs a selector for."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1, bias=True), nn.ReLU(),
            nn.Conv2d(12, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 20, 1, bias=False), nn.BatchNorm2d(20), nn.ReLU(),
            nn.Conv2d(20, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        f = self.features(x)
        return self.fc(f.mean(dim=(2, 3))), f


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Blurred noise: neighbouring pixels correlate, as in real images, so that kept taps can
    stand in for pruned ones (the case the refit exists for)."""
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.randn(n, 1, 20, 20, generator=g), 5, stride=1, padding=2)


def hard_pruned(seed: int):
    torch.manual_seed(seed)
    model = TupleNet()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    dense = copy.deepcopy(model)
    plans = plan_layers(model, 8, allocation="lamp")
    spec = prune_planned(plans, pattern_library("phase2"), 8)
    return model, dense, spec


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refit_never_loses_to_the_projection_and_records_the_true_errors(seed):
    model, dense, spec = hard_pruned(seed)
    assert {e["mode"] for e in spec["layers"].values()} == {"pattern+connectivity", "grouped1x1"}
    images = smooth_images(48, seed)
    loader = [(images[i:i + 16], torch.zeros(16, dtype=torch.long)) for i in range(0, 48, 16)]
    model.train()
    record = reconstruct(model, dense, spec, loader, 40, positions=10 ** 6)  # every position: H is exact
    assert record["images"] == 40 and list(record["layers"]) == list(spec["layers"])
    check_weights(model, spec, "refit model")  # zeros stayed zero
    modules, refs = dict(model.named_modules()), dict(dense.named_modules())
    model.eval()
    dense.eval()
    x = images[:40]
    for name, errors in record["layers"].items():
        assert errors["error_refit"] <= errors["error_projected"] + 1e-9, name
        with torch.no_grad():
            ours = modules[name](layer_input(model, modules[name], x))
            theirs = refs[name](layer_input(dense, refs[name], x))
        assert errors["error_refit"] == pytest.approx(float(((ours - theirs) ** 2).sum() / (theirs ** 2).sum()),
                                                      rel=1e-4, abs=1e-7), name
    first = record["layers"]["features.2"]  # the same input in both models: only the refit differs
    assert first["error_refit"] < 0.5 * first["error_projected"]


def test_refit_leaves_unpruned_layers_and_the_training_mode_alone():
    model, dense, spec = hard_pruned(0)
    images = smooth_images(16, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    dense.eval()
    reconstruct(model, dense, spec, [(images, torch.zeros(16, dtype=torch.long))], 16)
    assert model.training and not dense.training
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{n}.weight" for n in spec["layers"]} | {"features.2.bias", "features.10.bias"}


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = small_net()

    def forward(self, x):
        return {"logits": self.net(x), "mean": x.mean()}


def test_prune_with_the_knob_refits_before_the_checkpoint_and_keeps_its_spec(loaders, tmp_path):
    m = Pair()
    ps.prune(m, loaders[0], rate=8, retrain_epochs=1, reconstruct=100, output=lambda o: o["logits"],
             eval_loader=loaders[1], progress=False, checkpoint=tmp_path / "ck")
    phases = [h["phase"] for h in m.patsparse_history]
    assert phases == ["reconstruct", "hard-pruned", "retrain", "done"]
    refit = m.patsparse_history[0]
    assert refit["images"] == 100 and set(refit["layers"]) == set(m.patsparse_spec["layers"])
    assert all(v["error_refit"] <= v["error_projected"] + 1e-9 for v in refit["layers"].values())
    assert m.patsparse_recipe.reconstruct == 100
    check_weights(m, m.patsparse_spec, "pruned model")
    stored = json.loads((tmp_path / "ck" / "pruned.json").read_text())
    assert stored["config"]["recipe"]["reconstruct"] == 100
    assert [h["phase"] for h in stored["history"]] == ["reconstruct", "hard-pruned"]


class Unloadable:
    """A loader that fails if anything reads it: errors must come before data."""

    def __iter__(self):
        raise AssertionError("the loader was read")

    def __len__(self):
        raise AssertionError("the loader was read")


@pytest.mark.parametrize("value", [-1, 1.5, True, "256"])
def test_bad_knob_values_fail_before_data_loads(value):
    with pytest.raises(InputError, match=r"recipe: reconstruct must be an int >= 0"):
        PruneRecipe(reconstruct=value).validate()
    with pytest.raises(InputError, match=r"reconstruct must be an int >= 0"):
        ps.prune(small_net(), Unloadable(), rate=8, reconstruct=value, progress=False)
