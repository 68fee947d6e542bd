"""Per-element ops, standalone: an activation anywhere in the graph, a BatchNorm with no conv
before it (an affine map per channel), PReLU (a slope per channel), and add / sub / mul / div
of two tensors with broadcasting (``gen_binary``).

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
    x = _operand_c("in", L, O)
    val = {"act": x, "affine": f"{x} * vbcast(w[c]) + vbcast(bias[c])", "prelu": f"vleaky({x}, vbcast(w[c]))"}[mode]
    if has_residual:
        val = f"({val}) + vload(res + o)"
    code = _rows_kernel(name, f"{mode}, {act}, {L.C} channels of {L.H}x{L.W}", O, act_c(act, val), target)
    return GeneratedKernel(name=name, code=code, target=target, pack=_pack(L.C, name),
                           flops=L.C * L.H * L.W * (1 if mode == "act" else 2), schedule={})


BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _rows_kernel(name: str, comment: str, O: Layout, value: str, target: Target) -> str:
    """The kernel storing the vector expression ``value`` (of channel c, row h, columns w0 ...,
    output offset o) at every row vector of ``O``, the last one of a row masked."""
    return helpers_c(target) + f"""
/* {name}: {comment} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    enum {{ NVW = ({O.W} + VL - 1) / VL, LASTW = (NVW - 1) * VL }};
    const vi tm = vtailmask({O.W} - LASTW);
    (void)w; (void)bias; (void)res;
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {O.C * O.H}; u++) {{
        const int c = u / {O.H}, h = u % {O.H};
        (void)c; (void)h;
        for (int w0 = 0; w0 < {O.W}; w0 += VL) {{
            const size_t o = (size_t)c * {O.ps} + {O.origin} + (size_t)h * {O.ld} + w0;
            vf v = {value};
            if (w0 == LASTW) v = vand(v, tm);
            vstore(out + o, v);
        }}
    }}
}}
"""


def _operand_c(ptr: str, lay: Layout, out: Layout) -> str:
    """C of the vector of operand ``ptr`` (layout ``lay``, broadcast to ``out`` along every
    dimension of size 1) at output channel c, row h, columns w0 ..."""
    at = f"{ptr} + {'0' if lay.C == 1 else f'(size_t)c * {lay.ps}'} + {lay.origin}" \
         f" + {'0' if lay.H == 1 else f'(size_t)h * {lay.ld}'}"
    return f"vbcast(({at})[0])" if lay.W == 1 and out.W > 1 else f"vload({at} + w0)"


def gen_binary(name: str, *, op: str, in_layout: Layout, other_layout: Layout, out_layout: Layout,
               act: str = "none", target: Target) -> GeneratedKernel:
    """out = act(a op b) with PyTorch broadcasting over (C, H, W): ``a`` is the kernel's ``in``
    (``in_layout``), ``b`` its ``res`` argument (``other_layout``); a dimension of size 1 in
    either is repeated (a squeeze-excite gate (C, 1, 1) times a (C, H, W) tensor)."""
    where = f"binary kernel {name}"
    check_name(name)
    check_act(act, where)
    if op not in BINARY:
        raise InputError(f"{where}: op {op!r}, expected one of {tuple(BINARY)}")
    A, B, O = in_layout, other_layout, out_layout
    for label, lay in (("in_layout", A), ("other_layout", B)):
        if any(d not in (1, o) for d, o in zip((lay.C, lay.H, lay.W), (O.C, O.H, O.W))):
            raise InputError(f"{where}: {label} (C, H, W) = {(lay.C, lay.H, lay.W)} does not broadcast "
                             f"to {(O.C, O.H, O.W)}")
    val = f"{_operand_c('in', A, O)} {BINARY[op]} {_operand_c('res', B, O)}"
    code = _rows_kernel(name, f"{op} with broadcasting, {act}, {(A.C, A.H, A.W)} and {(B.C, B.H, B.W)} -> "
                        f"{(O.C, O.H, O.W)}", O, act_c(act, val), target)
    return GeneratedKernel(name=name, code=code, target=target, pack=_pack(0, name),
                           flops=O.C * O.H * O.W, schedule={})
