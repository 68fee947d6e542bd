"""A dense conv with its max pool in one kernel, output channels in vectors: the ImageNet stem.

ResNet's stem is a 7x7 stride-2 conv over 3 input channels (a third of the MACs left at 8x),
then ReLU and a 3x3 stride-2 max pool. The row-vector kernel (igemm.py) ran the conv at ~185
GF/s on two cores here, 1.4x ONNX Runtime's time for it. With output channels in vectors a
reduction step is MV aligned weight-vector loads (the stem's weights are 37 KB, so they stay
in L1) and NP broadcasts of input values for MV*NP FMAs: 262-266 GF/s in a stand-alone C test
of that loop (4 x 4 and 4 x 5 tiles; 4 x 6 spilled: 155). The catch is the output: channels
in vectors is not the planar layout the next layer reads, and writing it element by element
made that variant 2x slower (cvec.py). Fused with the pool, the conv's rows never leave the
thread: each pooled row is the max over a ring of ``pool_k`` conv rows kept channel-blocked
([block][slot][column][VL], with zero columns as the pool's padding, exact because the conv
ends in a ReLU), and VL x VL blocks of the pooled row are transposed in registers into the
planar output. The conv output (3.2 MB for the stem) is never written, and the pool needs no
pass of its own.

Threads split the pooled rows; each computes the conv rows its windows need, in order (rows a
window shares with the previous one stay in the ring, so only a row on the boundary between
two threads is computed twice). The input is read in place when its halo covers the padding
(broadcasts load single floats, so a stride costs nothing), else through phase planes
(access.input_access): for the stem the plane prep took 180 of 1005 us alone, and the model
input's layout already has the halo. Weights are packed per group of MV channel
vectors as [group][ci][tap][MV*VL] (channels past Cout zero).
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ..layout import Layout, round_up
from ..target import CpuCaps, Target
from .access import input_access
from .base import GeneratedKernel, act_c
from .common import (check_act, check_layouts, check_name, check_positive, check_weight,
                     conv_out_size, helpers_c, ring_rows_c)

ACTS_NONNEG = ("relu", "relu6")  # the ring's zero padding is a valid max-pool padding only then
MAX_MV = 4    # channel vectors per tile (64 channels with 16-float vectors)
# accumulators per tile: 4 x 6 spilled in the stand-alone test (155 against 262 GF/s); in the model
# 4 x 5 ran the stem 1.5x slower than 4 x 4 while inlined into the forward function, and still a
# little slower (1.02 against 1.00 ms, one thread, AVX-512) when kept out of line
MAX_ACC = 16


def _fits(mv: int, np_: int, cpu: CpuCaps) -> bool:
    """MV*NP accumulators, MV weight vectors, a broadcast and a spare in the register file."""
    return mv * np_ + mv + 2 <= cpu.vector_registers


def default_tile(cout: int, Wo: int, target: Target) -> dict:
    """MV channel vectors x NP pixels: the tile with the most accumulators (up to MAX_ACC) that
    fits the register file, then the fewest idle pixels per conv row, then more channel vectors.
    Why most accumulators: an FMA's latency times the FMA pipes (8 on AVX2 and AVX-512 cores)
    must be covered by independent accumulators with slack; with 16 registers (AVX2) 2 x 4 left
    exactly 8 and ran the stem at 96 GF/s on one core where 2 x 6 ran at 115 (the FMA peak: 130),
    and 4 x 2, the widest channel tile, at 103; in the model (one thread) the stem and pool took
    2.03 ms at 2 x 6, 2.18 at 4 x 2, 2.20 at 2 x 4, 2.40 at 3 x 3."""
    cpu = target.require_cpu("conv + max pool tile")
    mvs = range(1, min(MAX_MV, -(-cout // cpu.lanes)) + 1)
    tiles = [(m, n) for m in mvs for n in range(1, min(12, Wo) + 1) if m * n <= MAX_ACC and _fits(m, n, cpu)]
    mv, np_ = min(tiles, key=lambda t: (-t[0] * t[1], -(-Wo // t[1]) * t[1] - Wo, -t[0]))
    return {"mv": mv, "np": np_}


def transpose_c(names: list[str]) -> list[str]:
    """C statements transposing in place the VL x VL block held in vectors ``names`` (VL of
    them, VL a power of two): log2(VL) stages of two-source shuffles, stage h interleaving
    h-lane blocks of rows i and i + h."""
    vl, lines, h = len(names), [], 1
    while h < vl:
        lo = [x for k in range(0, vl, 2 * h) for x in (*range(k, k + h), *range(vl + k, vl + k + h))]
        hi = ", ".join(str(x + h) for x in lo)
        lo = ", ".join(map(str, lo))
        for i in (i for i in range(vl) if not i & h):
            a, b = names[i], names[i + h]
            lines.append(f"{{ const vf t0 = __builtin_shufflevector({a}, {b}, {lo}), "
                         f"t1 = __builtin_shufflevector({a}, {b}, {hi}); {a} = t0; {b} = t1; }}")
        h *= 2
    return lines


def gen_conv_maxpool(name: str, *, cin: int, cout: int, k: int, stride: int, padding: int,
                     pool_k: int, pool_stride: int, pool_padding: int, in_layout: Layout,
                     out_layout: Layout, act: str, target: Target, schedule: dict | None = None,
                     has_residual: bool = False) -> GeneratedKernel:
    """maxpool(act(conv2d(x, w) + bias)) on one image; ``out_layout`` is the pooled output's.

    ``act`` must be relu or relu6 (the ring pads the pool with zeros); the pool's stride may
    not exceed its kernel, nor its padding half the kernel (PyTorch's own rule). ``schedule``:
    {"mv", "np"} (default_tile). The code is generated for the ``target``'s vector width (a static
    assert keeps it from being built for another)."""
    where = f"conv+maxpool kernel {name}"
    cpu = target.require_cpu(where)
    vl = cpu.lanes
    check_name(name)
    check_positive(where, cin=cin, cout=cout, k=k, stride=stride, pool_k=pool_k, pool_stride=pool_stride)
    check_act(act, where)
    if has_residual:
        raise InputError(f"{where}: a residual cannot be added before the fused max pool")
    if act not in ACTS_NONNEG:
        raise InputError(f"{where}: the fused max pool needs a ReLU or ReLU6 before it, got act={act!r}")
    if pool_stride > pool_k or not 0 <= 2 * pool_padding <= pool_k:
        raise InputError(f"{where}: max pool kernel {pool_k}, stride {pool_stride}, padding {pool_padding} "
                         "is not supported (stride <= kernel, padding <= kernel / 2)")
    Ho, Wo = (conv_out_size(n, k, stride, padding, where) for n in (in_layout.H, in_layout.W))
    Hp, Wp = (conv_out_size(n, pool_k, pool_stride, pool_padding, where) for n in (Ho, Wo))
    check_layouts(where, in_layout, out_layout, (cin, in_layout.H, in_layout.W), (cout, Hp, Wp))
    tile = {**default_tile(cout, Wo, target), **{a: int(b) for a, b in (schedule or {}).items() if a in ("mv", "np")}}
    mv, np_ = tile["mv"], tile["np"]
    if not (1 <= mv and 1 <= np_ and _fits(mv, np_, cpu)):
        raise InputError(f"{where}: a tile of {mv} channel vectors x {np_} pixels does not fit "
                         f"{cpu.vector_registers} vector registers")
    kk, PK, PS, PP = k * k, pool_k, pool_stride, pool_padding
    ng = -(-cout // (mv * vl))            # channel groups of MV vectors
    nb = ng * mv                          # channel blocks of VL, Cout padded
    npg = -(-Wo // np_)                   # pixel groups per conv row
    rw = round_up(Wo + 2 * PP, vl)        # ring row: PP zero columns, the conv row, zeros
    ring = nb * PK * rw * vl              # floats of one thread's ring
    # broadcasts read single floats, so any stride reads the layout in place when its halo covers
    # the padding (the model input's does: the plan pads it for its consumers); else phase planes
    acc = input_access(name, channels=cin, k=k, stride=stride, padding=padding, in_layout=in_layout,
                       Ho=Ho, Wo=Wo, allow_strided=True, vl=vl)
    O, M, J = out_layout, range(mv), range(np_)

    conv = [f"            const float *q = {acc.src} + (size_t)ci * {acc.cs} + {acc.origin}"
            f" + (size_t)r * {acc.row_stride} + (size_t)ow0 * {acc.step};",
            f"            const float *wk = wg + (size_t)ci * {kk * mv * vl};"]
    # kernel rows in a loop, columns unrolled, where a tap's offset is a row part plus a column
    # part (phase planes and direct reads both are): the stand-alone C test's loop shape, and a
    # 7x smaller body than 49 unrolled taps (alone the two ran within noise: 1306 vs 1245 us)
    off = acc.tap_off
    rowloop = k > 1 and all(off[kh * k + kw] == off[kh * k] + off[kw] - off[0] for kh in range(k) for kw in range(k))
    if rowloop:
        conv += [f"            static const int RB[{k}] = {{{', '.join(str(off[kh * k] - off[0]) for kh in range(k))}}};",
                 f"            for (int kh = 0; kh < {k}; kh++, wk += {k * mv * vl}) {{",
                 "            const float *qr = q + RB[kh];"]
    taps = [(kw, off[kw]) for kw in range(k)] if rowloop else list(enumerate(off))
    base = "qr" if rowloop else "q"
    for t, o in taps:
        conv.append("            {")
        conv += [f"                vf w{m} = vloada(wk + {(t * mv + m) * vl}); PS_KEEP(w{m});" for m in M]
        conv += [f"                {{ const vf x = vbcast({base}[{o + j * acc.step}]); " + " ".join(f"a{m}_{j} += w{m} * x;" for m in M)
                 + " }" for j in J]
        conv.append("            }")
    if rowloop:
        conv.append("            }")
    put = [("        " if Wo >= np_ else f"        if (ow0 + {j} < {Wo}) ") + "{ " + " ".join(
        f"vstore(ring + ((size_t)(g * {mv} + {m}) * {PK} + r % {PK}) * {rw * vl} + (size_t)(ow0 + {j} + {PP}) * VL, "
        f"{act_c(act, f'a{m}_{j} + bv[g * {mv} + {m}]')});" for m in M) + " }" for j in J]
    tv = [f"m{i}" for i in range(vl)]
    pool = []
    for i in range(vl):
        pool += [f"            {{ const int pw = pw0 + {i} < {Wp} ? pw0 + {i} : {Wp - 1};",
                 f"              for (int r = r0; r < r1; r++) {{ const float *rr = ring + ((size_t)b * {PK} + r % {PK})"
                 f" * {rw * vl} + (size_t)pw * {PS} * VL;",
                 "                " + " ".join(f"{tv[i]} = vmax_nan({tv[i]}, vloada(rr + {kw * vl}));" for kw in range(PK))
                 + " } }"]
    stores = [f"            if (b * VL + {c} < {cout}) {{ vf v = {tv[c]}; if (pw0 + VL > {Wp}) v = vand(v, tm);"
              f" vstore(out + (size_t)(b * VL + {c}) * {O.ps} + {O.origin} + (size_t)ph * {O.ld} + pw0, v); }}"
              for c in range(vl)]
    nl = "\n"
    code = helpers_c(target) + f"""
/* {name}: conv {cin}->{cout} {k}x{k}/{stride} pad {padding}, {act}, max pool {PK}x{PK}/{PS} pad {PP}:
   {in_layout.H}x{in_layout.W} -> {Ho}x{Wo} -> {Hp}x{Wp}; output channels in vectors, tile {mv} x {vl}
   channels x {np_} pixels; a ring of {PK} channel-blocked conv rows per thread */
_Static_assert(VL == {vl}, "{name} was generated for {vl}-float vectors; regenerate it on this machine");
/* out of line: inlined into ps_forward (its only caller), the tile competes for registers there */
__attribute__((noinline))
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)res;
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
{acc.scratch}
    {{{acc.prep}
    }}
    PS_PRIVATE(ring, {ring}, "{name}");
    for (int s = 0; s < {nb * PK}; s++) {{  /* the pool's zero padding columns (other kernels reuse the arena) */
        memset(ring + (size_t)s * {rw * vl}, 0, {PP * vl} * sizeof(float));
        memset(ring + (size_t)s * {rw * vl} + {(Wo + PP) * vl}, 0, {(rw - Wo - PP) * vl} * sizeof(float));
    }}
    vf bv[{nb}];
    for (int b = 0; b < {nb}; b++)
        for (int l = 0; l < VL; l++) bv[b][l] = b * VL + l < {cout} ? bias[b * VL + l] : 0.0f;
    const vi tm = vtailmask({Wp} % VL ? {Wp} % VL : VL);
    const int p0 = {Hp} * t / nt, p1 = {Hp} * (t + 1) / nt;
    int done = 0;  /* conv rows below it are in the ring already, or not needed */
    for (int ph = p0; ph < p1; ph++) {{
{nl.join("        " + x for x in ring_rows_c("ph", PS, PP, PK, Ho))}
        for (int u = 0; u < {npg * ng}; u++) {{
          /* the last pixel group ends at the row's end (it may redo a few pixels) */
          const int ow0 = u / {ng} * {np_} < {max(0, Wo - np_)} ? u / {ng} * {np_} : {max(0, Wo - np_)}, g = u % {ng};
          const float *wg = w + (size_t)g * {cin * kk * mv * vl};
          vf {", ".join(f"a{m}_{j} = (vf){{0}}" for m in M for j in J)};
          for (int ci = 0; ci < {cin}; ci++) {{
{nl.join(conv)}
          }}
{nl.join(put)}
        }}
        done = r1;
        for (int b = 0; b < {nb}; b++)
        for (int pw0 = 0; pw0 < {Wp}; pw0 += VL) {{
            vf {", ".join(f"{x} = (vf){{0}}" for x in tv)};
{nl.join(pool)}
{nl.join("            " + x for x in transpose_c(tv))}
{nl.join(stores)}
        }}
    }}
}}
"""

    def pack(weight: np.ndarray) -> np.ndarray:
        wt = check_weight(weight, (cout, cin, k, k), name).reshape(cout, cin, kk)
        full = np.zeros((nb * vl, cin, kk), np.float32)
        full[:cout] = wt
        # [group][ci][tap][MV*VL]
        return np.ascontiguousarray(full.reshape(ng, mv * vl, cin, kk).transpose(0, 2, 3, 1)).ravel()

    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=2 * cout * cin * kk * Ho * Wo,
                           schedule={"mv": mv, "np": np_, "pool": [PK, PS, PP]})
