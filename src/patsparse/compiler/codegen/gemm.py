"""Dense matrix products: 1x1 convolutions (stride 1 and 2) and linear layers.

A 1x1 conv is a GEMM (Cout x Cin) @ (Cin x pixels); it runs on the register-blocked
implicit-GEMM engine (igemm.py) with a single tap, reading the layout directly at stride 1 and
through a decimated copy of the input at stride 2 (ResNet's downsample).

A linear layer at batch 1 is a matrix-vector product, bound by streaming its weights, so it
is a plain vectorised GEMV with several output rows per pass. Batched (base.GeneratedKernel),
each pass runs its rows on every image of the block in turn, so the rows (a few KB, in L1)
come from memory once per block, not once per image (a ResNet-18's classifier is 2 MB). Its
input is the previous activation *as PyTorch flattens it*: ``in_layout`` is that activation's
layout (C, H, W, pad), and features are read in C-H-W order, so both
``flatten(global_pool(x))`` (H = W = 1) and a flattened feature map (VGG's classifier) are
accepted with no separate flatten pass. Its output is ``Layout(out_features, 1, 1, pad)``: one
feature per plane, which is what a following linear layer or the model's output copy reads.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ..layout import Layout, round_up
from ..target import Target
from .base import BATCHED_PARAMS, GeneratedKernel, act_scalar_c, single_image_c
from .common import (check_act, check_layout_types, check_layouts, check_name, check_positive,
                     check_weight, conv_out_size, helpers_c, MAX_VL)
from .igemm import gen_igemm


def gen_conv1x1(name: str, *, cin: int, cout: int, stride: int = 1, padding: int = 0,
                in_layout: Layout, out_layout: Layout, act: str = "none",
                has_residual: bool = False, schedule: dict | None = None,
                target: Target, images: int = 1) -> GeneratedKernel:
    """A 1x1 convolution (groups=1) as a register-blocked GEMM; weight shape (cout, cin, 1, 1).
    ``images``: the block the model runs (igemm.gen_igemm)."""
    where = f"conv1x1 kernel {name}"
    check_name(name)
    check_positive(where, cin=cin, cout=cout, stride=stride)
    check_act(act, where)
    if padding < 0:
        raise InputError(f"{where}: padding must be >= 0, got {padding}")
    check_layout_types(where, in_layout, out_layout)
    Ho = conv_out_size(in_layout.H, 1, stride, padding, where)
    Wo = conv_out_size(in_layout.W, 1, stride, padding, where)
    check_layouts(where, in_layout, out_layout, (cin, in_layout.H, in_layout.W), (cout, Ho, Wo))
    return gen_igemm(name, cin=cin, cout=cout, k=1, stride=stride, padding=padding,
                     in_layout=in_layout, out_layout=out_layout, act=act,
                     has_residual=has_residual, schedule=schedule, where=where, target=target,
                     images=images)


def schedules_linear(*, out_features: int) -> list[dict]:
    """Candidate output rows per pass for the GEMV (more rows: more independent FMA chains)."""
    return [{"mr": m} for m in (8, 4, 6, 2) if m <= max(out_features, 2)]


def gen_linear(name: str, *, in_features: int, out_features: int, in_layout: Layout,
               out_layout: Layout, act: str = "none", has_residual: bool = False,
               schedule: dict | None = None, target: Target) -> GeneratedKernel:
    """y = W x + b for each image of a block; weight shape (out_features, in_features).

    ``in_layout`` is the layout of the activation being flattened (C*H*W == in_features, read in
    C-H-W order); ``out_layout`` must be ``Layout(out_features, 1, 1, pad)`` for any pad.
    """
    where = f"linear kernel {name}"
    check_name(name)
    check_positive(where, in_features=in_features, out_features=out_features)
    check_act(act, where)
    if not isinstance(in_layout, Layout) or in_layout.C * in_layout.H * in_layout.W != in_features:
        raise InputError(f"{where}: in_layout {in_layout!r} does not hold {in_features} features "
                         f"(C*H*W must equal in_features)")
    check_layouts(where, in_layout, out_layout, (in_layout.C, in_layout.H, in_layout.W),
                  (out_features, 1, 1))
    mr = int((schedule or schedules_linear(out_features=out_features)[0]).get("mr", 0))
    if not 1 <= mr <= 16:
        raise InputError(f"{where}: schedule must be {{'mr': 1..16}}, got {schedule!r}")
    kp = round_up(in_features, MAX_VL)
    op = round_up(out_features, mr)
    L, O = in_layout, out_layout
    hw = L.H * L.W
    if hw == 1:
        gather = f"x[c] = ib[(size_t)c * {L.ps} + {L.origin}];"
    else:
        gather = (f"for (int h = 0; h < {L.H}; h++) for (int q = 0; q < {L.W}; q++) "
                  f"x[c * {hw} + h * {L.W} + q] = ib[(size_t)c * {L.ps} + {L.origin} + h * {L.ld} + q];")
    accs = "\n".join(f"            vf a{i} = (vf){{0}};" for i in range(mr))
    fmas = " ".join(f"a{i} += vloada(wo + {i * kp} + k) * xv;" for i in range(mr))
    epi = []
    for i in range(mr):
        val = f"s{i} + bias[o + {i}]"
        if has_residual:
            val += f" + rb[(size_t)(o + {i}) * {O.ps} + {O.origin}]"
        epi.append(f"            if (o + {i} < {out_features}) {{ float s{i} = 0.0f; "
                   f"for (int l = 0; l < VL; l++) s{i} += a{i}[l]; "
                   f"ob[(size_t)(o + {i}) * {O.ps} + {O.origin}] = {act_scalar_c(act, val)}; }}")
    epi = "\n".join(epi)
    code = helpers_c(target) + f"""
/* {name}: linear {in_features}->{out_features} (input flattened C-H-W from {L.C}x{L.H}x{L.W}),
   GEMV with {mr} output rows per pass */
static void {name}_nb(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res{BATCHED_PARAMS}) {{
    PS_SCRATCH(xs, (size_t)nb * {kp}, "{name}");  /* image b's features at b * {kp} */
    (void)res;
    {{
        #pragma omp for schedule(static) nowait
        for (int bc = 0; bc < nb * {L.C}; bc++) {{
            const int b = bc / {L.C}, c = bc % {L.C};
            const float *restrict ib = in + b * is;
            float *restrict x = xs + (size_t)b * {kp};
            {gather}
        }}
        if (omp_get_thread_num() == 0)
            for (int b = 0; b < nb; b++) for (int k = {in_features}; k < {kp}; k++) xs[(size_t)b * {kp} + k] = 0.0f;
        ps_barrier();
        #pragma omp for schedule(static) nowait
        for (int o = 0; o < {op}; o += {mr}) {{
            const float *wo = w + (size_t)o * {kp};
            for (int b = 0; b < nb; b++) {{
            const float *restrict x = xs + (size_t)b * {kp};
            float *restrict ob = out + b * is;
            const float *restrict rb = res ? res + b * is : 0;
            (void)rb;
{accs}
            for (int k = 0; k < {kp}; k += VL) {{ vf xv = vloada(x + k); {fmas} }}
{epi}
            }}
        }}
    }}
}}
{single_image_c(name)}"""

    def pack(weight: np.ndarray) -> np.ndarray:
        wt = check_weight(weight, (out_features, in_features), name)
        full = np.zeros((op, kp), np.float32)
        full[:out_features, :in_features] = wt
        return full.ravel()

    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=2 * in_features * out_features,
                           schedule={"mr": mr}, batched=True)
