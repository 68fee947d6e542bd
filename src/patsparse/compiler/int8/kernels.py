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


def _shuffles() -> str:
    """PS_ILB: interleave two VL-byte vectors bytewise (2 VL bytes); PS_ILH: two vectors of VL
    16-bit pairs pairwise (VL quads), for each vector width."""
    out = []
    for vl in (4, 8, 16):
        out.append(f"#{'if' if vl == 4 else 'elif'} VL == {vl}")
        il = ", ".join(f"{i}, {vl + i}" for i in range(vl))
        out += [f"#define PS_ILB {il}", f"#define PS_ILH {il}"]
    out.append("#endif")
    return "\n".join(out) + "\n"


PRELUDE = r"""
/* ---- int8 (compiler/int8) ---- */
typedef uint8_t vb __attribute__((vector_size(VL)));
typedef uint8_t vbu __attribute__((vector_size(VL), aligned(1)));
typedef int32_t viu __attribute__((vector_size(VL * 4), aligned(1)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));
/*@dot4@*/
#define PS_XOFF (PS_XMASK ? 128 : 0)
static inline ps_w4 ps_w4_bcast(int32_t w) { return ps_w4_vec((vi){0} + w); }
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
/* (codes widened in two steps: GCC turns a one-step uint8 -> int32 conversion into byte loads) */
static inline vf ps_res(const uint8_t *r, int zp, float m) {
    const vi c = __builtin_convertvector(__builtin_convertvector(*(const vbu *)r, vh), vi);
    return __builtin_convertvector(c - zp, vf) * vbcast(m);
}
/* the halo of one plane (H x W interior, P wide, rows of ld) set to the zero point */
static void ps_halo(uint8_t *p, int H, int W, int P, int ld, int zp) {
    if (!P) return;
    memset(p, zp, (size_t)P * ld);
    for (int h = P; h < H + P; h++) { memset(p + h * ld, zp, P); memset(p + h * ld + P + W, zp, P); }
    memset(p + (size_t)(H + P) * ld, zp, (size_t)P * ld);
}
/* VL quads of four byte rows: byte i of lane q is s_i[q], XOR PS_XMASK */
static inline vi ps_quad_vec(const uint8_t *s0, const uint8_t *s1, const uint8_t *s2, const uint8_t *s3) {
    const vb a = *(const vbu *)s0, b = *(const vbu *)s1, c = *(const vbu *)s2, d = *(const vbu *)s3;
    const vh ab = (vh)__builtin_shufflevector(a, b, PS_ILB), cd = (vh)__builtin_shufflevector(c, d, PS_ILB);
    return (vi)__builtin_shufflevector(ab, cd, PS_ILH) ^ (int32_t)PS_XMASK;
}
/* Quads of four byte rows: dst[4q + i] = s_i[q] for q < nq (a multiple of VL), XOR PS_XMASK */
static inline void ps_quads_flat(uint8_t *restrict dst, const uint8_t *s0, const uint8_t *s1,
                                 const uint8_t *s2, const uint8_t *s3, int nq) {
    for (int q = 0; q < nq; q += VL) *(vi *)(dst + 4 * (size_t)q) = ps_quad_vec(s0 + q, s1 + q, s2 + q, s3 + q);
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
        padded = data + bytes(round_up(max(len(data), 1), 64) - len(data))  # an empty array still gets a section
        self.parts.append(padded)
        self.size += len(padded)
        return at

    def data(self) -> bytes:
        return b"".join(self.parts)


@dataclass
class Int8Kernel:
    """One generated int8 layer: its C (kernel function and helpers), its constants, its useful
    FLOPs and the team scratch it needs."""

    name: str
    code: str
    blob: bytes
    flops: int
    scratch: int  # bytes of team scratch it needs


def _conv_store(n, qp: dict, lout: ByteLayout, compact: bool) -> str:
    """The C that requantises accumulator vector ``acc[i]`` and stores it at ``out + o``: VL
    positions of the output's pitch, or (``compact``) VL / W whole rows of W positions, row r at
    ``out + o + r * ld`` (rows past the plane skipped), a fused residual read the same way."""
    q = n.attrs["q"]
    zp = qp[n.name]["zero_point"]
    lo, hi = c_float(q["lo"] - zp), c_float(q["hi"] - zp)
    at, rows, fill, spill = "out + o", "", "", ""
    if compact:
        rows = f"const int nr = {lout.H} - row0 < VL / {lout.W} ? {lout.H} - row0 : VL / {lout.W};"
        at = "cb"
        spill = f"for (int r = 0; r < nr; r++) memcpy(out + o + r * {lout.ld}, cb + r * {lout.W}, {lout.W});"
    res = ""
    if n.residual is not None:
        res = f" + ps_res({'rb' if compact else 'res + o'}, {qp[n.residual]['zero_point']}, {c_float(q['res_m'])})"
        if compact:
            fill = f"for (int r = 0; r < nr; r++) memcpy(rb + r * {lout.W}, res + o + r * {lout.ld}, {lout.W});"
    store = (f"ps_store_codes({at}, ps_codes(__builtin_convertvector(acc[i], vf) * vbcast(mf){res}, "
             f"{lo}, {hi}, {zp}));")
    return "\n                ".join(x for x in (rows, fill, store, spill) if x)


CHAINS = 8  # independent accumulators a dot loop keeps: a 4-way dot product's latency over its issue interval


def _dots(name: str, nv: int) -> str:
    """C of ``NAME_dotsNV``: ``acc[0 .. nv)`` = ``init`` + one filter's kernels ``k0 .. k1`` on
    ``nv`` vectors of quads, the kernels split over ``ceil(CHAINS / nv)`` accumulator sets summed
    at the end, so a plane of one or two vectors is not one chain of dependent dot products."""
    u = -(-CHAINS // nv)
    return f"""
static inline void {name}_dots{nv}(vi *restrict acc, const uint8_t *restrict qt, const int32_t *restrict kern,
                                   int k0, int k1, int32_t init) {{
    vi a[{u}][{nv}];
    for (int u = 0; u < {u}; u++) for (int i = 0; i < {nv}; i++) a[u][i] = (vi){{0}} + (u ? 0 : init);
    int kk = k0;
    for (; kk + {u} <= k1; kk += {u})
        for (int u = 0; u < {u}; u++) {{
            const ps_w4 wv = ps_w4_bcast(kern[2 * (kk + u) + 1]);
            const uint8_t *qp = qt + kern[2 * (kk + u)];
            for (int i = 0; i < {nv}; i++) a[u][i] = ps_dot4(a[u][i], *(const viu *)(qp + 4 * VL * i), wv);
        }}
    for (; kk < k1; kk++) {{
        const ps_w4 wv = ps_w4_bcast(kern[2 * kk + 1]);
        const uint8_t *qp = qt + kern[2 * kk];
        for (int i = 0; i < {nv}; i++) a[0][i] = ps_dot4(a[0][i], *(const viu *)(qp + 4 * VL * i), wv);
    }}
    for (int i = 0; i < {nv}; i++) {{
        vi sum = a[0][i];
        for (int u = 1; u < {u}; u++) sum += a[u][i];
        acc[i] = sum;
    }}
}}"""


PACK = 4  # at most this many kernels share a vector on a plane of a few positions


def _packed(name: str, lanes: int, pack: int, vl: int) -> str:
    """C of ``NAME_pdot``: one dot product for ``pack`` kernels of a filter on a plane of at most
    ``lanes`` positions, kernel j in lanes ``j * lanes ..``: its quads (``lanes`` words at
    ``qb + r[j]``) and its weight word ``r[pack + j]`` spread over them."""
    chunks = [f"c{j}" for j in range(pack)]
    lines, width, level = [], lanes, 0
    while len(chunks) > 1:
        nxt = []
        for j in range(0, len(chunks), 2):
            nxt.append(f"d{level}_{j // 2}")
            lines.append(f"    const {name}_v{2 * width} {nxt[-1]} = __builtin_shufflevector({chunks[j]}, "
                         f"{chunks[j + 1]}, {', '.join(map(str, range(2 * width)))});")
        chunks, width, level = nxt, 2 * width, level + 1
    spread = ", ".join(str(i % width) for i in range(vl))
    weights = ", ".join(str(i // lanes if i < width else 0) for i in range(vl))
    widths = [pack << i for i in range((vl // pack).bit_length())]  # the weight words doubled up to VL
    grow = "".join(f"\n    const {name}_v{2 * w} w{2 * w} = __builtin_shufflevector(w{w}, w{w}, "
                   f"{', '.join(map(str, range(2 * w)))});" for w in widths[:-1])
    types = "".join(f"typedef int32_t {name}_v{w} __attribute__((vector_size({4 * w}), aligned(4)));\n"
                    for w in sorted({lanes * 2 ** i for i in range(pack.bit_length())} | set(widths)))
    loads = ", ".join(f"c{j} = *(const {name}_v{lanes} *)(qb + r[{j}])" for j in range(pack))
    return f"""
{types}static inline vi {name}_pdot(vi acc, const uint8_t *restrict qb, const int32_t *restrict r) {{
    const {name}_v{lanes} {loads};
{chr(10).join(lines)}
    const vi x = __builtin_shufflevector({chunks[0]}, {chunks[0]}, {spread});
    const {name}_v{pack} w{pack} = *(const {name}_v{pack} *)(r + {pack});{grow}
    return ps_dot4(acc, x, ps_w4_vec(__builtin_shufflevector(w{vl}, w{vl}, {weights})));
}}"""


def _compaction(lout: ByteLayout, vl: int, lanes: int) -> list[tuple[int, list[int]]] | None:
    """How a small plane's quads are compacted: per slot of ``lanes`` positions without the halo
    columns (VL % W == 0: a vector stores whole rows), the first of the two consecutive vectors
    of the output's pitch it is selected from and the lanes of those two; None where a slot
    would need more than two."""
    if vl % lout.W:
        return None
    plan = []
    for j in range(-(-lout.H * lout.W // lanes)):
        pos = [min(q, lout.H * lout.W - 1) for q in range(j * lanes, (j + 1) * lanes)]  # past the plane: repeats
        flat = [q // lout.W * lout.ld + q % lout.W for q in pos]
        first = flat[0] // vl
        if flat[-1] // vl > first + 1:
            return None
        plan.append((first, [f - first * vl for f in flat]))
    return plan


def gen_conv(n, name: str, lin: ByteLayout, lout: ByteLayout, qp: dict, quads, *, vl: int, tile: int,
             band_bytes: int, threads: int) -> Int8Kernel:
    """A conv (groups 1) on quads (quads.py), in bands of output positions (q = ho * ld + wo)
    small enough that a band's quads stay in cache: lay out every quad in use for the band, then
    run every filter over it, ``tile`` vectors at a time, one dot product per kept quad and
    vector. With at least two bands per thread each thread takes whole bands (its own quads, no
    barrier); otherwise the team lays out each band together and splits the filters.

    Strided windows read phase planes of the output's pitch; a small plane's quads are compacted
    to whole rows without the halo, or, at most VL / 2 positions, packed several kernels to a
    vector (docs/COMPILER.md, int8 inference)."""
    a = n.attrs
    k, s, p = a["k"], a["stride"], a["padding"]
    w_q = n.params["w_q"]
    F, G = w_q.shape[0], len(quads.entries)
    flat = s == 1 and k == 2 * p + 1 and p <= lin.P and lin.ld == lout.ld
    inside = p <= lin.P and all(s * (o - 1) + k - 1 - p <= i - 1 + lin.P
                                for o, i in ((lout.H, lin.H), (lout.W, lin.W)))
    reach = (k - 1 + lin.P - p) // s  # how far past a position's row and column a phase-plane tap reads
    phases = not flat and inside and lout.W - 1 + reach < lout.ld
    nqf = round_up(lout.H * lout.ld, vl)  # positions of the output's pitch, whole vectors
    nqc = round_up(lout.H * lout.W, vl)  # the plane's positions without its halo columns
    fit = band_bytes // (4 * G * vl)  # vectors of positions whose quads fit the cache budget

    def bands(nq: int) -> tuple[int, int, int]:
        t = min(tile, nq // vl)  # a plane smaller than a tile is one tile: every dot loop unrolled
        band = min(nq, max(1, fit // t) * t * vl)
        return t, band, (nq + band - 1) // band

    # a plane of a few positions (at most VL / 2): each kernel's quads in a slot of a power of two
    # lanes, ``pack`` kernels of a filter in one vector, folded onto the first slot at the end
    lanes = 1 << (lout.H * lout.W - 1).bit_length()
    pack = min(vl // lanes, PACK)
    plan = _compaction(lout, vl, lanes) if (flat or phases) and pack >= 2 else None
    packed = plan is not None
    if not packed:  # a plane of one band whose halo columns cost a vector of dot products: its
        # quads compacted, whole rows per vector
        lanes = vl
        plan = _compaction(lout, vl, vl) if (flat or phases) and nqc < nqf and bands(nqc)[2] == 1 else None
    compact = plan is not None
    nq = lanes if packed else nqc if compact else nqf
    tile, band, nb = (1, lanes, 1) if packed else bands(nq)
    zp_in = qp[n.inputs[0]]["zero_point"]
    counts = sorted({tile, (nq - (nb - 1) * band) // vl % tile} - {0}, reverse=True)  # vectors per tile
    dots_call = " else ".join(f"if (nv == {c}) {name}_dots{c}(acc, qt, kern, kptr[f], kptr[f + 1], init);"
                              for c in counts)
    blob = Blob()
    o_ent = blob.add(quads.entries.reshape(-1))
    # per kernel (byte offset of its quads in a band, weight word): one stream for the dot loop;
    # packed, per ``pack`` kernels of a filter (their offsets, their words; missing ones weigh 0)
    kptr, kern = quads.kptr, np.stack([quads.group.astype(np.int64) * 4 * band, quads.word], axis=1)
    if packed:
        nk = np.diff(quads.kptr)
        kptr = np.concatenate([[0], np.cumsum(-(-nk // pack))]).astype(np.int32)
        f_of = np.repeat(np.arange(F), nk)
        j = np.arange(len(f_of)) - quads.kptr[f_of]
        rec = np.zeros((kptr[-1], 2, pack), np.int64)
        rec[kptr[f_of] + j // pack, :, j % pack] = kern
        kern = rec
    o_kptr, o_kern = blob.add(kptr.astype(np.int32)), blob.add(kern.astype(np.int32).reshape(-1))
    o_bias = blob.add(n.params["bias_q"].astype(np.int32))
    o_sumw = blob.add(w_q.reshape(F, -1).astype(np.int64).sum(axis=1).astype(np.int32))
    o_m = blob.add(n.params["m"].astype(np.float32))
    qbytes = 4 * band * G
    ph_at, pps = qbytes * max(1, threads), round_up(nqf + reach * (lout.ld + 1) + 1, 64)
    if phases:  # the input split into s * s phase planes of the output's pitch: then flat, as at stride 1
        def src_of(i: int) -> str:
            d, e = f"(e[{3 * i + 1}] + {lin.P - p})", f"(e[{3 * i + 2}] + {lin.P - p})"
            return (f"in + ((e[{3 * i}] * {s} + {d} % {s}) * {s} + {e} % {s}) * {pps} + {d} / {s} * {lout.ld} + "
                    f"{e} / {s} + q0")
        src = ", ".join(src_of(i) for i in range(4))
    elif flat:  # flat position q reads input q + a constant: four row loads per VL quads
        src = ", ".join(f"in + e[{3 * i}] * {lin.ps} + (e[{3 * i + 1}] + {lin.P - p}) * {lin.ld} + e[{3 * i + 2}] + "
                        f"{lin.P - p} + q0" for i in range(4))
    if compact:  # the quads of the output's pitch in registers, each compact vector one shuffle of two
        used = sorted({f + d for f, _ in plan for d in (0, 1)})
        vecs = "".join(f"\n        const vi f{v} = ps_quad_vec(s[0] + {v * vl}, s[1] + {v * vl}, s[2] + {v * vl}, "
                       f"s[3] + {v * vl});" for v in used)
        vt = f"{name}_v{lanes}" if packed else "vi"
        sel = "".join(f"\n        *({vt} *)(dst + {4 * lanes * j}) = __builtin_shufflevector(f{f}, f{f + 1}, "
                      f"{', '.join(map(str, idx))});" for j, (f, idx) in enumerate(plan))
        prep = f"const uint8_t *s[4] = {{{src}}};{vecs}{sel}"
    elif flat or phases:
        prep = f"ps_quads_flat(dst, {src}, nqb);"
    elif inside:  # every window inside the padded plane: each position's four codes gathered at its
        # window's corner + the entry's offset
        ho, wo = np.divmod(np.arange(nq), lout.ld)
        ok = (ho < lout.H) & (wo < lout.W)
        corner = np.where(ok, (s * ho - p + lin.P) * lin.ld + s * wo - p + lin.P, 0)
        o_corner = blob.add(corner.astype(np.int32))
        src = "".join(f"const uint8_t *s{i} = in + e[{3 * i}] * {lin.ps} + e[{3 * i + 1}] * {lin.ld} + e[{3 * i + 2}]; "
                      for i in range(4))
        prep = f"""{src}
            const int32_t *corner = (const int32_t *)(w + {o_corner}) + q0;
            for (int j = 0; j < nqb; j++) {{
                const int32_t o = corner[j];
                ((uint32_t *)dst)[j] = ((uint32_t)s0[o] | (uint32_t)s1[o] << 8 | (uint32_t)s2[o] << 16
                                        | (uint32_t)s3[o] << 24) ^ (uint32_t)PS_XMASK;
            }}"""
    else:  # a window may leave the padded plane (a 7x7 stem with padding 3): bounds-checked
        prep = f"""for (int q = q0; q < q0 + nqb; q++) {{
                const int ho = q / {lout.ld}, wo = q % {lout.ld};
                uint32_t word = {zp_in}u * 0x01010101u;
                if (ho < {lout.H} && wo < {lout.W})
                    for (int i = 0; i < 4; i++) {{
                        const int y = ho * {s} + e[3 * i + 1] - {p}, x = wo * {s} + e[3 * i + 2] - {p};
                        const uint32_t v = (y >= 0 && y < {lin.H} && x >= 0 && x < {lin.W})
                            ? in[e[3 * i] * {lin.ps} + (y + {lin.P}) * {lin.ld} + x + {lin.P}] : {zp_in}u;
                        word = (word & ~(255u << (8 * i))) | v << (8 * i);
                    }}
                ((uint32_t *)dst)[q - q0] = word ^ (uint32_t)PS_XMASK;
            }}"""
    store = _conv_store(n, qp, lout, compact)
    at = f"const size_t o = (size_t)f * {lout.ps} + {lout.origin} + q0 + t0 + i * VL;"
    if compact:
        at = (f"const int row0 = (q0 + t0 + i * VL) / {lout.W};\n                uint8_t cb[VL]{', rb[VL]' if n.residual is not None else ''};\n"
              f"                const size_t o = (size_t)f * {lout.ps} + {lout.origin} + (size_t)row0 * {lout.ld};")
    zp_out = qp[n.name]["zero_point"]
    phase_pass = ""
    if phases:  # each phase plane's rows: every s-th code of every s-th padded input row, the zero point past it
        phase_pass = f"""
    #pragma omp for schedule(static) nowait
    for (int cp = 0; cp < {lin.C * s * s}; cp++) {{
        const int a = cp / {s} % {s}, b = cp % {s}, jn = ({lin.ld} - b + {s - 1}) / {s} < {lout.ld} ? ({lin.ld} - b + {s - 1}) / {s} : {lout.ld};
        uint8_t *restrict d = scr + {ph_at} + (size_t)cp * {pps};
        for (int i = 0; i < {lout.H + reach}; i++, d += {lout.ld}) {{
            const int y = {s} * i + a;
            const uint8_t *r = in + (size_t)(cp / {s * s}) * {lin.ps} + y * {lin.ld} + b;
            int j = 0;
            if (y < {lin.H + 2 * lin.P}) for (; j < jn; j++) d[j] = r[{s} * j];
            for (; j < {lout.ld}; j++) d[j] = {zp_in};
        }}
    }}
    ps_barrier();
    in = scr + {ph_at};"""
    dots = dots_call
    if packed:  # pack kernels a vector, in CHAINS accumulators; their slots folded onto the first
        folds = "".join(f"\n            sum += __builtin_shufflevector(sum, sum, "
                        f"{', '.join(str((i + h) % vl) for i in range(vl))});"
                        for h in [lanes * pack >> b for b in range(1, pack.bit_length())])
        dots = f"""vi a[{CHAINS}];
            for (int u = 0; u < {CHAINS}; u++) a[u] = (vi){{0}};
            int kk = kptr[f];
            for (; kk + {CHAINS} <= kptr[f + 1]; kk += {CHAINS})
                for (int u = 0; u < {CHAINS}; u++) a[u] = {name}_pdot(a[u], qt, kern + {2 * pack} * (kk + u));
            for (; kk < kptr[f + 1]; kk++) a[0] = {name}_pdot(a[0], qt, kern + {2 * pack} * kk);
            vi sum = a[0];
            for (int u = 1; u < {CHAINS}; u++) sum += a[u];{folds}
            acc[0] = sum + init;"""
    helpers = _packed(name, lanes, pack, vl) if packed else "".join(_dots(name, c) for c in counts)
    code = helpers + f"""
/* lay out quads g0, g0 + gs, ... < {G} for positions q0 .. q0 + nqb into qb (4 * {band} bytes per quad) */
static inline void {name}_prep(const uint8_t *restrict in, const uint8_t *restrict w, const int32_t *ent,
                               uint8_t *restrict qb, int q0, int nqb, int g0, int gs) {{
    for (int g = g0; g < {G}; g += gs) {{
        const int32_t *e = ent + 12 * g;
        uint8_t *restrict dst = qb + (size_t)g * {4 * band};
        {prep}
    }}
}}
/* filters f0 .. f1 over positions q0 .. q0 + nqb from the band's quads qb */
static inline void {name}_run(const uint8_t *restrict qb, uint8_t *restrict out, const uint8_t *restrict w,
                              const uint8_t *restrict res, int q0, int nqb, int f0, int f1) {{
    const int32_t *kptr = (const int32_t *)(w + {o_kptr}), *kern = (const int32_t *)(w + {o_kern});
    const int32_t *bias = (const int32_t *)(w + {o_bias}), *sumw = (const int32_t *)(w + {o_sumw});
    const float *m = (const float *)(w + {o_m});
    for (int t0 = 0; t0 < nqb; t0 += {tile} * VL) {{
        const int nv = (nqb - t0 + VL - 1) / VL < {tile} ? (nqb - t0 + VL - 1) / VL : {tile};
        const uint8_t *qt = qb + 4 * t0;
        for (int f = f0; f < f1; f++) {{
            const int32_t init = bias[f] + (PS_XOFF - {zp_in}) * sumw[f];
            const float mf = m[f];
            vi acc[{tile}];
            {dots}
            for (int i = 0; i < nv; i++) {{
                {at}
                {store}
            }}
        }}
    }}
}}
static void {name}(const uint8_t *in, uint8_t *restrict out, const uint8_t *restrict w,
                   const uint8_t *restrict res, uint8_t *restrict scr) {{
    const int32_t *ent = (const int32_t *)(w + {o_ent}), *kptr = (const int32_t *)(w + {o_kptr});
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();{phase_pass}
    if ({nb} >= 2 * nt && nt <= {threads}) {{  /* whole bands per thread, each on its own quads */
        uint8_t *restrict qb = scr + (size_t)t * {qbytes};
        for (int b = t; b < {nb}; b += nt) {{
            const int q0 = b * {band}, nqb = {nq} - q0 < {band} ? {nq} - q0 : {band};
            {name}_prep(in, w, ent, qb, q0, nqb, 0, 1);
            {name}_run(qb, out, w, res, q0, nqb, 0, {F});
        }}
        ps_barrier();  /* every plane is complete before its halo is set */
        #pragma omp for schedule(static) nowait
        for (int f = 0; f < {F}; f++) ps_halo(out + (size_t)f * {lout.ps}, {lout.H}, {lout.W}, {lout.P}, {lout.ld}, {zp_out});
    }} else {{  /* the team lays out each band, then splits the filters */
        const int f0 = ps_split(kptr, {F}, t, nt), f1 = ps_split(kptr, {F}, t + 1, nt);
        for (int b = 0; b < {nb}; b++) {{
            const int q0 = b * {band}, nqb = {nq} - q0 < {band} ? {nq} - q0 : {band};
            {name}_prep(in, w, ent, scr, q0, nqb, t, nt);
            ps_barrier();
            {name}_run(scr, out, w, res, q0, nqb, f0, f1);
            if (b + 1 < {nb}) ps_barrier();
        }}
        for (int f = f0; f < f1; f++) ps_halo(out + (size_t)f * {lout.ps}, {lout.H}, {lout.W}, {lout.P}, {lout.ld}, {zp_out});
    }}
}}
"""
    flops = 2 * int(np.count_nonzero(w_q)) * lout.H * lout.W
    return Int8Kernel(name, code, blob.data(), flops, ph_at + (lin.C * s * s * pps if phases else 0))


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
    return Int8Kernel(name, code, blob.data(), 2 * F * IN, inp)


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
    return Int8Kernel(name, code, blob.data(), lin.C * lin.H * lin.W, 0)


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
