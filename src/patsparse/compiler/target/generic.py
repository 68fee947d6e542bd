"""The portable dialect: GCC/Clang vector extensions only, no intrinsics, no inline asm.

Why it exists: any C11 compiler with vector extensions builds it, on any CPU (GCC lowers the
vectors to what the target has, or to scalar code), so it is the fallback for an unknown
machine and the way to build code of any vector width on any host. The other dialects reuse
its forms where their ISA has nothing better.
"""

from __future__ import annotations

from .dialect import CDialect

# max/min as compare + select; return b when a is NaN, like the x86 instructions
MINMAX = r"""static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vselect(a < b, a, b); }
"""

MASKED_IO = r"""static inline vf vload_lanes(const float *p, unsigned m) {
    vf v = {0}; for (int i = 0; i < VL; i++) if (m >> i & 1u) v[i] = p[i]; return v;
}
static inline void vstore_lanes(float *p, unsigned m, vf v) {
    for (int i = 0; i < VL; i++) if (m >> i & 1u) p[i] = v[i];
}
"""

NO_KEEP = "#define PS_KEEP(v) ((void)0)\n"
# PS_OPAQUE(p): the pointer p as if changed here, so loads through it stay where they are (a
# kernel whose loop-invariant loads gcc would otherwise hoist and spill). The targets with gcc
# and a register constraint use the asm; the portable dialect makes it a no-op.
OPAQUE_ASM = '#define PS_OPAQUE(p) __asm__("" : "+r"(p))\n'
NO_OPAQUE = "#define PS_OPAQUE(p) ((void)0)\n"

LOAD_S2 = r"""static inline vf ps_load_s2(const float *p) {
    return __builtin_shuffle(vload(p), vload(p + VL), PS_EVEN);
}
"""

# lane i of PS_EVEN: 2 * i (ps_load_s2's shuffle), one definition per vector width
EVEN = {16: "#define PS_EVEN (vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}\n",
        8: "#define PS_EVEN (vi){0, 2, 4, 6, 8, 10, 12, 14}\n",
        4: "#define PS_EVEN (vi){0, 2, 4, 6}\n"}

SPREAD4 = "#define PC_SPREAD4(p, ...) __builtin_shufflevector(pc_load4(p), pc_load4(p), __VA_ARGS__)\n"


def even_c(lanes: int) -> str:
    """PS_EVEN for ``lanes``-float vectors."""
    return EVEN.get(lanes) or f"#define PS_EVEN (vi){{{', '.join(str(2 * i) for i in range(lanes))}}}\n"


def dialect(lanes: int) -> CDialect:
    """The portable dialect at a fixed width of ``lanes`` floats."""
    return CDialect(pause="", vector_width=f"#define VL {lanes}\n", minmax=MINMAX, masked_io=MASKED_IO,
                    keep=NO_KEEP + NO_OPAQUE, load_s2=even_c(lanes) + LOAD_S2, spread4=SPREAD4, dot4=DOT4)

# int8 4-way dot product (compiler/int8): each int32 lane of x holds four uint8 codes, w four
# int8 weights; ps_dot4 adds their four products to the lane, exactly. ps_w4_vec takes one weight
# word per lane (a broadcast, or several kernels packed in a vector). PS_XMASK is XORed into
# the codes when they are laid out (0 here: the codes stay unsigned).
DOT4 = r"""#define PS_XMASK 0
typedef struct { vi w0, w1, w2, w3; } ps_w4;
static inline ps_w4 ps_w4_vec(vi w) {
    ps_w4 r = {((w & 255) ^ 128) - 128, ((w >> 8 & 255) ^ 128) - 128, ((w >> 16 & 255) ^ 128) - 128, w >> 24};
    return r;
}
static inline vi ps_dot4(vi acc, vi x, ps_w4 w) {
    return acc + (x & 255) * w.w0 + ((x >> 8) & 255) * w.w1 + ((x >> 16) & 255) * w.w2 + ((x >> 24) & 255) * w.w3;
}
"""
