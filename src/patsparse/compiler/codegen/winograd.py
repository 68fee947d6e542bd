"""Winograd convolution F(m x m, 3 x 3) for dense 3x3 stride-1 convs, m = 2 or 4.

Y = A^T [ (G g G^T) . (B^T d B) ] A per output tile of m x m pixels, d the (m+2) x (m+2) input
window: each tile costs (m+2)^2 multiplies per (input, output) channel pair instead of 9 m^2
(F(4x4, 3x3): 36 against 144, 4x fewer; F(2x2, 3x3): 16 against 36). Three phases, the team
split over each, a barrier between them (the team and scratch scheme of base.PRELUDE):

1. input transform, per (input channel, R tile rows): the vertical 1-D transform B^T along full row
   vectors (unit-stride loads straight from the padded layout; rows past the image and columns
   past it read as zero), then the horizontal one over VL tiles at a time (stride-m loads from
   that row scratch), into V[p][ci][tile] (p: one of the (m+2)^2 transformed positions);
2. (m+2)^2 independent GEMMs M[p] = U[p] V[p], on igemm's register-blocked micro-kernel
   (igemm.fma_step with one tap: MR output channels x NR vectors of VL tiles), weights U = G g
   G^T transformed at compile time in float64 and packed per p as igemm packs a 1x1 conv;
3. output transform, per (output channel, R tile rows): A along the tiles (loads of M[p]), the m
   results interleaved back into pixel order, then A^T down the rows, with igemm's epilogue
   (bias, residual, activation, tail mask) on full row vectors of the output layout.

The code takes a block of images (``NAME_nb``): they put their tiles side by side in V and M
(image b's ``Tp`` tiles at b * Tp), so each position's GEMM runs its weight panel over the
tiles of every image and the transformed weights come from memory once per block. That trades
one image's V and M per image (leaving cache as the block grows) for the weights re-read per
image, so the kernel is batched (base.GeneratedKernel) only where the weights are
WINO_BATCH_RATIO times one image's scratch or more. ResNet-18 ImageNet at batch 8 (one thread,
in-process A/B, contended): 512->512 F(2,3) at 7x7 (16.8 MB of weights, 1 MB of scratch an
image) 1.23-1.33x faster batched; 256->256 F(4,3) at 14x14 (9.4 MB, 1.2 MB) 0.69-0.90x and
128->128 at 28x28 (2.4 MB, 2.4 MB) 0.80-0.89x, so those run an image per call.

Tiles sit in the lanes in row-major order, so where a tile row fills at most half a vector (a
32x32 plane has 8 F(4,3) tiles per row) a transform unit takes R = VL / (tiles per row) tile
rows at once and its lanes stay busy: 1.4-2x faster layers at 32x32, 16x16 and 14x14 with 16
lanes (one thread, CPU time), against one tile row per unit.

The transforms are written once from the matrices (any m in TRANSFORMS), unrolled with zero
coefficients dropped. F(2,3) uses Lavin and Gray's matrices (points 0, 1, -1); F(4,3) uses
ncnn's (src/layer/x86/convolution_3x3_winograd.h, Tencent/ncnn: points 0, +-sqrt2, +-sqrt2/2),
whose smaller coefficients keep the fp32 error 2-4x lower than the points 0, +-1, +-2 of
Lavin and Gray's F(4,3) (a float32 evaluation of both in numpy, 64-512 input channels). ncnn also blocks tiles so that V and M stay in cache and packs
channels in vectors; here the layout is planar, so tiles sit in the vector lanes instead.

Requires the input halo to cover the conv padding (the layout's zero halo is the padding);
``schedules`` offers no candidate otherwise. Error against PyTorch's fp32 conv: see
docs/COMPILER.md ("Winograd").
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import InputError
from ..layout import Layout, round_up
from ..target import Target
from .base import BATCHED_PARAMS, GeneratedKernel, act_c, single_image_c
from .common import check_weight, helpers_c
from .igemm import L2_BYTES_PER_CYCLE, fma_step, pack_tiles

_S2 = math.sqrt(2.0)
# (B^T, G, A^T) per tile size m: B^T is (m+2) x (m+2), G (m+2) x 3, A^T m x (m+2)
TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[1, 0, -2.5, 0, 1, 0],
                  [0, -_S2, -2, _S2 / 2, 1, 0],
                  [0, _S2, -2, -_S2 / 2, 1, 0],
                  [0, -_S2 / 2, -.5, _S2, 1, 0],
                  [0, _S2 / 2, -.5, -_S2, 1, 0],
                  [0, 1, 0, -2.5, 0, 1]], np.float64),
        np.array([[1, 0, 0],
                  [-2 / 3, -_S2 / 3, -1 / 3],
                  [-2 / 3, _S2 / 3, -1 / 3],
                  [1 / 6, _S2 / 6, 1 / 3],
                  [1 / 6, -_S2 / 6, 1 / 3],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, _S2 / 2, -_S2 / 2, _S2, -_S2, 0],
                  [0, .5, .5, 2, 2, 0],
                  [0, _S2 / 4, -_S2 / 4, 2 * _S2, -2 * _S2, 1]], np.float64)),
}
TILE_SIZES = tuple(TRANSFORMS)
WINO_BATCH_RATIO = 10  # transformed weights / one image's V and M from which blocks share a call
OP_CYCLES = 0.5  # a vector load, store, add or shuffle: two ports


# Stride-m loads and the inverse interleave, from vector shuffles (GCC lowers them to one or two
# permutes per vector on AVX2/AVX-512, uzp1/zip1/zip2 on NEON). ps_load_s2 is the dialect's.
HELPERS = r"""
#ifndef PATSPARSE_WINOGRAD_HELPERS
#define PATSPARSE_WINOGRAD_HELPERS
#if VL == 16
#define WG_EVEN (vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#define WG_ZLO (vi){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define WG_ZHI (vi){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#elif VL == 8
#define WG_EVEN (vi){0, 2, 4, 6, 8, 10, 12, 14}
#define WG_ZLO (vi){0, 8, 1, 9, 2, 10, 3, 11}
#define WG_ZHI (vi){4, 12, 5, 13, 6, 14, 7, 15}
#else
#define WG_EVEN (vi){0, 2, 4, 6}
#define WG_ZLO (vi){0, 4, 1, 5}
#define WG_ZHI (vi){2, 6, 3, 7}
#endif
/* lanes 0, 4, 8, ... of p[0 .. 4*VL) */
static inline vf wg_load_s4(const float *p) { return __builtin_shuffle(ps_load_s2(p), ps_load_s2(p + 2 * VL), WG_EVEN); }
static inline vf wg_zlo(vf a, vf b) { return __builtin_shuffle(a, b, WG_ZLO); }
static inline vf wg_zhi(vf a, vf b) { return __builtin_shuffle(a, b, WG_ZHI); }
#endif
"""
_LOAD_SM = {2: "ps_load_s2", 4: "wg_load_s4"}


def _combo(row: np.ndarray, terms: list[str]) -> str:
    """C expression sum(row[j] * terms[j]) with zero coefficients dropped and +-1 as add/sub."""
    out = ""
    for c, t in zip(row, terms):
        if c == 0:
            continue
        if abs(c) == 1:
            piece = t
        else:
            piece = f"{float(abs(c))!r}f * {t}"
        sign = "-" if c < 0 else "+"
        out = (f"-{piece}" if sign == "-" else piece) if not out else f"{out} {sign} {piece}"
    return out or "(vf){0}"


def _interleave(vecs: list[str]) -> list[str]:
    """C expressions of the len(vecs) vectors holding vecs' lanes interleaved (lane l of vecs[c]
    goes to position l * n + c); n a power of two."""
    if len(vecs) == 1:
        return vecs
    half = len(vecs) // 2
    lo = [f"wg_zlo({vecs[c]}, {vecs[c + half]})" for c in range(half)]
    hi = [f"wg_zhi({vecs[c]}, {vecs[c + half]})" for c in range(half)]
    return _interleave(lo) + _interleave(hi)


def transform_weights(weight: np.ndarray, m: int) -> np.ndarray:
    """(Cout, Cin, 3, 3) -> ((m+2)^2, Cout, Cin): U[p] = (G g G^T) at position p, in float64."""
    _, G, _ = TRANSFORMS[m]
    u = np.einsum("ak,oikl,bl->abio", G, weight.astype(np.float64), G)
    a = m + 2
    return u.reshape(a * a, weight.shape[1], weight.shape[0]).transpose(0, 2, 1)


def _dims(Ho: int, Wo: int, m: int, vl: int, nr: int) -> tuple[int, int, int, int, int]:
    """(tile rows, tiles per row, tiles, tiles padded to whole NR x VL blocks, tile rows per
    transform unit). A unit transforms R = VL // (tiles per row) tile rows at once where a row
    fills at most half a vector, so narrow planes do not leave most lanes of the transforms idle."""
    nth, ntw = -(-Ho // m), -(-Wo // m)
    T = nth * ntw
    R = min(nth, vl // ntw) if 2 * ntw <= vl else 1
    return nth, ntw, T, round_up(T, nr * vl), R


def cost(*, cin: int, cout: int, Ho: int, Wo: int, m: int, mr: int, nr: int, target: Target) -> float:
    """Modelled cycles of one call, in igemm.schedules' units: the (m+2)^2 GEMMs charged like an
    igemm tile (idle lanes of partial tile vectors included), the two transforms per vector op,
    and the V and M scratch written and read back through L2 (at half the rate when they
    overflow L2: each phase streams them in order, so prefetching hides most of the latency)."""
    cpu = target.require_cpu("winograd cost")
    vl, a = cpu.lanes, m + 2
    nth, ntw, T, Tp, R = _dims(Ho, Wo, m, vl, nr)
    nb = -(-nth // R)
    BT, _, AT = TRANSFORMS[m]
    step = max(mr * nr / 2, (mr + nr) / 2) + 0.5
    gemm = a * a * -(-cout // mr) * (Tp // (nr * vl)) * (cin * step + mr * nr)
    groups = -(-(R * ntw) // vl)
    nxv = -(-(ntw * m + 2) // vl)
    nnz_b, nnz_a = int(np.count_nonzero(BT)), int(np.count_nonzero(AT))
    sm = 2 * m - 1  # loads and shuffles of one stride-m load (_LOAD_SM)
    vin = R * nxv * (a + nnz_b + a) + groups * a * (a * sm + nnz_b + a)
    nov = -(-Wo // vl)
    vout = groups * a * (a + nnz_a + m * int(math.log2(m)) + m) + R * m * nov * (a + a + 5)
    transforms = OP_CYCLES * (cin * nb * vin + cout * nb * vout)
    scratch = a * a * (cin + cout) * Tp * 4
    traffic = 2 * scratch / (L2_BYTES_PER_CYCLE if scratch <= cpu.l2_bytes else L2_BYTES_PER_CYCLE / 2)
    return gemm + transforms + traffic


def candidates(*, cin: int, cout: int, Ho: int, Wo: int, target: Target) -> list[tuple[float, int, dict]]:
    """(modelled cycles, tie-break, schedule) of the best GEMM tiles of every tile size: the
    Winograd entries of igemm.schedules' ranking."""
    cpu = target.require_cpu("winograd schedules")
    out = []
    for m in TILE_SIZES:
        tiles = []
        for mr in range(1, 17):
            for nr in range(1, 9):
                if mr * nr + nr + 2 > cpu.vector_registers or mr * nr < 4:
                    continue
                c = cost(cin=cin, cout=cout, Ho=Ho, Wo=Wo, m=m, mr=mr, nr=nr, target=target)
                tiles.append((c, -mr * nr, {"wino": m, "mr": mr, "nr": nr}))
        out += sorted(tiles, key=lambda t: t[:2])[:2]
    return out


def applies(*, k: int, stride: int, padding: int, in_layout: Layout) -> bool:
    """Whether a conv can run as Winograd: 3x3, stride 1, padding 0 or 1 inside the input halo."""
    return k == 3 and stride == 1 and padding in (0, 1) and in_layout.pad >= padding


def check_schedule(schedule: dict, where: str) -> tuple[int, int, int]:
    """(m, mr, nr) of a Winograd schedule; an InputError naming the kernel otherwise."""
    try:
        m, mr, nr = int(schedule["wino"]), int(schedule["mr"]), int(schedule["nr"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: a Winograd schedule needs integer 'wino', 'mr' and 'nr', "
                         f"got {schedule!r}") from None
    if m not in TRANSFORMS or not (1 <= mr <= 32 and 1 <= nr <= 16):
        raise InputError(f"{where}: Winograd schedule wino={m} (one of {TILE_SIZES}), mr={mr}, nr={nr} "
                         f"out of range (1..32, 1..16)")
    return m, mr, nr


def gen_winograd(name: str, *, cin: int, cout: int, padding: int, in_layout: Layout,
                 out_layout: Layout, act: str, has_residual: bool, schedule: dict, where: str,
                 target: Target) -> GeneratedKernel:
    """Generate the Winograd conv; callers have validated shapes and arguments (dense_conv)."""
    m, mr, nr = check_schedule(schedule, where)
    if padding not in (0, 1) or in_layout.pad < padding:
        raise InputError(f"{where}: Winograd needs padding 0 or 1 within the input halo "
                         f"(padding {padding}, halo {in_layout.pad})")
    cpu = target.require_cpu(where)
    vl, a, P = cpu.lanes, m + 2, padding
    L, O = in_layout, out_layout
    H, W, Ho, Wo = L.H, L.W, O.H, O.W
    BT, _, AT = TRANSFORMS[m]
    nth, ntw, T, Tp, R = _dims(Ho, Wo, m, vl, nr)
    nu = -(-nth // R)                           # units of R tile rows
    groups = -(-(R * ntw) // vl)                # tile vectors of a unit
    nxv = -(-(ntw * m + 2) // vl)               # row vectors of one input tile row
    # floats per transformed row of the row scratch: a unit's R tile rows at ntw * m apart, the
    # last one's vectors and the reach of the strided loads past it
    rw = round_up(max(groups * vl * m, (R - 1) * ntw * m + nxv * vl) + 2 * vl, vl)
    rw2 = groups * vl * m                       # the same for the output transform
    # tap columns ntw * m and ntw * m + 1 of a unit's tile row r < R - 1 (the last tile's taps 4, 5
    # for m = 4): row r + 1 overwrites them in the scratch, so they are kept aside and blended in
    tails = [(r, i, q) for r in range(R - 1) for i in range(a) for q in range(a - m)]
    tail_lanes = [r * ntw + ntw - 1 for r in range(R - 1)]
    xb, xbn = divmod(W + P, vl)                 # the row vector holding input column W, its lanes left
    nct = -(-cout // mr)
    A2 = a * a

    # 1. input transform: rows r0 - P .. r0 - P + a - 1 of channel ci
    rows = [f"            vf d{j} = ty * {m} + {j - P} < {H} ? LD({j}) : (vf){{0}};" for j in range(a)]
    vert = [f"            vstore(t + {i * rw} + xv * VL, {_combo(BT[i], [f'd{j}' for j in range(a)])});"
            for i in range(a)]
    load = _LOAD_SM[m]
    horiz = []
    for i in range(a):
        horiz.append("            {")
        horiz += [f"              vf e{l} = {load}(t + {i * rw} + g * {vl * m} + {l});" for l in range(a)]
        if tails:  # R > 1: one group, lanes r * ntw + tx
            mask = ", ".join("-1" if ln in tail_lanes else "0" for ln in range(vl))
            for q in range(a - m):
                horiz.append(f"              {{ vf tv = (vf){{0}}; "
                             + " ".join(f"tv[{ln}] = tl[{(r * a + i) * (a - m) + q}];" for r, ln in enumerate(tail_lanes))
                             + f" e{m + q} = vselect((vi){{{mask}}}, tv, e{m + q}); }}")
        for k in range(a):
            horiz.append(f"              WG_PUT({i * a + k}, {_combo(BT[k], [f'e{l}' for l in range(a)])});")
        horiz.append("            }")
    col_load = (f"(xv < {xb} ? vload(p + xv * VL) : "
                + (f"xv == {xb} ? vand(vload(p + xv * VL), bm) : (vf){{0}})" if xbn else "(vf){0})"))

    # 3. output transform: A along the tiles, interleave, A^T down the rows
    otr = []
    for i in range(a):
        otr.append("            {")
        otr += [f"              vf f{k} = vload(mp + (size_t){(i * a + k) * cout} * TT + g * VL);"
                for k in range(a)]
        zs = [f"z{c}" for c in range(m)]
        otr += [f"              vf z{c} = {_combo(AT[c], [f'f{k}' for k in range(a)])};" for c in range(m)]
        otr += [f"              vstore(r + {i * rw2} + g * {vl * m} + {c} * VL, {e});"
                for c, e in enumerate(_interleave(zs))]
        otr.append("            }")
    epi = []
    for rr in range(m):
        y = _combo(AT[rr], [f"vload(r + {i * rw2} + rt * {ntw * m} + xv * VL)" for i in range(a)])
        val = f"({y}) + bv" + (" + vload(rb + o)" if has_residual else "")
        epi.append(f"""            if (ty * {m} + {rr} < {Ho})
            for (int xv = 0; xv < NOV; xv++) {{
                size_t o = (size_t)co * {O.ps} + {O.origin} + (size_t)(ty * {m} + {rr}) * {O.ld} + xv * VL;
                vf v = {act_c(act, val)};
                if (xv == NOV - 1) v = vand(v, tm);
                vstore(ob + o, v);
            }}""")

    J, I = range(nr), range(mr)
    decl = "\n".join(f"        vf a{i}_{j} = (vf){{0}};" for i in I for j in J)
    body = "\n".join(fma_step((0,), mr, nr, " " * 12))
    gstore = "\n".join(f"        if (co0 + {i} < {cout}) {{ float *mo = mb + (size_t)(p * {cout} + co0 + {i}) * TT + t0; "
                       + " ".join(f"vstore(mo + {j} * VL, a{i}_{j});" for j in J) + " }" for i in I)
    qs = " ".join(f"const float *q{j} = vp + (size_t)ci * TT + {j} * VL;" for j in J)
    code = helpers_c(target) + target.render(HELPERS) + f"""
/* {name}: dense conv {cin}->{cout}, 3x3, stride 1, padding {P}, {H}x{W} -> {Ho}x{Wo},
   Winograd F({m}x{m}, 3x3): {nth}x{ntw} tiles, {A2} GEMMs of tile {mr} channels x {nr} vectors of tiles */
static void {name}_nb(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res{BATCHED_PARAMS}) {{
    enum {{ NOV = ({Wo} + VL - 1) / VL }};
    const size_t TT = (size_t)nb * {Tp};  /* tiles of the block: image b's at b * {Tp} */
    const vi tm = vtailmask({Wo} - (NOV - 1) * VL);
    const vi bm = vtailmask({xbn});
    (void)res; (void)bm;
    PS_SCRATCH(vb, (size_t){A2} * {cin + cout} * TT + VL, "{name}");
    float *mb = vb + (size_t){A2} * {cin} * TT;
    PS_PRIVATE(t, {max(a * rw, a * rw2 + vl)}, "{name}");
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < nb * {cin * nu}; u++) {{
        const int b = u / {cin * nu}, ci = u / {nu} % {cin}, tb = u % {nu};
        const float *p0 = in + b * is + (size_t)ci * {L.ps} + {L.origin} - {P};
        float tl[{max(1, len(tails))}];
        (void)tl;
        for (int rt = 0; rt < {R} && tb * {R} + rt < {nth}; rt++) {{
            const int ty = tb * {R} + rt;
            float *tr = t + rt * {ntw * m};
            for (int xv = 0; xv < {nxv}; xv++) {{
#define LD(j) ({{ const float *p = p0 + (ptrdiff_t)(ty * {m} + (j) - {P}) * {L.ld}; {col_load}; }})
{chr(10).join("    " + x for x in rows)}
#undef LD
{chr(10).join("    " + x.replace("vstore(t + ", "vstore(tr + ") for x in vert)}
            }}
            if (rt < {R - 1})
                for (int i = 0; i < {a}; i++)
                    for (int q = 0; q < {a - m}; q++) tl[(rt * {a} + i) * {a - m} + q] = tr[i * {rw} + {ntw * m} + q];
        }}
        float *vp = vb + (size_t)ci * TT + (size_t)b * {Tp} + tb * {R * ntw};
        const int rows_here = {nth} - tb * {R} < {R} ? {nth} - tb * {R} : {R};
        for (int g = 0; g < {groups}; g++) {{
            const int left = rows_here * {ntw} - g * VL;
#define WG_PUT(pp, e) do {{ float *d_ = vp + (size_t)(pp) * {cin} * TT + g * VL; vf v_ = (e); \\
            if (left >= VL) vstore(d_, v_); else vstore_lanes(d_, (1u << left) - 1u, v_); }} while (0)
{chr(10).join(horiz)}
#undef WG_PUT
        }}
        if (tb == {nu - 1})
            for (int pp = 0; pp < {A2}; pp++)
                for (int q = {T}; q < {Tp}; q++) vb[((size_t)pp * {cin} + ci) * TT + (size_t)b * {Tp} + q] = 0.0f;
    }}
    ps_barrier();
    const int NTB = nb * {Tp // (nr * vl)};  /* tile blocks of the block's images */
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {A2 * nct} * NTB; u++) {{
        const int p = u / ({nct} * NTB), ct = u / NTB % {nct}, t0 = u % NTB * {nr} * VL;
        const int co0 = ct * {mr};
        const float *vp = vb + (size_t)p * {cin} * TT + t0;
        const float *wp = w + ((size_t)p * {nct} + ct) * {cin * mr};
{decl}
        for (int ci = 0; ci < {cin}; ci++) {{
            {qs}
            const float *wk = wp + (size_t)ci * {mr};
{body}
        }}
{gstore}
    }}
    ps_barrier();
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < nb * {cout * nu}; u++) {{
        const int b = u / {cout * nu}, co = u / {nu} % {cout}, tb = u % {nu};
        const float *mp = mb + (size_t)co * TT + (size_t)b * {Tp} + tb * {R * ntw};
        float *restrict ob = out + b * is;
        const float *restrict rb = res ? res + b * is : 0;
        (void)rb;
        float *r = t;
        const vf bv = vbcast(bias[co]);
        for (int g = 0; g < {groups}; g++) {{
{chr(10).join(otr)}
        }}
        for (int rt = 0; rt < {R} && tb * {R} + rt < {nth}; rt++) {{
            const int ty = tb * {R} + rt;
{chr(10).join(epi)}
        }}
    }}
}}
{single_image_c(name)}"""

    def pack(weight: np.ndarray) -> np.ndarray:
        u = transform_weights(check_weight(weight, (cout, cin, 3, 3), name), m)
        return np.concatenate([pack_tiles(u[p].astype(np.float32)[:, :, None, None], mr) for p in range(A2)])

    batched = cin * cout >= WINO_BATCH_RATIO * (cin + cout) * Tp  # (module docstring)
    return GeneratedKernel(name=name, code=code, target=target, pack=pack, batched=batched,
                           flops=2 * cout * cin * 9 * Ho * Wo, schedule={"wino": m, "mr": mr, "nr": nr})

