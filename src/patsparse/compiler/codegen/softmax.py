"""Softmax and log-softmax over channels (dim 1 of (N, C, H, W), or the features of a vector).

Vectorised along a row: each task is one row vector of positions; it takes the channel maximum
in one pass, sums exp(x - max) in a second and writes exp(x - max) / sum (log: x - max -
log(sum)) in a third, as PyTorch computes it. exp and log are libm's, lane by lane (PS_VMAP),
since the portable dialect has no vector exp. A vector (n,) is stored as (n, 1, 1), so the same
kernel serves a classifier's softmax with one position.
"""

from __future__ import annotations

from ...errors import InputError
from ..layout import Layout
from ..target import Target
from .base import GeneratedKernel
from .common import check_layouts, check_name, helpers_c
from .pool import _no_weights


def gen_softmax(name: str, *, log: bool = False, in_layout: Layout, out_layout: Layout,
                target: Target) -> GeneratedKernel:
    """(log_)softmax over the channels of one image (module docstring)."""
    where = f"softmax kernel {name}"
    check_name(name)
    if not isinstance(log, bool):
        raise InputError(f"{where}: log must be a bool, got {log!r}")
    L, O = in_layout, out_layout
    check_layouts(where, L, O, (L.C, L.H, L.W), (L.C, L.H, L.W))
    value = "x - m - ls" if log else "PS_VMAP(x - m, expf) / s"
    code = helpers_c(target) + f"""
/* {name}: {"log_" if log else ""}softmax over {L.C} channels of {L.H}x{L.W} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    enum {{ NVW = ({O.W} + VL - 1) / VL, LASTW = (NVW - 1) * VL }};
    const vi tm = vtailmask({O.W} - LASTW);
    (void)w; (void)bias; (void)res;
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {O.H} * NVW; u++) {{
        const int h = u / NVW, w0 = (u % NVW) * VL;
        const size_t io = {L.origin} + (size_t)h * {L.ld} + w0, oo = {O.origin} + (size_t)h * {O.ld} + w0;
        vf m = vload(in + io);
        for (int c = 1; c < {L.C}; c++) m = vmax_nan(m, vload(in + (size_t)c * {L.ps} + io));
        vf s = (vf){{0}};
        for (int c = 0; c < {L.C}; c++) s += PS_VMAP(vload(in + (size_t)c * {L.ps} + io) - m, expf);
{"        const vf ls = PS_VMAP(s, logf);" + chr(10) if log else ""}        for (int c = 0; c < {L.C}; c++) {{
            const vf x = vload(in + (size_t)c * {L.ps} + io);
            vf v = {value};
            if (w0 == LASTW) v = vand(v, tm);
            vstore(out + (size_t)c * {O.ps} + oo, v);
        }}
    }}
}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights,
                           flops=4 * L.C * L.H * L.W, schedule={})
