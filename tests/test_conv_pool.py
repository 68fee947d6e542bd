"""The fused dense conv + ReLU + max pool kernel (conv_pool.py) against PyTorch, and the plan
that fuses it into compiled models (the ImageNet stem)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import patsparse as ps
from patsparse.compiler.api import capture
from patsparse.compiler.codegen.conv_pool import default_tile, gen_conv_maxpool
from patsparse.compiler.codegen.ctest import width_target
from patsparse.compiler.codegen.plan import plan_graph
from patsparse.compiler.layout import Layout
from patsparse.compiler.target import TARGETS
from patsparse.errors import InputError
from patsparse.models.resnet import resnet18
from test_codegen_dense import check_close, run_kernel
from test_export import build_and_run, check, need_aarch64


def case(*, cin, cout, k, stride, padding, pk, ps, pp, H, W, pin, pout, act="relu", vl=16,
         schedule=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w, b = torch.randn(cin, H, W, generator=g), torch.randn(cout, cin, k, k, generator=g), \
        torch.randn(cout, generator=g)
    y = F.conv2d(x[None], w, b, stride=stride, padding=padding)
    y = y.relu() if act == "relu" else y.clamp(0, 6)
    want = F.max_pool2d(y, pk, ps, pp)[0]
    Lin, Lout = Layout(cin, H, W, pin), Layout(cout, *want.shape[1:], pout)
    kern = gen_conv_maxpool("cp", cin=cin, cout=cout, k=k, stride=stride, padding=padding, pool_k=pk,
                            pool_stride=ps, pool_padding=pp, in_layout=Lin, out_layout=Lout, act=act,
                            target=width_target(vl), schedule=schedule)
    got = run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout, None)
    check_close(got, want)


@pytest.mark.parametrize("vl", [4, 8, 16])
def test_resnet_stem_shape(vl):
    """7x7/2 pad 3 over 3 channels, 3x3/2 pad 1 pool: a 45x45 image (odd sizes, 2 conv rows per
    pooled row, the top and left padding of both), 20 channels (not a whole channel group)."""
    case(cin=3, cout=20, k=7, stride=2, padding=3, pk=3, ps=2, pp=1, H=45, W=45, pin=0, pout=1, vl=vl)


@settings(max_examples=14, deadline=None, derandomize=True)
@given(cin=st.integers(1, 4), cout=st.integers(1, 37), k=st.integers(1, 5), stride=st.integers(1, 2),
       data=st.data(), H=st.integers(4, 19), W=st.integers(4, 40), pin=st.integers(0, 2),
       pout=st.integers(0, 2), act=st.sampled_from(["relu", "relu6"]), vl=st.sampled_from([8, 16]),
       mv=st.integers(1, 4), np_=st.integers(1, 5))
def test_conv_maxpool_matches_torch(cin, cout, k, stride, data, H, W, pin, pout, act, vl, mv, np_):
    """Any kernel, stride, pool (2x2 or 3x3, stride up to its size, padding up to half of it),
    tile, halo and vector width; the output halo stays zero (run_kernel checks it)."""
    padding = data.draw(st.integers(0, k - 1), label="padding")
    pk = data.draw(st.integers(2, 3), label="pool k")
    ps = data.draw(st.integers(1, pk), label="pool stride")
    pp = data.draw(st.integers(0, pk // 2), label="pool padding")
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    if min(Ho, Wo) + 2 * pp < pk:
        return
    if mv * np_ + mv + 2 > (32 if vl == 16 else 16):
        mv, np_ = 1, 1
    case(cin=cin, cout=cout, k=k, stride=stride, padding=padding, pk=pk, ps=ps, pp=pp, H=H, W=W, pin=pin,
         pout=pout, act=act, vl=vl, schedule={"mv": mv, "np": np_})


def test_default_tile_and_bad_arguments():
    assert default_tile(64, 112, width_target(16)) == {"mv": 4, "np": 4}  # 16 accumulators
    assert default_tile(64, 112, width_target(8)) == {"mv": 2, "np": 6}   # 12 of 16 registers
    assert default_tile(20, 45, width_target(16))["mv"] == 2
    assert default_tile(64, 3, width_target(16))["np"] == 3  # never more pixels than a row has
    lay = dict(in_layout=Layout(3, 16, 16, 0), out_layout=Layout(8, 4, 4, 1), target=width_target(16))
    args = dict(cin=3, cout=8, k=3, stride=2, padding=1, pool_k=3, pool_stride=2, pool_padding=1)
    with pytest.raises(InputError, match="needs a ReLU"):
        gen_conv_maxpool("c", **args, act="none", **lay)
    with pytest.raises(InputError, match="stride <= kernel"):
        gen_conv_maxpool("c", **{**args, "pool_stride": 4}, act="relu", **lay)
    with pytest.raises(InputError, match="does not fit"):
        gen_conv_maxpool("c", **args, act="relu", schedule={"mv": 4, "np": 12}, **lay)


def test_stem_and_pool_fuse_in_the_plan():
    """ResNet's stem and max pool become one step with 32 registers and with 16 (AVX2, the
    generic target); the pool's consumers read the fused step."""
    m = resnet18(num_classes=10, variant="imagenet").eval()
    for vl in (16, 8, 4):
        plan = plan_graph(capture(m, torch.zeros(1, 3, 64, 64)), target=width_target(vl))
        kinds = [s.kind for s in plan.steps]
        assert kinds[0] == "conv_pool" and "maxpool" not in kinds
        assert plan.steps[1].node.inputs == [plan.steps[0].node.name]
        assert plan.steps[0].out_layout.H == 16


def test_fused_model_round_trips(tmp_path):
    """A compiled model with a fused stem saves and loads (its stored IR carries the fusion) and
    gives PyTorch's numbers, batch 2."""
    torch.manual_seed(0)
    m = resnet18(num_classes=10, width=0.125, variant="imagenet").eval()
    x = torch.randn(2, 3, 40, 40)
    cm = ps.compile(m, x[:1], threads=2)
    fused = cm.manifest["layers"][0]["kernel"] == "conv_pool"
    cm.save(tmp_path / "m")
    back = ps.load(tmp_path / "m")
    assert back.manifest["layers"][0]["kernel"] == cm.manifest["layers"][0]["kernel"]
    with torch.no_grad():
        want = m(x)
    for model in (cm, back):
        check_close(model(x).numpy(), want)
    assert fused


@pytest.mark.parametrize("cin,cout,k,H,W", [(3, 64, 7, 37, 30), (4, 20, 5, 21, 26), (1, 72, 7, 24, 24)])
def test_stem_on_aarch64_under_qemu(tmp_path, cin, cout, k, H, W):
    """NEON (4-float vectors, 32 registers) fuses a stem with its BatchNorm, ReLU and max pool
    and gives PyTorch's numbers under qemu: several channel groups, a partial last group, odd
    sizes, one to four input channels."""
    prefix = need_aarch64()
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(cout)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    m = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, 2, k // 2, bias=False), bn, torch.nn.ReLU(),
                            torch.nn.MaxPool2d(3, 2, 1), torch.nn.Conv2d(cout, 4, 1)).eval()
    x = np.random.default_rng(0).standard_normal((2, cin, H, W)).astype(np.float32)
    kinds = [s.kind for s in plan_graph(capture(m, torch.from_numpy(x[:1])), target=TARGETS["aarch64-neon"]).steps]
    assert kinds[0] == "conv_pool" and "maxpool" not in kinds
    out = ps.export(m, torch.from_numpy(x[:1]), tmp_path / "stem", target="aarch64-neon")
    check(build_and_run(out, x, prefix), m, x)
