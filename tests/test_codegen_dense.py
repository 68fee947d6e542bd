"""Dense kernels (KxK conv, 1x1 conv, depthwise, linear) against PyTorch, in the real layout.

Each case builds the kernel alone, runs it through ctypes on layout buffers whose output
interior starts as NaN (so a pixel the kernel forgets shows up) and whose halo starts at zero
(and must stay exactly zero), and compares with torch.nn.functional.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patsparse.compiler.codegen.base import ACTIVATIONS
from patsparse.compiler.codegen.ctest import (KernelRunner, from_layout, interior_mask, layout_buffer,
                                              to_layout, width_target)
from patsparse.compiler.codegen.dense_conv import gen_conv2d
from patsparse.compiler.codegen.dense_conv import schedules as dense_schedules
from patsparse.compiler.codegen.depthwise import gen_depthwise
from patsparse.compiler.codegen.depthwise import schedules as dw_schedules
from patsparse.compiler.codegen.gemm import gen_conv1x1, gen_linear
from patsparse.compiler.codegen.igemm import direct_s2_floats
from patsparse.compiler.codegen.igemm import schedules as conv_schedules
from patsparse.compiler.layout import Layout
from patsparse.compiler.target import detect
from patsparse.errors import InputError, UnsupportedError

HOST = detect()
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _act(y: torch.Tensor, act: str) -> torch.Tensor:
    return {"none": y, "relu": y.relu(), "relu6": y.clamp(0, 6)}[act]


def run_kernel(kernel, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, in_layout: Layout,
               out_layout: Layout, res: np.ndarray | None, flags: tuple[str, ...] = ()) -> np.ndarray:
    """Run one kernel on (C, H, W) arrays; checks the halo stayed zero; returns (C, Ho, Wo)."""
    runner = KernelRunner(kernel, extra_flags=flags)
    out = layout_buffer(out_layout)
    inside = interior_mask(out_layout)
    out[inside] = np.nan
    inp = to_layout(x, in_layout)
    in_before = inp.copy()
    rbuf = to_layout(res, out_layout) if res is not None else None
    runner(inp, out, runner.pack(weight), np.ascontiguousarray(bias, np.float32), rbuf)
    assert not np.any(out[~inside]), f"{kernel.name} wrote non-zero values outside the interior"
    np.testing.assert_array_equal(inp, in_before)  # the input is read-only
    return from_layout(out, out_layout)


def check_close(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.numpy()
    assert got.shape == want.shape
    assert np.isfinite(got).all(), "some output pixels were never written"
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * scale, f"max abs error {err} > 1e-4 * {scale}"


def conv_case(*, cin, cout, k, stride, padding, H, W, pin, pout, act, residual, schedule=None,
              seed=0, target=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(cin, H, W, generator=g)
    w = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    b = torch.randn(cout, generator=g)
    y = F.conv2d(x[None], w, b, stride=stride, padding=padding)[0]
    r = torch.randn(y.shape, generator=g) if residual else None
    want = _act(y + r if residual else y, act)
    Lin, Lout = Layout(cin, H, W, pin), Layout(cout, y.shape[1], y.shape[2], pout)
    kern = gen_conv2d("conv_k", cin=cin, cout=cout, k=k, stride=stride, padding=padding,
                      in_layout=Lin, out_layout=Lout, act=act, has_residual=residual,
                      schedule=schedule, target=target or HOST)
    assert kern.flops == 2 * cout * cin * k * k * y.shape[1] * y.shape[2]
    got = run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout,
                     r.numpy() if residual else None)
    check_close(got, want)


@SETTINGS
@given(cin=st.integers(1, 9), cout=st.integers(1, 13), k=st.sampled_from([1, 3, 5, 7]),
       stride=st.integers(1, 2), data=st.data(), H=st.integers(1, 19), W=st.integers(1, 37),
       pin=st.integers(0, 3), pout=st.integers(0, 2), act=st.sampled_from(ACTIVATIONS),
       residual=st.booleans())
def test_conv2d_matches_torch(cin, cout, k, stride, data, H, W, pin, pout, act, residual):
    padding = data.draw(st.integers(0, k // 2), label="padding")
    H, W = max(H, k - 2 * padding), max(W, k - 2 * padding)
    conv_case(cin=cin, cout=cout, k=k, stride=stride, padding=padding, H=H, W=W, pin=pin,
              pout=pout, act=act, residual=residual)


@pytest.mark.parametrize("cin,cout,k,stride,padding,H", [
    (3, 64, 7, 2, 3, 40),      # ResNet stem (small image), input layout without halo
    (3, 64, 7, 2, 3, 224),     # ResNet stem at ImageNet size (14 full vectors per output row)
    (3, 32, 3, 2, 1, 33),      # MobileNet-V2 first conv, odd size (read in place: s2)
    (3, 32, 3, 2, 1, 224),     # MobileNet-V2 first conv at ImageNet size
    (16, 24, 3, 1, 1, 14),     # dense 3x3 stride 1
    (16, 20, 1, 2, 0, 15),     # ResNet 1x1 stride-2 downsample
    (64, 128, 1, 2, 0, 56),    # ResNet-18's first downsample at ImageNet size
])
def test_conv2d_model_shapes(cin, cout, k, stride, padding, H):
    conv_case(cin=cin, cout=cout, k=k, stride=stride, padding=padding, H=H, W=H, pin=0 if k == 7 else 1,
              pout=1, act="relu", residual=False)


def test_every_candidate_schedule_is_correct():
    """The auto-tuner may pick any candidate: each must compute the same conv."""
    extra = [{"mr": 1, "nr": 1}, {"mr": 7, "nr": 2, "order": "co"}, {"mr": 3, "nr": 2, "order": "pix"},
             {"np": 3}, {"np": 5, "order": "co"}, {"np": 2, "order": "pix"}]
    for sched in conv_schedules(cout=10, Ho=6, Wo=11, cin=4, k=3, target=HOST) + extra:
        conv_case(cin=4, cout=10, k=3, stride=1, padding=1, H=6, W=11, pin=1, pout=1,
                  act="relu", residual=True, schedule=sched)


@settings(SETTINGS, max_examples=10)
@given(cin=st.integers(1, 4), cout=st.integers(1, 21), k=st.sampled_from([3, 5, 7]),
       H=st.integers(7, 41), W=st.integers(7, 41), data=st.data())
def test_few_channel_strided_conv_any_schedule(cin, cout, k, H, W, data):
    """The stem family (KxK stride 2 over a few input channels, read through the phase-plane
    prep or, where the halo covers the padding, in place): any candidate the tuner may pick, in
    either loop order, on odd sizes, with input halos from none (the model input) up to the
    padding, and padding from 0 to K//2."""
    padding = data.draw(st.integers(0, k // 2), label="padding")
    pin = data.draw(st.integers(0, padding), label="pin")
    Ho, Wo = (H + 2 * padding - k) // 2 + 1, (W + 2 * padding - k) // 2 + 1
    s2 = direct_s2_floats(k=k, stride=2, padding=padding, in_layout=Layout(cin, H, W, pin))
    cands = conv_schedules(cout=cout, Ho=Ho, Wo=Wo, cin=cin, k=k, s2_input=s2, target=HOST)
    assert any(c.get("s2") for c in cands) == bool(s2)
    sched = dict(data.draw(st.sampled_from(cands), label="schedule"))
    order = data.draw(st.sampled_from([None, "pix", "co"]), label="order")
    if order:
        sched["order"] = order
    conv_case(cin=cin, cout=cout, k=k, stride=2, padding=padding, H=H, W=W, pin=pin, pout=1,
              act="relu", residual=data.draw(st.booleans(), label="residual"), schedule=sched)


@SETTINGS
@given(cin=st.integers(1, 24), cout=st.integers(1, 24), stride=st.integers(1, 2),
       H=st.integers(1, 17), W=st.integers(1, 40), pin=st.integers(0, 2), pout=st.integers(0, 2),
       act=st.sampled_from(ACTIVATIONS), residual=st.booleans())
def test_conv1x1_matches_torch(cin, cout, stride, H, W, pin, pout, act, residual):
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(cin, H, W, generator=g), torch.randn(cout, cin, 1, 1, generator=g), \
        torch.randn(cout, generator=g)
    y = F.conv2d(x[None], w, b, stride=stride)[0]
    r = torch.randn(y.shape, generator=g)
    want = _act(y + r if residual else y, act)
    Lin, Lout = Layout(cin, H, W, pin), Layout(cout, *y.shape[1:], pout)
    kern = gen_conv1x1("pw", cin=cin, cout=cout, stride=stride, in_layout=Lin, out_layout=Lout,
                       act=act, has_residual=residual, target=HOST)
    got = run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout,
                     r.numpy() if residual else None)
    check_close(got, want)


@settings(SETTINGS, max_examples=12)
@given(cin=st.integers(1, 12), cout=st.integers(1, 21), stride=st.integers(1, 2),
       H=st.integers(1, 15), W=st.integers(1, 23), pin=st.integers(0, 2), pout=st.integers(0, 2),
       mr=st.integers(1, 6), nr=st.integers(1, 4), act=st.sampled_from(ACTIVATIONS),
       residual=st.booleans(), order=st.sampled_from([None, "pix", "co"]))
def test_conv1x1_compact_tiles_match_torch(cin, cout, stride, H, W, pin, pout, mr, nr, act, residual,
                                           order):
    """Tiles over the flattened plane (vectors spanning several output rows, stored lane-masked
    per row): any tile shape, stride 1 or 2, odd sizes, halos, residual; the halo stays zero."""
    sched = {"mr": mr, "nr": nr, "compact": 1, **({"order": order} if order else {})}
    conv_case(cin=cin, cout=cout, k=1, stride=stride, padding=0, H=H, W=W, pin=pin, pout=pout,
              act=act, residual=residual, schedule=sched)


def test_conv1x1_compact_is_the_default_where_rows_idle_lanes():
    """MobileNet-V2's 160->960 at 7x7: 7 of 16 lanes per row vector, so the default tiles the
    flattened plane (4 vectors instead of 7); a 3x3 conv or a padded 1x1 never gets compact tiles."""
    ranked = conv_schedules(cout=960, Ho=7, Wo=7, cin=160, k=1, target=width_target(16), compact=True)
    assert ranked[0].get("compact") == 1
    # the tuner measures the first few: every tile family is among them
    assert not ranked[1].get("compact") and "np" not in ranked[1] and "np" in ranked[2]
    assert not any(c.get("compact") for c in dense_schedules(cout=64, out_layout=Layout(64, 7, 7, 1),
                                                             cin=64, k=3, padding=1, target=HOST))
    assert not any(c.get("compact") for c in dense_schedules(cout=960, out_layout=Layout(960, 9, 9, 1),
                                                             cin=160, k=1, padding=1, target=HOST))
    padded = gen_conv1x1("p", cin=160, cout=960, padding=1, in_layout=Layout(160, 7, 7, 1),
                         out_layout=Layout(960, 9, 9, 1), target=HOST)
    assert "compact" not in padded.schedule
    with pytest.raises(InputError, match="compact needs a 1x1 conv without padding"):
        gen_conv2d("c", cin=2, cout=2, k=3, padding=1, in_layout=Layout(2, 7, 7, 1),
                   out_layout=Layout(2, 7, 7, 1), schedule={"mr": 2, "nr": 2, "compact": 1}, target=HOST)
    with pytest.raises(InputError, match="without 'compact'"):
        gen_conv1x1("c", cin=2, cout=2, in_layout=Layout(2, 7, 7, 1), out_layout=Layout(2, 7, 7, 1),
                    schedule={"np": 2, "compact": 1}, target=HOST)


@SETTINGS
@given(C=st.integers(1, 11), stride=st.integers(1, 2), padding=st.integers(0, 1),
       H=st.integers(1, 21), W=st.integers(1, 40), pin=st.integers(0, 2), pout=st.integers(0, 2),
       act=st.sampled_from(ACTIVATIONS), residual=st.booleans(), rows=st.integers(1, 4))
def test_depthwise_matches_torch(C, stride, padding, H, W, pin, pout, act, residual, rows):
    H, W = max(H, 3 - 2 * padding), max(W, 3 - 2 * padding)
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(C, H, W, generator=g), torch.randn(C, 1, 3, 3, generator=g), \
        torch.randn(C, generator=g)
    y = F.conv2d(x[None], w, b, stride=stride, padding=padding, groups=C)[0]
    r = torch.randn(y.shape, generator=g)
    want = _act(y + r if residual else y, act)
    Lin, Lout = Layout(C, H, W, pin), Layout(C, *y.shape[1:], pout)
    kern = gen_depthwise("dw", channels=C, stride=stride, padding=padding, in_layout=Lin,
                         out_layout=Lout, act=act, has_residual=residual,
                         schedule={"rows": rows}, target=HOST)
    got = run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout,
                     r.numpy() if residual else None)
    check_close(got, want)


def test_depthwise_default_schedule_mobilenet_shape():
    assert dw_schedules(stride=1, out_layout=Layout(8, 14, 14))[0] == {"rows": 1}
    C, H = 24, 28
    x, w, b = torch.randn(C, H, H), torch.randn(C, 1, 3, 3), torch.randn(C)
    y = F.conv2d(x[None], w, b, stride=2, padding=1, groups=C)[0]
    Lin, Lout = Layout(C, H, H, 1), Layout(C, 14, 14, 1)
    kern = gen_depthwise("dw_s2", channels=C, stride=2, padding=1, in_layout=Lin, out_layout=Lout,
                         act="relu6", target=HOST)
    check_close(run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout, None),
                y.clamp(0, 6))


@SETTINGS
@given(C=st.integers(1, 40), H=st.integers(1, 4), W=st.integers(1, 4), pin=st.integers(0, 2),
       out_features=st.integers(1, 37), pout=st.integers(0, 1), act=st.sampled_from(ACTIVATIONS),
       residual=st.booleans(), mr=st.sampled_from([1, 2, 4, 8]))
def test_linear_matches_torch(C, H, W, pin, out_features, pout, act, residual, mr):
    """Input is an activation flattened the PyTorch way (C-H-W order), read from its layout."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(C, H, W, generator=g)
    n = C * H * W
    w, b = torch.randn(out_features, n, generator=g), torch.randn(out_features, generator=g)
    y = F.linear(x.flatten(), w, b)
    r = torch.randn(out_features, generator=g)
    want = _act(y + r if residual else y, act).reshape(out_features, 1, 1)
    Lin, Lout = Layout(C, H, W, pin), Layout(out_features, 1, 1, pout)
    kern = gen_linear("fc", in_features=n, out_features=out_features, in_layout=Lin,
                      out_layout=Lout, act=act, has_residual=residual, schedule={"mr": mr}, target=HOST)
    got = run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout,
                     r.numpy().reshape(out_features, 1, 1) if residual else None)
    check_close(got, want)


# The same generated code must be right at every vector width: 4 lanes, 8 (AVX2) and 16
# (AVX-512; GCC's generic vectors on a host without it), built for ctest.width_target.
WIDTHS = (4, 8, 16)


@pytest.mark.parametrize("vl", WIDTHS)
def test_kernels_at_other_vector_widths(vl):
    tgt = width_target(vl)
    probe = gen_conv1x1("probe", cin=1, cout=1, in_layout=Layout(1, 1, 1), out_layout=Layout(1, 1, 1), target=tgt)
    probe.code += "\nint probe_vl(void) { return VL; }\n"
    assert KernelRunner(probe).lib.probe_vl() == vl
    # row-vector tiles direct / via the stride-2 prep, and the channel-vector kernel
    for k, s, p, H, W, pin, sched in [(3, 1, 1, 9, 37, 1, None), (7, 2, 3, 17, 23, 0, None),
                                      (3, 2, 1, 9, 19, 1, {"np": 3}),
                                      (1, 1, 0, 7, 7, 1, {"mr": 4, "nr": 3, "compact": 1}),
                                      (1, 2, 0, 13, 11, 1, {"mr": 3, "nr": 2, "compact": 1})]:
        conv_case(cin=3, cout=21, k=k, stride=s, padding=p, H=H, W=W, pin=pin, pout=1,
                  act="relu", residual=True, schedule=sched, target=tgt)
    for s in (1, 2):
        x, w, b = torch.randn(6, 11, 35), torch.randn(6, 1, 3, 3), torch.randn(6)
        y = F.conv2d(x[None], w, b, stride=s, padding=1, groups=6)[0]
        Lin, Lout = Layout(6, 11, 35, 1), Layout(6, *y.shape[1:], 1)
        kern = gen_depthwise("dw", channels=6, stride=s, in_layout=Lin, out_layout=Lout, target=tgt)
        check_close(run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout, None), y)
    x, w, b = torch.randn(3, 2, 5), torch.randn(9, 30), torch.randn(9)
    Lin, Lout = Layout(3, 2, 5, 1), Layout(9, 1, 1, 0)
    kern = gen_linear("fc", in_features=30, out_features=9, in_layout=Lin, out_layout=Lout, target=tgt)
    check_close(run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout, None),
                F.linear(x.flatten(), w, b).reshape(9, 1, 1))


def test_bad_arguments_name_the_kernel():
    L = Layout(4, 8, 8, 1)
    with pytest.raises(InputError, match="conv_a.*out_layout"):
        gen_conv2d("conv_a", cin=4, cout=4, k=3, stride=1, padding=1, in_layout=L,
                   out_layout=Layout(4, 7, 8, 1), target=HOST)
    with pytest.raises(InputError, match="safe C identifier"):
        gen_conv2d("x; system()", cin=4, cout=4, k=3, padding=1, in_layout=L, out_layout=L, target=HOST)
    with pytest.raises(UnsupportedError, match="stride 3"):
        gen_conv2d("c", cin=4, cout=4, k=3, stride=3, padding=1, in_layout=L,
                   out_layout=Layout(4, 3, 3, 1), target=HOST)
    with pytest.raises(UnsupportedError, match="mish"):
        gen_depthwise("d", channels=4, in_layout=L, out_layout=L, act="mish", target=HOST)
    for bad in ({"mr": 0, "nr": 1}, {"np": 0}, {"mr": 2, "nr": 2, "order": "rows"}, {"x": 1}):
        with pytest.raises(InputError, match="schedule"):
            gen_conv2d("c", cin=4, cout=4, k=3, padding=1, in_layout=L, out_layout=L,
                       schedule=bad, target=HOST)
    with pytest.raises(InputError, match="in_features"):
        gen_linear("fc", in_features=10, out_features=3, in_layout=L, out_layout=Layout(3, 1, 1), target=HOST)
    kern = gen_conv2d("c", cin=4, cout=4, k=3, padding=1, in_layout=L, out_layout=L, target=HOST)
    with pytest.raises(InputError, match="weight of shape"):
        kern.pack(np.zeros((4, 4, 1, 1), np.float32))
    with pytest.raises(InputError, match="non-finite"):
        kern.pack(np.full((4, 4, 3, 3), np.nan, np.float32))
