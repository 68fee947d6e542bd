"""C for int8 layers: the shared int8 prelude and one generator per op (conv, linear, global
average pool, max pool).

Every kernel has the signature ``static void NAME(const uint8_t *in, uint8_t *out, const
uint8_t *w, const uint8_t *res, uint8_t *scr)`` (w: the layer's section of the weight blob;
res: a fused residual in the output's layout, or NULL; scr: scratch shared by the team) and is
called by every thread of the team, like the float kernels (codegen/base.py). Activations are
uint8 codes in ``ByteLayout`` planes whose halo holds the tensor's zero point, so a padded tap
reads the code of 0.0 and adds nothing.

The arithmetic is quant/arith.py's, operation for operation, so the library must be built
without FMA contraction (``-ffp-contract=off``, build.py): requantisation is float32 multiply,
(add,) clamp, round half to even by the 1.5 * 2^23 trick (exact below 2^22, and clamped values
are at most 255), convert, add the zero point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layout import round_up

QUAD_BLOCK = 4  # vectors of quads the layout pass writes per step (the unit NQ is rounded to)


@dataclass(frozen=True)
class ByteLayout:
    """One uint8 tensor per image: C planes of (H + 2P) rows of ``ld`` bytes, the halo (P wide)
    holding the zero point; ``ps`` leaves room for a kernel's last vector running past the
    plane's rows (kernels write whole vectors)."""

    C: int
    H: int
    W: int
    P: int

    @property
    def ld(self) -> int:
        return self.W + 2 * self.P

    @property
    def ps(self) -> int:
        return round_up((self.H + 2 * self.P) * self.ld + 64, 64)

    @property
    def size(self) -> int:
        return self.C * self.ps

    @property
    def origin(self) -> int:
        """Offset of element (0, 0) in a plane."""
        return self.P * self.ld + self.P


def byte_layout(shape: tuple) -> ByteLayout:
    """The layout of a per-image shape: (C, H, W) with a one-wide halo (every 3x3 conv reads its
    padding as plain loads), a vector (n,) as n planes of one code."""
    c, h, w = tuple(shape) if len(shape) == 3 else (int(np.prod(shape)), 1, 1)
    return ByteLayout(c, h, w, 1 if h * w > 1 else 0)


def c_float(v: float) -> str:
    """An exact C literal of a float32 value."""
    return float(np.float32(v)).hex() + "f"


def _interleave(vl: int, width: int, half: int) -> str:
    """The shuffle mask interleaving two vectors of ``4 * vl * 8 / width`` elements of ``width``
    bits (half 0: their low halves, 1: their high halves)."""
    n = 4 * vl * 8 // width
    idx = [j for i in range(n // 2) for j in (half * n // 2 + i, n + half * n // 2 + i)]
    return "{" + ", ".join(map(str, idx)) + "}"


def _shuffles() -> str:
    out = []
    for vl in (4, 8, 16):
        out.append(f"#{'if' if vl == 4 else 'elif'} VL == {vl}")
        for w, t in ((8, "vq8"), (16, "vq16")):
            for h in (0, 1):
                out.append(f"#define PS_IL{w}_{h} ({t}){_interleave(vl, w, h)}")
    out.append("#endif")
    return "\n".join(out) + "\n"


PRELUDE = r"""
/* ---- int8 (compiler/int8) ---- */
typedef uint8_t vb __attribute__((vector_size(VL)));
typedef uint8_t vbu __attribute__((vector_size(VL), aligned(1)));
typedef int32_t viu __attribute__((vector_size(VL * 4), aligned(1)));
typedef uint8_t vq8 __attribute__((vector_size(VL * 4)));
typedef uint8_t vq8u __attribute__((vector_size(VL * 4), aligned(1)));
typedef uint16_t vq16 __attribute__((vector_size(VL * 4)));
/*@dot4@*/
#define PS_XOFF (PS_XMASK ? 128 : 0)
""" + _shuffles() + r"""#define PS_RND 12582912.0f
/* clamp to [lo, hi] (codes minus the zero point), round half to even, add the zero point */
static inline vi ps_codes(vf v, float lo, float hi, int zp) {
    v = vmin(vmax(v, vbcast(lo)), vbcast(hi));
    v = (v + vbcast(PS_RND)) - vbcast(PS_RND);
    return __builtin_convertvector(v, vi) + zp;
}
static inline uint8_t ps_code(float v, float lo, float hi, int zp) {
    v = v > lo ? v : lo;  /* a NaN becomes lo */
    v = v < hi ? v : hi;
    v = (v + PS_RND) - PS_RND;
    return (uint8_t)((int32_t)v + zp);
}
static inline void ps_store_codes(uint8_t *o, vi c) { *(vbu *)o = __builtin_convertvector(c, vb); }
static inline vf ps_res(const uint8_t *r, int zp, float m) {
    return __builtin_convertvector(__builtin_convertvector(*(const vbu *)r, vi) - zp, vf) * vbcast(m);
}
/* the halo of one plane (H x W interior, P wide, rows of ld) set to the zero point */
static void ps_halo(uint8_t *p, int H, int W, int P, int ld, int zp) {
    if (!P) return;
    memset(p, zp, (size_t)P * ld);
    for (int h = P; h < H + P; h++) { memset(p + h * ld, zp, P); memset(p + h * ld + P + W, zp, P); }
    memset(p + (size_t)(H + P) * ld, zp, (size_t)P * ld);
}
/* Quads of four byte rows: dst[4q + i] = s_i[q] for q < nq (a multiple of 4 VL), XOR PS_XMASK */
static inline void ps_quads_flat(uint8_t *restrict dst, const uint8_t *s0, const uint8_t *s1,
                                 const uint8_t *s2, const uint8_t *s3, int nq) {
    for (int q = 0; q < nq; q += 4 * VL) {
        const vq8 a = *(const vq8u *)(s0 + q), b = *(const vq8u *)(s1 + q);
        const vq8 c = *(const vq8u *)(s2 + q), d = *(const vq8u *)(s3 + q);
        const vq16 ab0 = (vq16)__builtin_shuffle(a, b, PS_IL8_0), ab1 = (vq16)__builtin_shuffle(a, b, PS_IL8_1);
        const vq16 cd0 = (vq16)__builtin_shuffle(c, d, PS_IL8_0), cd1 = (vq16)__builtin_shuffle(c, d, PS_IL8_1);
        vi *o = (vi *)(dst + 4 * (size_t)q);
        o[0] = (vi)__builtin_shuffle(ab0, cd0, PS_IL16_0) ^ (int32_t)PS_XMASK;
        o[1] = (vi)__builtin_shuffle(ab0, cd0, PS_IL16_1) ^ (int32_t)PS_XMASK;
        o[2] = (vi)__builtin_shuffle(ab1, cd1, PS_IL16_0) ^ (int32_t)PS_XMASK;
        o[3] = (vi)__builtin_shuffle(ab1, cd1, PS_IL16_1) ^ (int32_t)PS_XMASK;
    }
}
/* the first filter of thread t of nt: filters split by kernel count (+1 each for its epilogue) */
static inline int ps_split(const int32_t *kptr, int F, int t, int nt) {
    const long want = (long)(kptr[F] + F) * t / nt;
    int f = 0;
    while (f < F && kptr[f] + f < want) f++;
    return f;
}
"""


class Blob:
    """A layer's constants, packed into 64-byte-aligned sections of one byte string."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, arr: np.ndarray) -> int:
        """Append ``arr`` (little-endian), return its byte offset."""
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        at = self.size
        padded = data + bytes(round_up(len(data), 64) - len(data) or 64)
        self.parts.append(padded)
        self.size += len(padded)
        return at

    def bytes(self) -> bytes:
        return b"".join(self.parts)


@dataclass
class Int8Kernel:
    name: str
    code: str
    blob: bytes
    flops: int
    scratch: int  # bytes of team scratch it needs


def _conv_store(n, qp: dict) -> str:
    """The C that requantises accumulator vector ``acc[i]`` and stores it at ``out + o``."""
    q = n.attrs["q"]
    zp = qp[n.name]["zero_point"]
    lo, hi = c_float(q["lo"] - zp), c_float(q["hi"] - zp)
    res = ""
    if n.residual is not None:
        res = f" + ps_res(res + o, {qp[n.residual]['zero_point']}, {c_float(q['res_m'])})"
    store = (f"ps_store_codes(out + o, ps_codes(__builtin_convertvector(acc[i], vf) * vbcast(mf){res}, "
             f"{lo}, {hi}, {zp}));")
    return store


def gen_conv(n, name: str, lin: ByteLayout, lout: ByteLayout, qp: dict, quads, tile: int) -> Int8Kernel:
    """A conv (groups 1) on quads (quads.py): lay out every quad in use for the whole output
    plane (split over the team), then each thread runs its filters, ``tile`` vectors of output
    positions at a time, one dot product per kept quad and vector."""
    a = n.attrs
    k, s, p = a["k"], a["stride"], a["padding"]
    w_q = n.params["w_q"]
    F = w_q.shape[0]
    nq = round_up(lout.H * lout.ld, QUAD_BLOCK * 16)  # output positions q = ho * ld + wo (16: the widest VL)
    zp_in = qp[n.inputs[0]]["zero_point"]
    blob = Blob()
    o_ent = blob.add(quads.entries.reshape(-1))
    o_kptr, o_kg, o_kw = blob.add(quads.kptr), blob.add(quads.group), blob.add(quads.word)
    o_bias = blob.add(n.params["bias_q"].astype(np.int32))
    o_sumw = blob.add(w_q.reshape(F, -1).astype(np.int64).sum(axis=1).astype(np.int32))
    o_m = blob.add(n.params["m"].astype(np.float32))
    flat = s == 1 and k == 2 * p + 1 and p <= lin.P and lin.ld == lout.ld
    if flat:  # the same flat position q reads input q + constant: four row loads per 4 VL quads
        src = ", ".join(f"in + e[{3 * i}] * {lin.ps} + (e[{3 * i + 1}] + {lin.P - p}) * {lin.ld} + e[{3 * i + 2}] + "
                        f"{lin.P - p}" for i in range(4))
        prep = f"ps_quads_flat(dst, {src}, {nq});"
    else:
        prep = f"""for (int q = 0; q < {nq}; q++) {{
            const int ho = q / {lout.ld}, wo = q % {lout.ld};
            uint32_t word = 0;
            if (ho < {lout.H} && wo < {lout.W})
                for (int i = 0; i < 4; i++) {{
                    const int y = ho * {s} + e[3 * i + 1] - {p}, x = wo * {s} + e[3 * i + 2] - {p};
                    const uint32_t v = (y >= 0 && y < {lin.H} && x >= 0 && x < {lin.W})
                        ? in[e[3 * i] * {lin.ps} + (y + {lin.P}) * {lin.ld} + x + {lin.P}] : {zp_in}u;
                    word |= v << (8 * i);
                }}
            else word = {zp_in}u * 0x01010101u;
            ((uint32_t *)dst)[q] = word ^ (uint32_t)PS_XMASK;
        }}"""
    store = _conv_store(n, qp)
    zp_out = qp[n.name]["zero_point"]
    code = f"""
static void {name}(const uint8_t *restrict in, uint8_t *restrict out, const uint8_t *restrict w,
                   const uint8_t *restrict res, uint8_t *restrict scr) {{
    const int32_t *ent = (const int32_t *)(w + {o_ent}), *kptr = (const int32_t *)(w + {o_kptr});
    const int32_t *kg = (const int32_t *)(w + {o_kg}), *kw = (const int32_t *)(w + {o_kw});
    const int32_t *bias = (const int32_t *)(w + {o_bias}), *sumw = (const int32_t *)(w + {o_sumw});
    const float *m = (const float *)(w + {o_m});
    #pragma omp for schedule(static) nowait
    for (int g = 0; g < {len(quads.entries)}; g++) {{
        const int32_t *e = ent + 12 * g;
        uint8_t *restrict dst = scr + (size_t)g * {4 * nq};
        {prep}
    }}
    ps_barrier();
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int f0 = ps_split(kptr, {F}, t, nt), f1 = ps_split(kptr, {F}, t + 1, nt);
    for (int q0 = 0; q0 < {nq}; q0 += {tile} * VL) {{
        const int nv = ({nq} - q0) / VL < {tile} ? ({nq} - q0) / VL : {tile};
        for (int f = f0; f < f1; f++) {{
            const int32_t init = bias[f] + (PS_XOFF - {zp_in}) * sumw[f];
            const float mf = m[f];
            vi acc[{tile}];
            for (int i = 0; i < {tile}; i++) acc[i] = (vi){{0}} + init;
            if (nv == {tile}) {{
                for (int kk = kptr[f]; kk < kptr[f + 1]; kk++) {{
                    const ps_w4 wv = ps_w4_bcast(kw[kk]);
                    const uint8_t *qp = scr + (size_t)kg[kk] * {4 * nq} + 4 * (size_t)q0;
                    for (int i = 0; i < {tile}; i++) acc[i] = ps_dot4(acc[i], *(const viu *)(qp + 4 * VL * i), wv);
                }}
            }} else {{
                for (int kk = kptr[f]; kk < kptr[f + 1]; kk++) {{
                    const ps_w4 wv = ps_w4_bcast(kw[kk]);
                    const uint8_t *qp = scr + (size_t)kg[kk] * {4 * nq} + 4 * (size_t)q0;
                    for (int i = 0; i < nv; i++) acc[i] = ps_dot4(acc[i], *(const viu *)(qp + 4 * VL * i), wv);
                }}
            }}
            for (int i = 0; i < nv; i++) {{
                const size_t o = (size_t)f * {lout.ps} + {lout.origin} + q0 + i * VL;
                {store}
            }}
        }}
    }}
    for (int f = f0; f < f1; f++) ps_halo(out + (size_t)f * {lout.ps}, {lout.H}, {lout.W}, {lout.P}, {lout.ld}, {zp_out});
}}
"""
    flops = 2 * int(np.count_nonzero(w_q)) * lout.H * lout.W
    return Int8Kernel(name, code, blob.bytes(), flops, len(quads.entries) * 4 * nq)


def gen_linear(n, name: str, lin: ByteLayout, lout: ByteLayout, qp: dict) -> Int8Kernel:
    """A linear layer: the input codes gathered into scratch, then one int32 dot per output."""
    w_q = n.params["w_q"]
    F, IN = w_q.shape
    inp = round_up(IN, 64)
    wpad = np.zeros((F, inp), np.int8)
    wpad[:, :IN] = w_q
    blob = Blob()
    o_w = blob.add(wpad.reshape(-1))
    o_bias = blob.add((n.params["bias_q"].astype(np.int64)
                       - qp[n.inputs[0]]["zero_point"] * w_q.astype(np.int64).sum(axis=1)).astype(np.int32))
    o_m = blob.add(n.params["m"].astype(np.float32))
    q, zp = n.attrs["q"], qp[n.name]["zero_point"]
    hw = lin.H * lin.W
    res = ""
    if n.residual is not None:
        res = (f"v = v + (float)((int32_t)res[(size_t)f * {lout.ps}] - {qp[n.residual]['zero_point']}) * "
               f"{c_float(q['res_m'])};")
    code = f"""
static void {name}(const uint8_t *restrict in, uint8_t *restrict out, const uint8_t *restrict w,
                   const uint8_t *restrict res, uint8_t *restrict scr) {{
    const int8_t *wq = (const int8_t *)(w + {o_w});
    const int32_t *bias = (const int32_t *)(w + {o_bias});
    const float *m = (const float *)(w + {o_m});
    #pragma omp for schedule(static) nowait
    for (int i = 0; i < {IN}; i++) {{
        const int c = i / {hw}, h = i % {hw} / {lin.W}, x = i % {lin.W};
        scr[i] = in[(size_t)c * {lin.ps} + (h + {lin.P}) * {lin.ld} + x + {lin.P}];
    }}
    ps_barrier();
    #pragma omp for schedule(static) nowait
    for (int f = 0; f < {F}; f++) {{
        int32_t acc = 0;
        for (int i = 0; i < {inp}; i++) acc += (int32_t)wq[(size_t)f * {inp} + i] * (int32_t)scr[i];
        float v = (float)(acc + bias[f]) * m[f];
        {res}
        out[(size_t)f * {lout.ps}] = ps_code(v, {c_float(q['lo'] - zp)}, {c_float(q['hi'] - zp)}, {zp});
    }}
}}
"""
    return Int8Kernel(name, code, blob.bytes(), 2 * F * IN, inp)


def gen_gap(n, name: str, lin: ByteLayout, lout: ByteLayout, qp: dict) -> Int8Kernel:
    """Global average pool: the int32 sum of a plane's codes minus H*W zero points, requantised."""
    blob = Blob()
    o_m = blob.add(n.params["m"].astype(np.float32))
    q, zp, zp_in = n.attrs["q"], qp[n.name]["zero_point"], qp[n.inputs[0]]["zero_point"]
    code = f"""
static void {name}(const uint8_t *restrict in, uint8_t *restrict out, const uint8_t *restrict w,
                   const uint8_t *restrict res, uint8_t *restrict scr) {{
    const float *m = (const float *)(w + {o_m});
    #pragma omp for schedule(static) nowait
    for (int c = 0; c < {lin.C}; c++) {{
        const uint8_t *p = in + (size_t)c * {lin.ps} + {lin.origin};
        int32_t s = 0;
        for (int h = 0; h < {lin.H}; h++) for (int x = 0; x < {lin.W}; x++) s += p[h * {lin.ld} + x];
        out[(size_t)c * {lout.ps} + {lout.origin}] = ps_code((float)(s - {lin.H * lin.W * zp_in}) * m[c],
                                                           {c_float(q['lo'] - zp)}, {c_float(q['hi'] - zp)}, {zp});
    }}
}}
"""
    return Int8Kernel(name, code, blob.bytes(), lin.C * lin.H * lin.W, 0)


def gen_maxpool(n, name: str, lin: ByteLayout, lout: ByteLayout, qp: dict) -> Int8Kernel:
    """Max pool on codes (same scale and zero point in and out); the window is clipped to the
    input, as PyTorch's -inf padding does; a fused ReLU clamps at the zero point."""
    a, q, zp = n.attrs, n.attrs["q"], qp[n.name]["zero_point"]
    k, s, p, d = a["k"], a["stride"], a["padding"], a.get("dilation", 1)
    code = f"""
static void {name}(const uint8_t *restrict in, uint8_t *restrict out, const uint8_t *restrict w,
                   const uint8_t *restrict res, uint8_t *restrict scr) {{
    #pragma omp for schedule(static) nowait
    for (int c = 0; c < {lin.C}; c++) {{
        const uint8_t *ip = in + (size_t)c * {lin.ps} + {lin.origin};
        uint8_t *op = out + (size_t)c * {lout.ps};
        for (int ho = 0; ho < {lout.H}; ho++) for (int wo = 0; wo < {lout.W}; wo++) {{
            int mx = {q['lo']};
            for (int ky = 0; ky < {k}; ky++) {{
                const int y = ho * {s} + ky * {d} - {p};
                if (y < 0 || y >= {lin.H}) continue;
                for (int kx = 0; kx < {k}; kx++) {{
                    const int x = wo * {s} + kx * {d} - {p};
                    if (x >= 0 && x < {lin.W} && ip[y * {lin.ld} + x] > mx) mx = ip[y * {lin.ld} + x];
                }}
            }}
            op[{lout.origin} + ho * {lout.ld} + wo] = (uint8_t)(mx < {q['hi']} ? mx : {q['hi']});
        }}
        ps_halo(op, {lout.H}, {lout.W}, {lout.P}, {lout.ld}, {zp});
    }}
}}
"""
    return Int8Kernel(name, code, b"", lin.C * lout.H * lout.W * k * k, 0)
