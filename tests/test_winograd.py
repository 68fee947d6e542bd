"""The Winograd conv (codegen/winograd.py) against PyTorch: the transforms' algebra, the kernel on
random shapes for every vector width (this host's ISA natively, the other widths through the
portable dialect), its place among the dense conv schedules, a whole VGG-like net compiled with
it forced, and the NEON rendering cross-compiled and run under qemu."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis import HealthCheck, settings
from test_codegen_dense import conv_case
from test_export import build_and_run, check, need_aarch64

import patsparse as ps
from patsparse.compiler.api import build_from_graph, capture
from patsparse.compiler.codegen import winograd
from patsparse.compiler.codegen.base import ACTIVATIONS
from patsparse.compiler.codegen.ctest import width_target
from patsparse.compiler.codegen.dense_conv import gen_conv2d, schedules
from patsparse.compiler.codegen.kernels import candidates
from patsparse.compiler.codegen.plan import plan_graph
from patsparse.compiler.layout import Layout
from patsparse.compiler.target import TARGETS, detect
from patsparse.errors import InputError

HOST = detect()


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_transforms_compute_a_3x3_correlation(m):
    """A^T [(G g G^T) . (B^T d B)] A is the m x m valid correlation of d with g, in float64."""
    BT, G, AT = winograd.TRANSFORMS[m]
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    want = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T, want, atol=1e-12)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.sampled_from(winograd.TILE_SIZES), cin=st.integers(1, 19), cout=st.integers(1, 37),
       H=st.integers(3, 21), W=st.integers(3, 37), padding=st.sampled_from((0, 1)),
       extra_pad=st.integers(0, 1), pout=st.integers(0, 2), act=st.sampled_from(ACTIVATIONS),
       residual=st.booleans(), tile=st.sampled_from(((4, 2), (1, 4), (16, 1), (3, 3))),
       vl=st.sampled_from((HOST.require_cpu("host").lanes, 4, 8, 16)), seed=st.integers(0, 99))
def test_winograd_matches_torch(m, cin, cout, H, W, padding, extra_pad, pout, act, residual, tile, vl, seed):
    """Odd sizes, planes smaller than one tile, partial tile vectors and channel tiles, both paddings,
    an input halo wider than the padding, every activation, with and without a residual."""
    conv_case(cin=cin, cout=cout, k=3, stride=1, padding=padding, H=H, W=W, pin=padding + extra_pad,
              pout=pout, act=act, residual=residual, schedule={"wino": m, "mr": tile[0], "nr": tile[1]},
              seed=seed, target=width_target(vl))


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_winograd_deep_reduction_error(m):
    """512 input channels at 7x7 (ResNet-18's last stage): within the tests' 1e-4 of PyTorch."""
    conv_case(cin=512, cout=24, k=3, stride=1, padding=1, H=7, W=7, pin=1, pout=1, act="none",
              residual=True, schedule={"wino": m, "mr": 8, "nr": 1})


def test_winograd_schedule_errors():
    L = Layout(4, 8, 8, 1)
    for kw, msg in ((dict(k=3, stride=2, padding=1, out=Layout(4, 4, 4, 1)), "3x3 stride-1"),
                    (dict(k=5, stride=1, padding=2, out=Layout(4, 8, 8, 1), inp=Layout(4, 8, 8, 2)), "3x3 stride-1"),
                    (dict(k=3, stride=1, padding=1, out=L, inp=Layout(4, 8, 8, 0)), "halo")):
        with pytest.raises(InputError, match=msg):
            gen_conv2d("c", cin=4, cout=4, k=kw["k"], stride=kw["stride"], padding=kw["padding"],
                       in_layout=kw.get("inp", L), out_layout=kw["out"], schedule={"wino": 4, "mr": 4, "nr": 2},
                       target=HOST)
    for bad in ({"wino": 3, "mr": 4, "nr": 2}, {"wino": 4, "mr": 0, "nr": 2}, {"wino": "x"}):
        with pytest.raises(InputError, match="Winograd schedule"):
            gen_conv2d("c", cin=4, cout=4, k=3, padding=1, in_layout=L, out_layout=L, schedule=bad, target=HOST)


def _families(cin: int, cout: int, H: int, *, pad: int = 1, stride: int = 1, target=TARGETS["x86-64-avx512"]):
    Ho = (H + 2 - 3) // stride + 1
    return [("wino" if "wino" in s else "igemm")
            for s in schedules(cout=cout, out_layout=Layout(cout, Ho, Ho, 1), cin=cin, k=3, padding=1,
                               stride=stride, in_layout=Layout(cin, H, H, pad), target=target)]


def test_cost_model_ranks_winograd_where_it_wins():
    """Mid-size planes with many channels: Winograd first (the untuned default); planes of a few
    tile vectors' worth of idle lanes (4x4, 2x2 with 16 lanes): the implicit GEMM first, Winograd
    still measured by the tuner; never offered where it cannot run."""
    for cin, cout, H in ((64, 64, 32), (128, 128, 16), (256, 256, 8), (64, 64, 56), (256, 256, 14)):
        assert _families(cin, cout, H)[0] == "wino", (cin, cout, H)
    for cin, cout, H in ((512, 512, 4), (512, 512, 2)):
        fam = _families(cin, cout, H)
        assert fam[0] == "igemm" and "wino" in fam[:4], (cin, cout, H, fam)
    assert "wino" not in _families(64, 64, 16, stride=2)
    assert "wino" not in _families(64, 64, 16, pad=0)  # the input halo does not cover the padding


class SmallVGG(nn.Module):
    """VGG-like: dense 3x3 convs with ReLU, a residual add, max pools, odd plane sizes."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.c5 = nn.Conv2d(32, 24, 3)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x) + x)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        x = F.relu6(self.c4(x))
        x = self.c5(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_whole_model_with_winograd_forced(m):
    torch.manual_seed(0)
    model = SmallVGG().eval()
    x = torch.randn(2, 3, 19, 23)
    plan = plan_graph(capture(model, x[:1]), target=HOST, threads=2)
    convs = [s.cname for s in plan.steps if s.kind == "conv2d" and s.node.attrs["k"] == 3]
    assert len(convs) == 4  # c3 runs fused with its max pool (conv_pool.py)
    forced = {c: {"wino": m, "mr": 4, "nr": 2} for c in convs}
    cm = build_from_graph(capture(model, x[:1]), threads=2, schedules=forced, target=HOST)
    assert sum("wino" in layer.get("schedule", {}) for layer in cm.manifest["layers"]) == 4
    check(np.asarray(cm(x)).reshape(2, -1), model, x.numpy())


def test_tuner_measures_winograd():
    """The tuner's candidates for a dense 3x3 stride-1 layer include Winograd tiles."""
    plan = plan_graph(capture(SmallVGG().eval(), torch.zeros(1, 3, 32, 32)), target=HOST, threads=2)
    step = next(s for s in plan.steps if s.kind == "conv2d" and s.node.attrs["k"] == 3)
    assert any("wino" in c for c in candidates(step, HOST, 2))


def test_winograd_on_aarch64_under_qemu(tmp_path):
    """The NEON rendering: the untuned default picks Winograd for these layers on NEON, and the
    exported model gives PyTorch's numbers under qemu."""
    prefix = need_aarch64()
    torch.manual_seed(0)
    model = SmallVGG().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 19, 23)).astype(np.float32)
    plan = plan_graph(capture(model, torch.from_numpy(x[:1])), target=TARGETS["aarch64-neon"], threads=2)
    picked = [schedules(cout=s.out_layout.C, out_layout=s.out_layout, cin=s.in_layout.C, k=3,
                        padding=s.node.attrs["padding"], in_layout=s.in_layout, target=plan.target)[0]
              for s in plan.steps if s.kind == "conv2d" and s.node.attrs["k"] == 3]
    assert sum("wino" in p for p in picked) >= 3, picked
    out = ps.export(model, torch.from_numpy(x[:1]), tmp_path / "proj", target="aarch64-linux-gnu")
    check(build_and_run(out, x, prefix), model, x)
