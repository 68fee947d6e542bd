"""The fused 1x1 conv + depthwise conv kernel (pw_dw.py) against PyTorch, and the plan that fuses
it into compiled models (MobileNet-V2's expand convs on large planes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from patsparse.compiler.api import capture
from patsparse.compiler.codegen.ctest import width_target
from patsparse.compiler.codegen.lowering import PW_DW_MIN_TENSOR_BYTES
from patsparse.compiler.codegen.plan import plan_graph
from patsparse.compiler.codegen.pw_dw import default_tile, gen_pw_dw
from patsparse.compiler.layout import Layout
from patsparse.errors import InputError, UnsupportedError
from patsparse.models.mobilenet import mobilenet_v2
from test_codegen_dense import _act, check_close, run_kernel


def case(*, cin, C, k=3, stride, padding=1, H, W, pin, pout, eact="relu6", act="relu6", vl=16,
         schedule=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cin, H, W, generator=g)
    ew, eb = torch.randn(C, cin, 1, 1, generator=g) / cin ** 0.5, torch.randn(C, generator=g)
    dw, db = torch.randn(C, 1, k, k, generator=g) / k, torch.randn(C, generator=g)
    e = _act(F.conv2d(x[None], ew, eb), eact)
    want = _act(F.conv2d(e, dw, db, stride=stride, padding=padding, groups=C), act)[0]
    Lin, Lout = Layout(cin, H, W, pin), Layout(C, *want.shape[1:], pout)
    kern = gen_pw_dw("pd", expand_weight=ew.numpy(), expand_bias=eb.numpy(), expand_act=eact, k=k,
                     stride=stride, padding=padding, in_layout=Lin, out_layout=Lout, act=act, target=width_target(vl),
                     schedule=schedule)
    assert kern.flops == 2 * C * cin * H * W + 2 * C * k * k * want.shape[1] * want.shape[2]
    got = run_kernel(kern, x.numpy(), dw.numpy(), db.numpy(), Lin, Lout, None)
    check_close(got, want)


@pytest.mark.parametrize("vl", [4, 8, 16])
@pytest.mark.parametrize("stride", [1, 2])
def test_mobilenet_block_shapes(vl, stride):
    """An expand 16 -> 96 (3 x 7 tiles on a 112-wide row at 16 lanes) with ReLU6 and a 3x3
    depthwise, on an odd-sized 37x45 image (rows and columns that end mid-vector)."""
    case(cin=16, C=96, stride=stride, H=37, W=45, pin=0, pout=1, vl=vl)


@settings(max_examples=16, deadline=None, derandomize=True)
@given(cin=st.integers(1, 9), C=st.integers(1, 21), k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 2),
       data=st.data(), H=st.integers(1, 17), W=st.integers(1, 40), pin=st.integers(0, 2),
       pout=st.integers(0, 2), eact=st.sampled_from(["none", "relu", "relu6"]),
       act=st.sampled_from(["none", "relu6"]), vl=st.sampled_from([8, 16]),
       mr=st.integers(1, 6), nr=st.integers(1, 4))
def test_pw_dw_matches_torch(cin, C, k, stride, data, H, W, pin, pout, eact, act, vl, mr, nr):
    """Any depthwise kernel, stride and padding, image size (one row or column too), halo,
    activations, expand tile and vector width; the output halo stays zero (run_kernel checks)."""
    padding = data.draw(st.integers(0, k - 1), label="padding")
    if min(H, W) + 2 * padding < k:
        return
    case(cin=cin, C=C, k=k, stride=stride, padding=padding, H=H, W=W, pin=pin, pout=pout, eact=eact,
         act=act, vl=vl, schedule={"mr": mr, "nr": nr}, seed=cin * 31 + C)


def test_default_tile_and_bad_arguments():
    assert default_tile(96, 112, 16, width_target(16)) == {"mr": 3, "nr": 7}  # 7 row vectors in one tile
    args = dict(expand_weight=np.ones((8, 4, 1, 1), np.float32), expand_bias=np.zeros(8, np.float32),
                expand_act="relu6", in_layout=Layout(4, 9, 9, 0), out_layout=Layout(8, 9, 9, 1),
                act="relu6", target=width_target(16))
    with pytest.raises(UnsupportedError, match="residual"):
        gen_pw_dw("p", **args, has_residual=True)
    with pytest.raises(UnsupportedError, match="stride 3"):
        gen_pw_dw("p", **args, stride=3)
    with pytest.raises(InputError, match="expand bias"):
        gen_pw_dw("p", **{**args, "expand_bias": np.full(8, np.nan, np.float32)})
    with pytest.raises(InputError, match="out of range"):
        gen_pw_dw("p", **args, schedule={"mr": 0, "nr": 1})
    with pytest.raises(InputError, match="expand"):
        gen_pw_dw("p", **{**args, "expand_weight": np.ones((8, 5, 1, 1), np.float32)})


def test_expand_and_depthwise_fuse_in_the_plan():
    """MobileNet-V2 at 224x224: the expand convs whose output exceeds L2 (features.2-4) fuse into
    their depthwise convs, the depthwise step reads the expand's input; smaller planes and
    16-register ISAs (AVX2, not measured) keep two kernels."""
    m = mobilenet_v2(num_classes=10).eval()
    plan = plan_graph(capture(m, torch.zeros(1, 3, 224, 224)), target=width_target(16))
    fused = [s for s in plan.steps if s.kind == "pw_dw"]
    assert [s.node.name for s in fused] == [f"features.{i}.conv.1.0" for i in (2, 3, 4)]
    names = {s.node.name for s in plan.steps}
    assert not {f"features.{i}.conv.0.0" for i in (2, 3, 4)} & names
    assert "features.5.conv.0.0" in names  # 192 x 28 x 28: stays in L2
    assert fused[0].node.inputs == ["features.1.conv.1"] and fused[0].in_layout.pad == 0
    assert 4 * 96 * 112 * 112 >= PW_DW_MIN_TENSOR_BYTES
    from patsparse.compiler.codegen.kernels import candidates

    t16 = width_target(16)
    assert candidates(fused[0], t16)[0] == default_tile(96, 112, 16, t16) and len(candidates(fused[0], t16)) > 1
    plan8 = plan_graph(capture(m, torch.zeros(1, 3, 224, 224)), target=width_target(8))
    assert "pw_dw" not in {s.kind for s in plan8.steps}


def test_fused_model_round_trips(tmp_path):
    """A compiled MobileNet-V2 with fused expand convs saves and loads (its stored IR is the portable
    one; loading lowers it again) and gives PyTorch's numbers, batch 2; on a 16-register ISA nothing fuses."""
    import patsparse as ps

    torch.manual_seed(0)
    m = mobilenet_v2(num_classes=10).features[:5].eval()
    for mod in m.modules():  # non-trivial BN, so the fused weights are folded ones
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 2.0)
            mod.running_mean.uniform_(-0.1, 0.1)
    x = torch.randn(2, 3, 128, 128)
    cm = ps.compile(m, x[:1], threads=2)
    kinds = [L["kernel"] for L in cm.manifest["layers"]]
    cm.save(tmp_path / "m")
    back = ps.load(tmp_path / "m")
    assert [L["kernel"] for L in back.manifest["layers"]] == kinds
    with torch.no_grad():
        want = m(x)
    for model in (cm, back):
        check_close(model(x).numpy() / float(want.abs().max()), want / float(want.abs().max()))
    assert ("pw_dw" in kinds) == (cm.manifest["vl"] == 16)
