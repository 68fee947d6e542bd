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
from patsparse.compiler.codegen.pw_dw import Project, default_tile, gen_pw_dw
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


def block_case(*, cin, C, Cp, stride, H, W, pin, pout, residual, vl, pact="none", schedule=None,
               expand_keep=None, project_keep=None, taps=False, seed=0):
    """A whole inverted-residual block (expand, depthwise 3x3, project, + residual) in one
    kernel against PyTorch; ``*_keep``: the 1x1 conv pruned in virtual 3x3 kernels (grouped
    kernel) keeping that share of its groups' channels, else dense; ``taps``: a pattern depthwise."""
    from patsparse.compiler.codegen.depthwise import kept_taps
    from patsparse.compiler.grouped import analyse_grouped
    from patsparse.pruning.projection import project_pattern
    from test_grouped1x1 import grouped_weight

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cin, H, W, generator=g)
    ew = grouped_weight(g, C, cin, expand_keep) if expand_keep else torch.randn(C, cin, 1, 1, generator=g) / cin ** 0.5
    pw = grouped_weight(g, Cp, C, project_keep) if project_keep else torch.randn(Cp, C, 1, 1, generator=g) / C ** 0.5
    eb, pb = torch.randn(C, generator=g), torch.randn(Cp, generator=g)
    dw, db = torch.randn(C, 1, 3, 3, generator=g) / 3, torch.randn(C, generator=g)
    if taps:
        dw, _ = project_pattern(dw, "phase2")
    d = _act(F.conv2d(_act(F.conv2d(x[None], ew, eb), "relu6"), dw, db, stride=stride, padding=1, groups=C), "relu6")
    y = F.conv2d(d, pw, pb)[0]
    res = torch.randn(y.shape, generator=g) if residual else None
    want = _act(y + res if residual else y, pact)
    Lin, Lout = Layout(cin, H, W, pin), Layout(Cp, *want.shape[1:], pout)
    esp = analyse_grouped(ew.numpy()) if expand_keep else None
    psp = analyse_grouped(pw.numpy()) if project_keep else None
    kern = gen_pw_dw("pb", expand_weight=ew.numpy(), expand_bias=eb.numpy(), expand_act="relu6", stride=stride,
                     in_layout=Lin, out_layout=Lout, act="relu6", target=width_target(vl), schedule=schedule,
                     has_residual=residual, expand_sparsity=esp, taps=kept_taps(dw.numpy()),
                     project=Project(pw.numpy(), pb.numpy(), pact, psp))
    assert ("pmr" in kern.schedule) == (psp is None) and ("pnv" in kern.schedule) == (psp is not None)
    pmacs = int(psp.taps_per_kernel().sum()) if psp else Cp * C
    emacs = int(esp.taps_per_kernel().sum()) if esp else C * cin
    assert kern.flops == 2 * (emacs * H * W + (C * (kept_taps(dw.numpy()) or 9) + pmacs) * y.shape[1] * y.shape[2])
    got = run_kernel(kern, x.numpy(), dw.numpy(), db.numpy(), Lin, Lout, None if res is None else res.numpy())
    check_close(got, want)


@pytest.mark.parametrize("vl", [4, 8, 16])
@pytest.mark.parametrize("stride,residual", [(1, True), (2, False)])
def test_inverted_residual_block(vl, stride, residual):
    """MobileNet-V2's features.3 (stride 1, residual) and features.4 (stride 2) shapes, narrowed:
    24 -> 144 -> 24 / 32 on an odd-sized plane, dense 1x1 convs."""
    block_case(cin=24, C=144, Cp=24 if residual else 32, stride=stride, H=13, W=37, pin=0, pout=1,
               residual=residual, vl=vl)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(cin=st.integers(9, 30), C=st.integers(9, 40), Cp=st.integers(1, 20), stride=st.integers(1, 2),
       H=st.integers(1, 9), W=st.integers(1, 40), pin=st.integers(0, 1), pout=st.integers(0, 2),
       residual=st.booleans(), vl=st.sampled_from([4, 8, 16]), pact=st.sampled_from(["none", "relu"]),
       expand=st.sampled_from([None, 0.2, 0.6]), project=st.sampled_from([None, 0.2, 0.6]), taps=st.booleans(),
       tile=st.integers(1, 4), reg=st.booleans())
def test_fused_block_matches_torch(cin, C, Cp, stride, H, W, pin, pout, residual, vl, pact, expand, project,
                                   taps, tile, reg):
    """Any block shape: dense or pruned expand and project convs (grouped row reductions: the
    gather or the register-blocked kernel), dense or pattern depthwise, residual or not, the
    project's tile ("pmr"/"pnr" or "pnv") varied."""
    if residual and stride != 1:
        return
    schedule = {"pnv": tile, "preg": int(reg)} if project else {"pmr": tile + 1, "pnr": tile}
    if expand:
        schedule.update({"nv": tile, "reg": int(reg)})
    block_case(cin=cin, C=C, Cp=Cp, stride=stride, H=H, W=W, pin=pin, pout=pout, residual=residual, vl=vl,
               pact=pact, schedule=schedule, expand_keep=expand, project_keep=project, taps=taps, seed=C * 7 + Cp)


def test_default_tile_and_bad_arguments():
    assert default_tile(96, 112, 16, width_target(16)) == {"mr": 3, "nr": 7}  # 7 row vectors in one tile
    args = dict(expand_weight=np.ones((8, 4, 1, 1), np.float32), expand_bias=np.zeros(8, np.float32),
                expand_act="relu6", in_layout=Layout(4, 9, 9, 0), out_layout=Layout(8, 9, 9, 1),
                act="relu6", target=width_target(16))
    with pytest.raises(UnsupportedError, match="residual"):
        gen_pw_dw("p", **args, has_residual=True)
    with pytest.raises(UnsupportedError, match="stride 3"):
        gen_pw_dw("p", **args, stride=3)
    with pytest.raises(InputError, match=r"\(expand\): bias"):
        gen_pw_dw("p", **{**args, "expand_bias": np.full(8, np.nan, np.float32)})
    with pytest.raises(InputError, match="out of range"):
        gen_pw_dw("p", **args, schedule={"mr": 0, "nr": 1})
    with pytest.raises(InputError, match="expand"):
        gen_pw_dw("p", **{**args, "expand_weight": np.ones((8, 5, 1, 1), np.float32)})
    proj = Project(np.ones((8, 8, 1, 1), np.float32), np.zeros(8, np.float32))
    with pytest.raises(InputError, match=r"\(project\): bias"):
        gen_pw_dw("p", **args, project=Project(proj.weight, np.zeros(3, np.float32)))
    with pytest.raises(InputError, match="project"):
        gen_pw_dw("p", **args, project=Project(np.ones((8, 6, 1, 1), np.float32), proj.bias))
    with pytest.raises(InputError, match="out of range"):
        gen_pw_dw("p", **args, project=proj, schedule={"pmr": 40})


def test_expand_and_depthwise_fuse_in_the_plan():
    """MobileNet-V2 at 224x224: the expand convs whose output exceeds L2 (features.2-4) fuse into
    their depthwise convs and the project convs after them, the step reads the expand's input
    and writes the project's output; smaller planes and 16-register ISAs (AVX2, not measured)
    keep separate kernels (dense: see test_pruned_blocks_fuse_on_28x28_planes)."""
    m = mobilenet_v2(num_classes=10).eval()
    plan = plan_graph(capture(m, torch.zeros(1, 3, 224, 224)), target=width_target(16))
    fused = [s for s in plan.steps if s.kind == "pw_dw"]
    assert [s.node.name for s in fused] == [f"features.{i}.conv.1.0" for i in (2, 3, 4)]
    names = {s.node.name for s in plan.steps}
    assert not {f"features.{i}.conv.{j}" for i in (2, 3, 4) for j in ("0.0", "2")} & names
    assert [s.out_layout.C for s in fused] == [24, 24, 32] and [s.node.residual for s in fused] == \
        [None, "features.2.conv.1.0", None]
    assert "features.5.conv.0.0" in names  # 192 x 28 x 28: stays in L2
    assert fused[0].node.inputs == ["features.1.conv.1"] and fused[0].in_layout.pad == 0
    assert 4 * 96 * 112 * 112 >= PW_DW_MIN_TENSOR_BYTES
    from patsparse.compiler.codegen.kernels import candidates

    t16 = width_target(16)
    assert candidates(fused[0], t16)[0] == default_tile(96, 112, 16, t16) and len(candidates(fused[0], t16)) > 1
    plan8 = plan_graph(capture(m, torch.zeros(1, 3, 224, 224)), target=width_target(8))
    assert "pw_dw" not in {s.kind for s in plan8.steps}


def test_pruned_blocks_fuse_on_28x28_planes():
    """Pruned 8x, MobileNet-V2's blocks on 28x28 planes (features.5-7: a grouped project,
    expanded rows of two vectors at 16 lanes) fuse whole; the 14x14 ones (features.8) do not."""
    from patsparse.pruning.projection import project_model

    torch.manual_seed(0)
    m = mobilenet_v2(num_classes=10, width=0.5).eval()
    project_model(m, rate=8)
    plan = plan_graph(capture(m, torch.zeros(1, 3, 224, 224)), target=width_target(16))
    fused = {s.node.name: s for s in plan.steps if s.kind == "pw_dw"}
    assert {f"features.{i}.conv.1.0" for i in (5, 6, 7)} <= set(fused) and "features.8.conv.1.0" not in fused
    assert fused["features.6.conv.1.0"].node.residual == "features.5.conv.1.0"
    assert all(s.sparsity is not None for s in fused.values() if s.in_layout.H == 28)


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
