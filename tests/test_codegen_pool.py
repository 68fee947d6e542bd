"""Pooling kernels against torch.nn.functional, in the real layout (halo checked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from test_codegen_dense import HOST, SETTINGS, WIDTHS, _act, check_close, run_kernel

from patsparse.compiler.codegen.base import ACTIVATIONS
from patsparse.compiler.codegen.ctest import width_target
from patsparse.compiler.codegen.pool import gen_avgpool, gen_global_avgpool, gen_maxpool
from patsparse.compiler.layout import Layout
from patsparse.errors import InputError, UnsupportedError

NO_WEIGHTS = np.zeros(0, np.float32)


@SETTINGS
@given(kind=st.sampled_from(["max", "avg"]), C=st.integers(1, 6), k=st.integers(1, 4),
       stride=st.integers(1, 3), data=st.data(), H=st.integers(1, 19), W=st.integers(1, 45),
       pin=st.integers(0, 2), pout=st.integers(0, 2), act=st.sampled_from(ACTIVATIONS),
       residual=st.booleans(), ceil=st.booleans(), option=st.sampled_from([1, 2, 3]))
def test_window_pool_matches_torch(kind, C, k, stride, data, H, W, pin, pout, act, residual, ceil, option):
    """``option``: max pooling's dilation; average pooling counts the padding when it is odd."""
    padding = data.draw(st.integers(0, k // 2), label="padding")
    dil = option if kind == "max" else 1
    H, W = max(H, (k - 1) * dil + 1), max(W, (k - 1) * dil + 1)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(C, H, W, generator=g) - 3  # mostly negative: -inf padding matters for max
    if kind == "max":
        y = F.max_pool2d(x[None], k, stride, padding, dilation=dil, ceil_mode=ceil)[0]
        extra = {"dilation": dil}
    else:
        extra = {"count_include_pad": option % 2 == 1}
        y = F.avg_pool2d(x[None], k, stride, padding, ceil_mode=ceil, **extra)[0]
    r = torch.randn(y.shape, generator=g)
    want = _act(y + r if residual else y, act)
    Lin, Lout = Layout(C, H, W, pin), Layout(C, *y.shape[1:], pout)
    gen = gen_maxpool if kind == "max" else gen_avgpool
    kern = gen("pool", k=k, stride=stride, padding=padding, in_layout=Lin, out_layout=Lout,
               act=act, has_residual=residual, target=HOST, ceil_mode=ceil, **extra)
    got = run_kernel(kern, x.numpy(), NO_WEIGHTS, NO_WEIGHTS, Lin, Lout, r.numpy() if residual else None)
    check_close(got, want)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_resnet_maxpool_shape(kind):
    C, H = 8, 56
    x = torch.randn(C, H, H)
    fn, gen = (F.max_pool2d, gen_maxpool) if kind == "max" else (F.avg_pool2d, gen_avgpool)
    y = fn(x[None], 3, 2, 1)[0]
    Lin, Lout = Layout(C, H, H, 1), Layout(C, 28, 28, 1)
    kern = gen("mp", k=3, stride=2, padding=1, in_layout=Lin, out_layout=Lout, target=HOST)
    check_close(run_kernel(kern, x.numpy(), NO_WEIGHTS, NO_WEIGHTS, Lin, Lout, None), y)


@SETTINGS
@given(C=st.integers(1, 5), k=st.integers(1, 4), stride=st.integers(1, 3), data=st.data(),
       H=st.integers(1, 19), W=st.integers(1, 45), extra_pad=st.integers(0, 1), vl=st.sampled_from(WIDTHS),
       dil=st.integers(1, 2), ceil=st.booleans())
def test_maxpool_of_relu_output_pads_with_the_halo(C, k, stride, data, H, W, extra_pad, vl, dil, ceil):
    """With input >= 0 the zero halo is the padding: same numbers as -inf padding, at every
    width (not for ceil-mode windows past the padding: they run past the halo too)."""
    padding = data.draw(st.integers(0, k // 2), label="padding")
    H, W = max(H, (k - 1) * dil + 1), max(W, (k - 1) * dil + 1)
    x = torch.relu(torch.randn(C, H, W, generator=torch.Generator().manual_seed(5)))
    x[:, :, : W // 3] = 0.0  # whole zero windows at the border too
    y = F.max_pool2d(x[None], k, stride, padding, dilation=dil, ceil_mode=ceil)[0]
    floor = F.max_pool2d(x[None], k, stride, padding, dilation=dil)[0]
    Lin, Lout = Layout(C, H, W, padding + extra_pad), Layout(C, *y.shape[1:], 1)
    kern = gen_maxpool("pool", k=k, stride=stride, padding=padding, in_layout=Lin, out_layout=Lout,
                       input_nonneg=True, target=width_target(vl), dilation=dil, ceil_mode=ceil)
    assert ("the zero halo pads" in kern.code) == (stride in (1, 2) and y.shape == floor.shape)
    got = run_kernel(kern, x.numpy(), NO_WEIGHTS, NO_WEIGHTS, Lin, Lout, None)
    check_close(got, y)


@SETTINGS
@given(C=st.integers(1, 20), H=st.integers(1, 15), W=st.integers(1, 40), pin=st.integers(0, 2),
       pout=st.integers(0, 1), act=st.sampled_from(ACTIVATIONS), residual=st.booleans())
def test_global_avgpool_matches_torch(C, H, W, pin, pout, act, residual):
    x = torch.randn(C, H, W)
    y = F.adaptive_avg_pool2d(x[None], 1)[0]
    r = torch.randn(y.shape)
    want = _act(y + r if residual else y, act)
    Lin, Lout = Layout(C, H, W, pin), Layout(C, 1, 1, pout)
    kern = gen_global_avgpool("gap", in_layout=Lin, out_layout=Lout, act=act,
                              has_residual=residual, target=HOST)
    check_close(run_kernel(kern, x.numpy(), NO_WEIGHTS, NO_WEIGHTS, Lin, Lout,
                           r.numpy() if residual else None), want)


@pytest.mark.parametrize("vl", WIDTHS)
def test_pools_at_other_vector_widths(vl):
    tgt = width_target(vl)
    x = torch.randn(3, 13, 37) - 2
    Lin = Layout(3, 13, 37, 0)
    for gen, fn, s in [(gen_maxpool, F.max_pool2d, 2), (gen_avgpool, F.avg_pool2d, 1)]:
        y = fn(x[None], 3, s, 1)[0]
        Lout = Layout(3, *y.shape[1:], 1)
        kern = gen("p", k=3, stride=s, padding=1, in_layout=Lin, out_layout=Lout, target=tgt)
        check_close(run_kernel(kern, x.numpy(), NO_WEIGHTS, NO_WEIGHTS, Lin, Lout, None), y)
    Lout = Layout(3, 1, 1, 1)
    kern = gen_global_avgpool("g", in_layout=Layout(3, 13, 37, 1), out_layout=Lout, target=tgt)
    check_close(run_kernel(kern, x.numpy(), NO_WEIGHTS, NO_WEIGHTS, Layout(3, 13, 37, 1), Lout,
                           None), F.adaptive_avg_pool2d(x[None], 1)[0])


def test_unsupported_pool_settings_are_named():
    L = Layout(4, 8, 8, 1)
    with pytest.raises(UnsupportedError, match="divisor_override"):
        gen_avgpool("p", k=3, stride=1, padding=1, in_layout=L, out_layout=L, divisor_override=2, target=HOST)
    with pytest.raises(InputError, match="out_layout"):  # ceil mode: 5x5, not 4x4
        gen_maxpool("p", k=2, stride=2, in_layout=Layout(4, 9, 9, 1), out_layout=Layout(4, 4, 4, 1),
                    ceil_mode=True, target=HOST)
    with pytest.raises(InputError, match="padding 2"):
        gen_maxpool("p", k=3, stride=1, padding=2, in_layout=L, out_layout=L, target=HOST)
    with pytest.raises(InputError, match="out_layout"):
        gen_global_avgpool("g", in_layout=L, out_layout=Layout(4, 2, 2, 0), target=HOST)
