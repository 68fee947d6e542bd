"""Channel-vectorised conv micro-kernel, for small output planes (7x7, 14x14).

The row-vector kernel (igemm.py) puts VL output *columns* in a vector, so a 7-wide plane fills
7 of 8 lanes (AVX2) or 7 of 16 (AVX-512). This variant puts output *channels* in vectors
instead: a tile is CB = 16 output channels (16/VL vectors, as many lanes as any target has)
x NP output pixels; per reduction step it loads 16/VL weight vectors and broadcasts NP input
values, so every lane is useful whatever the plane width. The price is a scalar epilogue
(one store per output element, at stride Cout-plane), negligible when the reduction is long
(Cin*K*K in the hundreds), which is when the tuner/heuristic picks it.

Weights are packed per 16-channel block as [block][ci][tap][16] (channels past Cout zero): the
block width is fixed at 16 so the packing does not depend on the vector width of the build.
"""

from __future__ import annotations

import numpy as np

from ..layout import Layout
from ..target import Target
from .access import InputAccess
from .base import BATCHED_PARAMS, GeneratedKernel, act_scalar_c, single_image_c
from .batch import batch_walk, slot_c, units_c
from .common import MAX_VL, check_weight, helpers_c, loop_order

CB = MAX_VL  # output channels per tile
# The k == 1 slowdown of a reduction step (see cost), by vector width, as measured (AVX2's
# value serves the widths not measured).
K1_FACTOR = {8: 1.3, 16: 2.0}


def cost(*, cout: int, Ho: int, Wo: int, np_: int, target: Target, red: int, k: int) -> float:
    """Modelled cycles: per reduction step max(FMAs, loads) / 2 ports, plus the epilogue.

    At k == 1 every reduction step reads a new input plane and a new weight row, which made it
    L2-bandwidth bound in measurements (960->160 1x1 at 7x7, AVX2: 42 GF/s against 54 for the
    row-vector kernel, a factor 1.3); with k > 1 the taps reuse the lines it loads (512->512 3x3
    at 7x7: 55 against 49). With AVX-512 it is about 2: 1x1 convs at 7x7 (MobileNet-V2
    160->960, 320->1280, 576->160, 960->320) ran 1.1-1.6x slower than a 16-channel x one-vector
    row tile, whose weight broadcasts fold into the FMAs (benchmarks/dense_kernels.py)."""
    vl = target.require_cpu("channel-vector cost").lanes
    nv = CB // vl
    tiles = -(-cout // CB) * -(-(Ho * Wo) // np_)
    step = (max(nv * np_, nv + np_) / 2 + 0.5) * (K1_FACTOR.get(vl, K1_FACTOR[8]) if k == 1 else 1.0)
    return tiles * (red * step + 1.5 * CB * np_)


def np_choices(target: Target) -> list[int]:
    """Pixels per tile that fit the registers: (16/VL)*NP accumulators + 16/VL weights + 1."""
    cpu = target.require_cpu("channel-vector tiles")
    nregs = cpu.vector_registers
    nv = CB // cpu.lanes
    return [n for n in range(2, 15) if nv * n + nv + 1 <= nregs and nv * n >= 4]


def gen_cvec(name: str, *, cin: int, cout: int, k: int, acc: InputAccess, out_layout: Layout,
             act: str, has_residual: bool, np_: int, order: str | None, target: Target,
             images: int = 1) -> GeneratedKernel:
    """The channel-vectorised kernel; ``acc`` says how the input is read (any stride in place:
    each input value is one broadcast). Batched
    (base.GeneratedKernel) where it reads the input in place, the images of a block walked as
    batch.py says for ``images``."""
    O = out_layout
    kk = k * k
    Ho, Wo = O.H, O.W
    npix = Ho * Wo
    nct, npt = -(-cout // CB), -(-npix // np_)
    l2 = target.require_cpu(name).l2_bytes
    if order is None:
        order = loop_order(cin=cin, kk=kk, cout_pad=nct * CB, mr=CB, npt=npt,
                           src_floats=cin * acc.cs, out_floats=out_layout.size, l2_bytes=l2)
    batched = acc.direct
    walk = batch_walk(images=images, order=order, ns=npix, per_tile=np_, nct=nct, src_floats=cin * acc.cs,
                      weight_floats=nct * CB * cin * kk, out_floats=out_layout.size, l2_bytes=l2)
    J = range(np_)
    at = lambda j: f"(size_t)i{j} * is + " if batched else ""  # noqa: E731  image j's offset
    pix = "\n".join(
        slot_c(j, np_, str(npix), batched) + "\n" +
        f"        int oh{j} = s{j} / {Wo}, ow{j} = s{j} % {Wo};\n"
        f"        const float *p{j} = {acc.src} + {at(j)}{acc.origin} + (size_t)oh{j} * {acc.row_stride} + "
        f"{acc.step} * ow{j};"
        for j in J)

    def variant(nv: int) -> str:
        """Body for 16/VL == nv vectors per channel block."""
        V = range(nv)
        lines = ["        vf " + ", ".join(f"a{v}_{j} = (vf){{0}}" for v in V for j in J) + ";",
                 f"        for (int ci = 0; ci < {cin}; ci++) {{",
                 "            const float *wk = wp + (size_t)ci * " + str(kk * CB) + ";",
                 "            " + " ".join(f"const float *q{j} = p{j} + (size_t)ci * {acc.cs};" for j in J)]
        for t, off in enumerate(acc.tap_off):
            lines.append("            {")
            lines += [f"                vf w{v} = vloada(wk + {t * CB + v * (CB // nv)}); PS_KEEP(w{v});"
                      for v in V]
            for j in J:
                lines.append(f"                {{ vf x = vbcast(q{j}[{off}]); "
                             + " ".join(f"a{v}_{j} += w{v} * x;" for v in V) + " }")
            lines.append("            }")
        lines.append("        }")
        for j in J:
            lines.append(f"        if (ok{j}) {{ size_t o = {at(j)}{O.origin} + (size_t)oh{j} * {O.ld} + ow{j};")
            for v in V:
                lines.append(f"            for (int l = 0; l < VL; l++) {{ int co = co0 + {v} * VL + l;")
                val = f"a{v}_{j}[l] + bias[co]"
                if has_residual:
                    val += f" + res[o + (size_t)co * {O.ps}]"
                lines.append(f"                if (co < {cout}) out[o + (size_t)co * {O.ps}] = "
                             f"{act_scalar_c(act, val)}; }}")
            lines.append("        }")
        return "\n".join(lines)

    walks = f"; more images: {'each' if walk[0] else 'pooled'}, {walk[1]}-major" if batched else ""
    units, close = units_c(ns=str(npix), per_tile=np_, nct=nct, order=order, batched=batched, walk=walk)
    code = helpers_c(target) + f"""
/* {name}: conv {cin}->{cout}, {Ho}x{Wo} output, channel-vectorised: tile {CB} channels x
   {np_} pixels, {order}-major{walks} */
static void {name}{"_nb" if batched else ""}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res{BATCHED_PARAMS if batched else ""}) {{
    (void)res;{acc.scratch}
    {{{acc.prep}
{units}
        const int co0 = ct * {CB};
        const float *wp = w + (size_t)ct * {cin * kk * CB};
{pix}
#if VL == 16
{variant(1)}
#elif VL == 8
{variant(2)}
#else
{variant(4)}
#endif
{close}
    }}
}}
{single_image_c(name) if batched else ""}"""

    def pack(weight: np.ndarray) -> np.ndarray:
        wt = check_weight(weight, (cout, cin, k, k), name).reshape(cout, cin, kk)
        full = np.zeros((nct * CB, cin, kk), np.float32)
        full[:cout] = wt
        return np.ascontiguousarray(full.reshape(nct, CB, cin, kk).transpose(0, 2, 3, 1)).ravel()

    return GeneratedKernel(name=name, code=code, target=target, pack=pack, batched=batched,
                           flops=2 * cout * cin * kk * npix,
                           schedule={"np": np_, "order": order})
