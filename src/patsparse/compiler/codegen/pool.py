"""Pooling: max / average over KxK windows (PyTorch semantics) and global average pooling.

Semantics follow torch.nn.functional: max pooling pads with -inf and may be dilated; average
pooling divides by the window clipped to the padded input (count_include_pad=True: K*K except
for ceil-mode windows past the padding) or to the input itself (count_include_pad=False); the
output size is floor or ceil mode (pool_out_size). A divisor_override is an UnsupportedError.
Padding is at most K/2, as PyTorch requires.

Pools have no bias: the ``bias`` argument of the kernel contract is ignored; a fused residual
and activation are applied at the store like every kernel. The layout's zero halo is *not*
the pool's padding (max needs -inf, and the halo may be thinner than the padding), so rows
outside the image are skipped and vectors at the left/right image border are gathered lane by
lane with out-of-image lanes set to the pool's identity. Interior vectors are plain loads
(stride 1) or two loads and a shuffle (stride 2).

One exception: a max pool whose input is known to be >= 0 (the producer ends in ReLU/ReLU6,
``input_nonneg``) may take the zero halo as its padding, since a window always holds a real
element >= 0 and a 0 never exceeds it; then every vector is a fast one. ResNet's stem pool has
one border vector in four on a 56-wide output, and its lane-by-lane gather was most of the pool.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout
from ..target import Target
from .base import GeneratedKernel, act_scalar_c, act_c
from .common import (check_act, check_layout_types, check_layouts, check_name, check_positive,
                     helpers_c, VECTOR_LOAD)


def _no_weights(weight: np.ndarray | None) -> np.ndarray:
    """Pools have no weights: the packed blob is empty."""
    if weight is not None and np.asarray(weight).size:
        raise InputError("pooling kernels take no weights")
    return np.zeros(0, np.float32)


def pool_out_size(size: int, k: int, stride: int, pad: int, *, dilation: int = 1, ceil_mode: bool = False,
                  where: str) -> int:
    """PyTorch's pooled size: floor or ceil of the window count, and in ceil mode the last
    window must start inside the input or its left padding; an InputError when none fits."""
    span = size + 2 * pad - dilation * (k - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    if span < 0 or out < 1:
        raise InputError(f"{where}: input size {size} with kernel {k}, stride {stride}, padding "
                         f"{pad}, dilation {dilation} gives an empty output")
    return out


def _check_pool(where: str, k: int, stride: int, padding: int, dilation: int) -> None:
    check_positive(where, k=k, stride=stride, dilation=dilation)
    if not 0 <= padding <= k // 2:
        raise InputError(f"{where}: padding {padding} must be in [0, {k // 2}] (at most half "
                         f"the kernel {k}, as in PyTorch)")


def _gen_window_pool(name: str, kind: str, *, k: int, stride: int, padding: int,
                     in_layout: Layout, out_layout: Layout, act: str, has_residual: bool,
                     where: str, target: Target, input_nonneg: bool = False, ceil_mode: bool = False,
                     dilation: int = 1, count_include_pad: bool = True) -> GeneratedKernel:
    L, O, s, P, K, D = in_layout, out_layout, stride, padding, k, dilation
    check_layout_types(where, L, O)
    Ho = pool_out_size(L.H, K, s, P, dilation=D, ceil_mode=ceil_mode, where=where)
    Wo = pool_out_size(L.W, K, s, P, dilation=D, ceil_mode=ceil_mode, where=where)
    check_layouts(where, L, O, (L.C, L.H, L.W), (L.C, Ho, Wo))
    # ceil mode may add windows that run past the right/bottom padding: those never use the halo
    in_padding = (Ho, Wo) == (pool_out_size(L.H, K, s, P, dilation=D, where=where),
                              pool_out_size(L.W, K, s, P, dilation=D, where=where))
    is_max = kind == "max"
    ident = "-INFINITY" if is_max else "0.0f"
    combine = (lambda a, b: f"{a} = vmax_nan({a}, {b});") if is_max else (lambda a, b: f"{a} += {b};")
    fast_load = VECTOR_LOAD.get(s)
    gather = "\n".join(
        f"                    {{ vf v; for (int l = 0; l < VL; l++) {{ int x = (w0 + l) * {s} - {P} + {kw * D}; "
        f"v[l] = (x >= 0 && x < {L.W}) ? row[x] : {ident}; }} {combine('acc', 'v')} }}"
        for kw in range(K))
    halo_pads = is_max and input_nonneg and L.pad >= P and in_padding  # the zero halo is a valid padding
    if fast_load:
        fast = "\n".join(f"                    {{ vf v = {fast_load}(row + w0 * {s} - {P} + {kw * D}); "
                         f"{combine('acc', 'v')} }}" for kw in range(K))
        taps = fast if halo_pads else f"""                if (border) {{
{gather}
                }} else {{
{fast}
                }}"""
    else:
        taps = gather
    divisor = ""
    if is_max:
        val = "acc"
    elif in_padding and (count_include_pad or P == 0):
        val = f"acc * vbcast({1.0 / (K * K)!r}f)"
    else:  # PyTorch's divisor: the window clipped to the padded input, or to the input itself
        clip = (f"a < 0 ? 0 : a", f"b > {L.W} ? {L.W} : b", f"h0 < 0 ? 0 : h0", f"h1 > {L.H} ? {L.H} : h1") \
            if not count_include_pad else ("a", f"b > {L.W + P} ? {L.W + P} : b", "h0", f"h1 > {L.H + P} ? {L.H + P} : h1")
        divisor = (f"            vf dv; {{ const int h0 = ih0, h1 = ih0 + {K}, rh = ({clip[3]}) - ({clip[2]});\n"
                   f"              for (int l = 0; l < VL; l++) {{ const int a = (w0 + l) * {s} - {P}, b = a + {K};\n"
                   f"                  dv[l] = (float)(rh * (({clip[1]}) - ({clip[0]}))); }} }}\n")
        val = "acc / dv"
    if has_residual:
        val += " + vload(res + o)"
    code = helpers_c(target) + f"""
/* {name}: {kind} pool {K}x{K}, stride {s}, padding {P}, dilation {D}{", ceil mode" if ceil_mode else ""}{"" if count_include_pad else ", padding not counted"}, {L.C} channels, {L.H}x{L.W} -> {Ho}x{Wo}{", input >= 0: the zero halo pads" if halo_pads and fast_load else ""} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    enum {{ NVW = ({Wo} + VL - 1) / VL, LASTW = (NVW - 1) * VL }};
    const vi tm = vtailmask({Wo} - LASTW);
    (void)w; (void)bias; (void)res;
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {L.C * Ho}; u++) {{
        int c = u / {Ho}, oh = u % {Ho}, ih0 = oh * {s} - {P};
        for (int w0 = 0; w0 < {Wo}; w0 += VL) {{
            int last = w0 + VL < {Wo} ? w0 + VL : {Wo};   /* one past the last valid lane */
            int border = w0 * {s} - {P} < 0 || (last - 1) * {s} - {P} + {(K - 1) * D} >= {L.W};
            (void)border;
            vf acc = vbcast({ident});
            for (int kh = 0; kh < {K}; kh++) {{
                const int ih = ih0 + kh * {D};
                if (ih < 0 || ih >= {L.H}) continue;
                const float *row = in + (size_t)c * {L.ps} + (size_t)(ih + {L.pad}) * {L.ld} + {L.pad};
{taps}
            }}
{divisor}            size_t o = (size_t)c * {O.ps} + {O.origin} + (size_t)oh * {O.ld} + w0;
            vf v = {act_c(act, val)};
            if (w0 == LASTW) v = vand(v, tm);
            vstore(out + o, v);
        }}
    }}
}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights,
                           flops=L.C * Ho * Wo * K * K, schedule={})


def schedules() -> list[dict]:
    """Pools have no tunable knobs (memory-bound, one pass): a single empty schedule."""
    return [{}]


def gen_maxpool(name: str, *, k: int, stride: int | None = None, padding: int = 0,
                in_layout: Layout, out_layout: Layout, act: str = "none",
                has_residual: bool = False, schedule: dict | None = None, target: Target,
                ceil_mode: bool = False, dilation: int = 1, input_nonneg: bool = False) -> GeneratedKernel:
    """F.max_pool2d(x, k, stride, padding) on one image (stride defaults to k, as in PyTorch).

    ``input_nonneg``: the caller guarantees x >= 0 (a ReLU before it), so the layout's zero halo
    may serve as the padding (see the module docstring)."""
    where = f"maxpool kernel {name}"
    check_name(name)
    check_act(act, where)
    stride = k if stride is None else stride
    _check_pool(where, k, stride, padding, dilation)
    return _gen_window_pool(name, "max", k=k, stride=stride, padding=padding, in_layout=in_layout,
                            out_layout=out_layout, act=act, has_residual=has_residual, where=where,
                            target=target, input_nonneg=input_nonneg, ceil_mode=ceil_mode, dilation=dilation)


def gen_avgpool(name: str, *, k: int, stride: int | None = None, padding: int = 0,
                in_layout: Layout, out_layout: Layout, act: str = "none",
                has_residual: bool = False, schedule: dict | None = None, target: Target,
                ceil_mode: bool = False, count_include_pad: bool = True,
                divisor_override: int | None = None) -> GeneratedKernel:
    """F.avg_pool2d(x, k, stride, padding, ceil_mode, count_include_pad) on one image."""
    where = f"avgpool kernel {name}"
    check_name(name)
    check_act(act, where)
    stride = k if stride is None else stride
    _check_pool(where, k, stride, padding, 1)
    if divisor_override is not None:
        raise UnsupportedError(f"{where}: divisor_override is not supported")
    return _gen_window_pool(name, "avg", k=k, stride=stride, padding=padding, in_layout=in_layout,
                            out_layout=out_layout, act=act, has_residual=has_residual, where=where,
                            target=target, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def gen_global_avgpool(name: str, *, in_layout: Layout, out_layout: Layout, act: str = "none",
                       has_residual: bool = False, schedule: dict | None = None,
                       target: Target) -> GeneratedKernel:
    """AdaptiveAvgPool2d(1): the mean of each channel plane; ``out_layout`` is (C, 1, 1, any pad).

    Whole row vectors are summed, lanes past the row included: they read the row's zero tail
    and the next row's zero left halo (layout contract), so no masking is needed.
    """
    where = f"global avgpool kernel {name}"
    check_name(name)
    check_act(act, where)
    L, O = in_layout, out_layout
    check_layout_types(where, L, O)
    check_layouts(where, L, O, (L.C, L.H, L.W), (L.C, 1, 1))
    val = f"s * {1.0 / (L.H * L.W)!r}f"
    if has_residual:
        val += f" + res[(size_t)c * {O.ps} + {O.origin}]"
    code = helpers_c(target) + f"""
/* {name}: global average pool, {L.C} channels of {L.H}x{L.W} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)w; (void)bias; (void)res;
    #pragma omp for schedule(static) nowait
    for (int c = 0; c < {L.C}; c++) {{
        const float *p = in + (size_t)c * {L.ps} + {L.origin};
        vf acc = (vf){{0}};
        for (int h = 0; h < {L.H}; h++)
            for (int w0 = 0; w0 < {L.W}; w0 += VL) acc += vload(p + (size_t)h * {L.ld} + w0);
        float s = 0.0f;
        for (int l = 0; l < VL; l++) s += acc[l];
        out[(size_t)c * {O.ps} + {O.origin}] = {act_scalar_c(act, val)};
    }}
}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights, flops=L.C * L.H * L.W,
                           schedule={})
