"""A 1x1 conv and the depthwise conv after it in one kernel: MobileNet-V2's expand + depthwise.

MobileNet-V2's first inverted-residual stages expand a thin tensor 6x with a 1x1 conv and feed
it straight to a 3x3 depthwise conv: at 112x112 the expanded tensor is 96 x 112 x 112 floats
(4.8 MB), written by one kernel and read back by the next, through L3 that other tenants share.
In the model the expand ran at 112 GF/s against 210-350 for the same kernel on smaller planes:
it waits on that traffic. Fused, the expanded tensor never leaves the thread: each depthwise
output row needs k expanded rows, kept in a ring of k rows x all channels (per thread, in L2;
[slot][channel][row]), and a row is expanded only when the first output row needing it comes up,
so each is computed once (a row on the boundary between two threads' output rows, twice).

Threads split the output rows. Per expanded row the 1x1 conv is a small GEMM (channels x row
vectors x input channels) in the implicit GEMM's register tiles (igemm.fma_step, weights packed
by igemm.pack_tiles; the tile from igemm.schedules for a one-row plane), its activation and
bias at the store, lanes past the row zeroed. The depthwise pass then reads the ring's k rows
through one pointer each (a row above or below the image points at a zero row), its taps at
compile-time column offsets, stride 2 with ps_load_s2. Ring rows have a vector of left margin
(zero: the left padding, and aligned stores for the expand) and zero columns past the row for
the right padding and the stride-2 over-read.

Weights: the expand's packed tiles, then its bias, then the depthwise weights (C x k*k); the
kernel's own bias is the depthwise's.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout, round_up
from ..target import Target
from .base import GeneratedKernel, act_c
from .common import (check_act, check_layout_types, check_layouts, check_name, check_positive,
                     check_weight, conv_out_size, helpers_c, ring_rows_c, VECTOR_LOAD)
from .igemm import fma_step, pack_tiles, schedules as igemm_schedules


def tiles(cout: int, W: int, cin: int, target: Target) -> list[dict]:
    """The implicit GEMM's row-vector tiles for one expanded row (a 1 x W plane), best first."""
    return [d for d in igemm_schedules(cout=cout, Ho=1, Wo=W, cin=cin, k=1, target=target) if "mr" in d]


def default_tile(cout: int, W: int, cin: int, target: Target) -> dict:
    return tiles(cout, W, cin, target)[0]


def gen_pw_dw(name: str, *, expand_weight: np.ndarray, expand_bias: np.ndarray, expand_act: str,
              k: int = 3, stride: int = 1, padding: int = 1, in_layout: Layout, out_layout: Layout,
              act: str, target: Target, schedule: dict | None = None,
              has_residual: bool = False) -> GeneratedKernel:
    """act(depthwise(expand_act(conv1x1(x, expand_weight) + expand_bias), w) + bias) on one image.

    ``expand_weight`` (C, Cin, 1, 1); the depthwise weight (C, 1, k, k) is what ``pack`` gets.
    ``schedule``: {"mr", "nr"}, the expand's tile (default_tile). The code is generated for the
    ``target``'s vector width (a static assert keeps it from being built for another)."""
    where = f"1x1 + depthwise kernel {name}"
    vl = target.require_cpu(where).lanes
    check_name(name)
    check_positive(where, k=k, stride=stride)
    check_act(act, where)
    check_act(expand_act, where)
    if has_residual:
        raise UnsupportedError(f"{where}: a residual on the fused depthwise output is not supported")
    if k > vl or stride > 2 or not 0 <= padding < k:
        raise UnsupportedError(f"{where}: depthwise kernel {k}, stride {stride}, padding {padding} "
                               f"not supported (kernel up to {vl}, stride 1 or 2, padding < kernel)")
    check_layout_types(where, in_layout, out_layout)
    C, cin = out_layout.C, in_layout.C
    ew = check_weight(expand_weight, (C, cin, 1, 1), f"{name} (expand)")
    eb = np.asarray(expand_bias, np.float32).ravel()
    if eb.shape != (C,) or not np.isfinite(eb).all():
        raise InputError(f"{where}: expand bias must be {C} finite floats, got shape {eb.shape}")
    H, W = in_layout.H, in_layout.W
    Ho, Wo = (conv_out_size(n, k, stride, padding, where) for n in (H, W))
    check_layouts(where, in_layout, out_layout, (cin, H, W), (C, Ho, Wo))
    tile = {**default_tile(C, W, cin, target), **{a: int(b) for a, b in (schedule or {}).items() if a in ("mr", "nr")}}
    mr, nr = tile["mr"], tile["nr"]
    if not (1 <= mr <= 32 and 1 <= nr <= 16):
        raise InputError(f"{where}: expand tile mr={mr}, nr={nr} out of range (1..32, 1..16)")
    K, S, P, kk = k, stride, padding, k * k
    nvw, nvo = -(-W // vl), -(-Wo // vl)
    lasto = (nvo - 1) * vl
    # ring row: VL of left margin, the expanded row, zeros for the right padding and for what the
    # depthwise loads read past it (ps_load_s2 reads 2 vectors)
    rl = round_up(max(vl + nvw * vl, vl - P + S * lasto + K - 1 + S * vl), vl)
    ring = K * C * rl + rl  # K slots of C rows, then one zero row
    cpad = round_up(C, mr)
    e_bias = cpad * cin           # offsets in the packed weights
    dw = e_bias + round_up(C, 16)
    I, J = range(mr), range(nr)
    load = VECTOR_LOAD[S]
    ochk = "" if C == cpad else f"if (co0 + {{i}} < {C}) "
    slots = [f"                int v{j} = pt * {nr} + {j}, ok{j} = v{j} < {nvw}; if (!ok{j}) v{j} = pt * {nr};"
             for j in J]
    qs = " ".join(f"const float *q{j} = src + (size_t)ci * {in_layout.ps} + v{j} * VL;" for j in J)
    puts = []
    for j in J:
        puts.append(f"                if (ok{j}) {{")
        puts += [f"                    {ochk.format(i=i)}{{ vf v = {act_c(expand_act, f'a{i}_{j} + vbcast(we[{e_bias} + co0 + {i}])')};"
                 f" if (v{j} == {nvw - 1}) v = vand(v, te); vstore(slot + (size_t)(co0 + {i}) * {rl} + v{j} * VL, v); }}"
                 for i in I]
        puts.append("                }")
    taps = " + ".join(f"wt{kh * K + kw} * {load}(r{kh} + {S} * w0 + {kw})" for kh in range(K) for kw in range(K))
    O, nl = out_layout, "\n"
    code = helpers_c(target) + f"""
/* {name}: 1x1 conv {cin}->{C} ({expand_act}) + depthwise {K}x{K}/{S} pad {P} ({act}), {H}x{W} -> {Ho}x{Wo};
   a ring of {K} expanded rows per thread, expand tile {mr} channels x {nr} row vectors */
_Static_assert(VL == {vl}, "{name} was generated for {vl}-float vectors; regenerate it on this machine");
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)res;
    const float *restrict we = w, *restrict wd = w + {dw};
    const vi te = vtailmask({W - (nvw - 1) * vl}), to = vtailmask({Wo - lasto});
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    PS_PRIVATE(ring, {ring}, "{name}");
    float *restrict zrow = ring + {K * C * rl};
    for (int s = 0; s < {K * C}; s++) {{  /* left margin and right zeros (other kernels reuse the arena) */
        memset(ring + (size_t)s * {rl}, 0, VL * sizeof(float));
        memset(ring + (size_t)s * {rl} + {vl + nvw * vl}, 0, {rl - vl - nvw * vl} * sizeof(float));
    }}
    memset(zrow, 0, {rl} * sizeof(float));
    const int p0 = {Ho} * t / nt, p1 = {Ho} * (t + 1) / nt;
    int done = 0;  /* expanded rows below it are in the ring already, or not needed */
    for (int oh = p0; oh < p1; oh++) {{
{nl.join("        " + x for x in ring_rows_c("oh", S, P, K, H))} {{
            float *restrict slot = ring + (size_t)(r % {K}) * {C * rl} + VL;
            const float *restrict src = in + {in_layout.origin} + (size_t)r * {in_layout.ld};
            for (int u = 0; u < {-(-nvw // nr) * (cpad // mr)}; u++) {{
                const int pt = u / {cpad // mr}, co0 = u % {cpad // mr} * {mr};
{nl.join(slots)}
                const float *wp = we + (size_t)co0 * {cin};
                vf {", ".join(f"a{i}_{j} = (vf){{0}}" for i in I for j in J)};
                #pragma GCC unroll 4
                for (int ci = 0; ci < {cin}; ci++) {{
                    {qs}
                    const float *wk = wp + (size_t)ci * {mr};
{nl.join(fma_step((0,), mr, nr, " " * 20))}
                }}
{nl.join(puts)}
            }}
        }}
        done = r1;
        const float *rb[{K}];
        size_t rs[{K}];
        for (int kh = 0; kh < {K}; kh++) {{  /* the ring row of each tap row, or the zero row */
            const int r = oh * {S} - {P} + kh, in_img = r >= 0 && r < {H};
            rb[kh] = (in_img ? ring + (size_t)(r % {K}) * {C * rl} : zrow) + VL - {P};
            rs[kh] = in_img ? {rl} : 0;
        }}
        for (int c = 0; c < {C}; c++) {{
            {" ".join(f"const vf wt{i} = vbcast(wd[c * {kk} + {i}]);" for i in range(kk))}
            const vf bv = vbcast(bias[c]);
            {" ".join(f"const float *r{kh} = rb[{kh}] + c * rs[{kh}];" for kh in range(K))}
            float *op = out + (size_t)c * {O.ps} + {O.origin} + (size_t)oh * {O.ld};
            for (int w0 = 0; w0 < {Wo}; w0 += VL) {{
                vf v = {act_c(act, f"bv + {taps}")};
                if (w0 == {lasto}) v = vand(v, to);
                vstore(op + w0, v);
            }}
        }}
    }}
}}
"""

    def pack(weight: np.ndarray) -> np.ndarray:
        wd = check_weight(weight, (C, 1, K, K), name).ravel()
        bias = np.zeros(round_up(C, 16), np.float32)
        bias[:C] = eb
        return np.concatenate([pack_tiles(ew, mr), bias, wd]).astype(np.float32)

    return GeneratedKernel(name=name, code=code, target=target, pack=pack,
                           flops=2 * C * cin * H * W + 2 * C * kk * Ho * Wo,
                           schedule={"mr": mr, "nr": nr})
