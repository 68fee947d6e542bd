"""Channel-axis data movement: concat (SqueezeNet's fire modules), slicing a channel range
out of a tensor (split / chunk), and channel shuffle (ShuffleNet's reshape / transpose idiom).

Both copy interior rows only (the output's halo stays the zeros it was born with), one
(channel, row) pair per loop iteration split over the team. A concat has any number of inputs
but the kernel contract passes one, so the concat kernel takes the workspace base as ``in``
and reads input i at its workspace offset (``operands``: the plan's offsets and layouts).
"""

from __future__ import annotations

from ...errors import InputError
from ..layout import Layout
from ..target import Target
from .base import GeneratedKernel
from .common import check_layout_types, check_name, helpers_c
from .pool import _no_weights


def _copy_c(src: str, S: Layout, c_src: str, out_c: str, O: Layout, channels: int) -> str:
    """C copying ``channels`` planes: source channel ``c_src`` (a C expression of k) to output
    channel ``out_c`` + k, for k = 0 .. channels - 1."""
    return f"""    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {channels * O.H}; u++) {{
        const int k = u / {O.H}, h = u % {O.H};
        memcpy(out + (size_t)({out_c} + k) * {O.ps} + {O.origin} + (size_t)h * {O.ld},
               {src} + (size_t)({c_src}) * {S.ps} + {S.origin} + (size_t)h * {S.ld}, {O.W} * sizeof(float));
    }}
"""


def gen_concat(name: str, *, operands: list[tuple[int, Layout]], out_layout: Layout,
               target: Target) -> GeneratedKernel:
    """torch.cat(inputs, dim=1) on one image; ``operands``: (workspace offset, layout) of each
    input in order, ``in`` is the workspace base."""
    where = f"concat kernel {name}"
    check_name(name)
    O = out_layout
    parts, c0 = [], 0
    for off, L in operands:
        check_layout_types(where, L, O)
        if (L.H, L.W) != (O.H, O.W):
            raise InputError(f"{where}: input of {L.H}x{L.W} into an output of {O.H}x{O.W}")
        parts.append(_copy_c(f"(in + {off})", L, "k", str(c0), O, L.C))
        c0 += L.C
    if c0 != O.C:
        raise InputError(f"{where}: inputs have {c0} channels, out_layout {O.C}")
    code = helpers_c(target) + f"""
/* {name}: concat of {len(operands)} inputs along channels -> {(O.C, O.H, O.W)} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)w; (void)bias; (void)res;
{"".join(parts)}}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights, flops=0, schedule={})


def gen_slice(name: str, *, start: int, in_layout: Layout, out_layout: Layout,
              target: Target) -> GeneratedKernel:
    """x[:, start:start + C] on one image (C: the output's channels)."""
    where = f"slice kernel {name}"
    check_name(name)
    L, O = in_layout, out_layout
    check_layout_types(where, L, O)
    if (L.H, L.W) != (O.H, O.W) or not 0 <= start <= L.C - O.C:
        raise InputError(f"{where}: channels {start}..{start + O.C} of a {(L.C, L.H, L.W)} input "
                         f"into {(O.C, O.H, O.W)}")
    code = helpers_c(target) + f"""
/* {name}: channels {start}..{start + O.C} of {L.C} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)w; (void)bias; (void)res;
{_copy_c("in", L, f"{start} + k", "0", O, O.C)}}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights, flops=0, schedule={})


def gen_shuffle(name: str, *, groups: int, in_layout: Layout, out_layout: Layout,
                target: Target) -> GeneratedKernel:
    """ShuffleNet's channel shuffle, x.view(N, g, C / g, H, W).transpose(1, 2).reshape(N, C, H, W):
    output channel k is input channel (k % g) * (C / g) + k / g."""
    where = f"shuffle kernel {name}"
    check_name(name)
    L, O = in_layout, out_layout
    check_layout_types(where, L, O)
    if (L.C, L.H, L.W) != (O.C, O.H, O.W) or groups < 1 or L.C % groups:
        raise InputError(f"{where}: {groups} groups of {(L.C, L.H, L.W)} into {(O.C, O.H, O.W)}")
    code = helpers_c(target) + f"""
/* {name}: channel shuffle of {L.C} channels in {groups} groups */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)w; (void)bias; (void)res;
{_copy_c("in", L, f"(k % {groups}) * {L.C // groups} + k / {groups}", "0", O, O.C)}}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights, flops=0, schedule={})
