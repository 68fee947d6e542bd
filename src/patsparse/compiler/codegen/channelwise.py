"""Per-element ops with per-channel constants, standalone: an activation anywhere in the graph,
a BatchNorm with no conv before it (an affine map per channel), and PReLU (a slope per channel).

Why a kernel of its own: these are fused into the producing conv or linear wherever that is
possible (passes.fuse_act, fold_bn); what is left reads an input the producer cannot change
(the model input, a tensor with other users, a pool or a concat). One pass over the tensor:

    act   out = act(x)
    affine out = act(x * w[c] + bias[c])          (BatchNorm in eval mode, folded to scale/shift)
    prelu  out = act(x > 0 ? x : x * w[c])        (PyTorch's PReLU; a NaN stays NaN)

plus a residual where the graph fused one (added before the activation, as in every kernel).
Each row is whole vectors; the last one is masked so the output's halo stays zero.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ..layout import Layout
from ..target import Target
from .base import GeneratedKernel, act_c
from .common import check_act, check_layouts, check_name, helpers_c

MODES = ("act", "affine", "prelu")


def _pack(channels: int, name: str):
    def pack(weight: np.ndarray) -> np.ndarray:
        w = np.asarray(weight, np.float32).reshape(-1)
        if w.size != channels:
            raise InputError(f"kernel {name}: {w.size} per-channel values for {channels} channels")
        return w.copy()
    return pack


def gen_channelwise(name: str, *, mode: str, in_layout: Layout, out_layout: Layout, act: str = "none",
                    has_residual: bool = False, schedule: dict | None = None, target: Target) -> GeneratedKernel:
    """The ``mode`` op (module docstring) on one image; ``w`` holds C per-channel values for
    affine (the scale) and prelu (the slope), ``bias`` C shifts for affine."""
    where = f"channelwise kernel {name}"
    check_name(name)
    check_act(act, where)
    if mode not in MODES:
        raise InputError(f"{where}: mode {mode!r}, expected one of {MODES}")
    L, O = in_layout, out_layout
    check_layouts(where, L, O, (L.C, L.H, L.W), (L.C, L.H, L.W))
    val = {"act": "x", "affine": "x * vbcast(w[c]) + vbcast(bias[c])", "prelu": "vleaky(x, vbcast(w[c]))"}[mode]
    if has_residual:
        val = f"({val}) + vload(res + o)"
    code = helpers_c(target) + f"""
/* {name}: {mode}, {act}, {L.C} channels of {L.H}x{L.W} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    enum {{ NVW = ({L.W} + VL - 1) / VL, LASTW = (NVW - 1) * VL }};
    const vi tm = vtailmask({L.W} - LASTW);
    (void)w; (void)bias; (void)res;
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {L.C * L.H}; u++) {{
        const int c = u / {L.H}, h = u % {L.H};
        const float *ip = in + (size_t)c * {L.ps} + {L.origin} + (size_t)h * {L.ld};
        for (int w0 = 0; w0 < {L.W}; w0 += VL) {{
            const size_t o = (size_t)c * {O.ps} + {O.origin} + (size_t)h * {O.ld} + w0;
            const vf x = vload(ip + w0);
            vf v = {act_c(act, val)};
            if (w0 == LASTW) v = vand(v, tm);
            vstore(out + o, v);
        }}
    }}
}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_pack(L.C, name),
                           flops=L.C * L.H * L.W * (1 if mode == "act" else 2), schedule={})
