"""The x86-64 dialect (AVX-512 and AVX2 builds of one text).

The C selects its forms with the compiler's ISA macros, so one rendering serves both widths:
16 floats where ``-march`` enables AVX-512F, 8 with AVX, 4 otherwise. What it adds over the
portable dialect: max/min and masked loads/stores as single instructions, a two-shuffle stride-2
load on AVX2, a one-permute PC_SPREAD4, the ``pause`` spin hint, and PS_KEEP, which matters on
x86 only because its FMAs can take a memory operand (GCC folds a load into every FMA that uses
it otherwise).
"""

from __future__ import annotations

from .dialect import CDialect
from .generic import LOAD_S2 as GENERIC_LOAD_S2
from .generic import MASKED_IO as GENERIC_MASKED_IO
from .generic import MINMAX as GENERIC_MINMAX
from .generic import NO_KEEP, OPAQUE_ASM, even_c
from .generic import DOT4 as GENERIC_DOT4
from .generic import SPREAD4 as GENERIC_SPREAD4

PAUSE = r"""#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
"""

VECTOR_WIDTH = r"""#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
"""

MINMAX = r"""/* max/min as single instructions where the ISA has them (the generic select is compare + blend);
   both forms return b when a or b is NaN. PS_EMULATED_VL: tests build 16-lane code on a host without
   AVX-512 through GCC's generic vectors, so no AVX-512 intrinsics then. */
#if VL == 16 && defined(__AVX512F__) && !defined(PS_EMULATED_VL)
#include <immintrin.h>
static inline vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
static inline vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
#elif VL == 8 && defined(__AVX__)
#include <immintrin.h>
static inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
static inline vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
#else
""" + GENERIC_MINMAX + "#endif\n"

MASKED_IO = r"""#if VL == 16 && defined(__AVX512F__) && !defined(PS_EMULATED_VL)
static inline vf vload_lanes(const float *p, unsigned m) { return (vf)_mm512_maskz_loadu_ps((__mmask16)m, p); }
static inline void vstore_lanes(float *p, unsigned m, vf v) { _mm512_mask_storeu_ps(p, (__mmask16)m, (__m512)v); }
#elif VL == 8 && defined(__AVX__)
static inline __m256i ps_lanes8(unsigned m) {
    return (__m256i)(((vi){1, 2, 4, 8, 16, 32, 64, 128} & (vi){(int)m, (int)m, (int)m, (int)m,
                                                         (int)m, (int)m, (int)m, (int)m}) != 0);
}
static inline vf vload_lanes(const float *p, unsigned m) { return (vf)_mm256_maskload_ps(p, ps_lanes8(m)); }
static inline void vstore_lanes(float *p, unsigned m, vf v) { _mm256_maskstore_ps(p, ps_lanes8(m), (__m256)v); }
#else
""" + GENERIC_MASKED_IO + "#endif\n"

VREG_CONSTRAINT = "v"  # any of the 32 (AVX-512) or 16 vector registers

KEEP = r"""/* Pin a loaded vector in a register: without it GCC folds the load into every FMA that uses it,
   turning one load per input vector into MR loads (load-port bound, 2x slower on 3x3 convs).
   PS_EMULATED_VL (tests: 16-lane code built on a host without AVX-512, where a 64-byte vector
   fits no register) turns it off. */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(PS_EMULATED_VL)
#define PS_KEEP(v) __asm__("" : "+%s"(v))
#else
""" % VREG_CONSTRAINT + NO_KEEP + "#endif\n" + OPAQUE_ASM

LOAD_S2 = ("#if VL == 16\n" + even_c(16) + "#elif VL == 8\n" + even_c(8) + "#else\n"
           + even_c(4) + "#endif\n" + r"""#if VL == 8 && defined(__AVX2__)
#include <immintrin.h>
/* AVX2: in-lane vshufps then one cross-lane vpermpd (2 shuffles; the generic form costs 3) */
static inline vf ps_load_s2(const float *p) {
    __m256 e = _mm256_shuffle_ps((__m256)vload(p), (__m256)vload(p + VL), 0x88);
    return (vf)_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
}
#else
""" + GENERIC_LOAD_S2 + "#endif\n")

SPREAD4 = r"""#if VL == 16 && defined(__AVX512F__) && !defined(PS_EMULATED_VL)
#define PC_SPREAD4(p, ...) ((vf)_mm512_permutexvar_ps((__m512i)(vi){__VA_ARGS__}, \
                                                       _mm512_castps128_ps512(_mm_loadu_ps(p))))
#elif VL == 8 && defined(__AVX2__)
#define PC_SPREAD4(p, ...) ((vf)_mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), \
                                                          (__m256i)(vi){__VA_ARGS__}))
#else
""" + GENERIC_SPREAD4 + "#endif\n"

# int8 4-way dot product: VNNI's vpdpbusd (uint8 x int8, four products per int32 lane) is the
# whole operation. Without VNNI, vpmaddwd on the even and the odd bytes widened to 16 bits: exact.
# vpmaddubsw (uint8 x int8 pairs into int16) is not used, because two products of 255 * 127
# overflow int16 and it saturates.
DOT4 = r"""#include <immintrin.h>
#if VL == 16 && defined(__AVX512VNNI__) && !defined(PS_EMULATED_VL)
#define PS_XMASK 0
typedef vi ps_w4;
static inline ps_w4 ps_w4_vec(vi w) { return w; }
static inline vi ps_dot4(vi acc, vi x, ps_w4 w) {
    return (vi)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)x, (__m512i)w);
}
#elif VL == 8 && (defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__)))
#define PS_XMASK 0
typedef vi ps_w4;
static inline ps_w4 ps_w4_vec(vi w) { return w; }
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
static inline vi ps_dot4(vi acc, vi x, ps_w4 w) { return (vi)_mm256_dpbusd_epi32((__m256i)acc, (__m256i)x, (__m256i)w); }
#else
static inline vi ps_dot4(vi acc, vi x, ps_w4 w) { return (vi)_mm256_dpbusd_avx_epi32((__m256i)acc, (__m256i)x, (__m256i)w); }
#endif
#elif (VL == 16 && defined(__AVX512BW__) && !defined(PS_EMULATED_VL)) || (VL == 8 && defined(__AVX2__))
#define PS_XMASK 0
typedef struct { vi even, odd; } ps_w4;  /* the weights of bytes 0, 2 and 1, 3, sign-extended to 16 bits */
#if VL == 16
#define PS_MADD(a, b) ((vi)_mm512_madd_epi16((__m512i)(a), (__m512i)(b)))
#define PS_SLLI16(a, n) ((vi)_mm512_slli_epi16((__m512i)(a), n))
#define PS_SRAI16(a, n) ((vi)_mm512_srai_epi16((__m512i)(a), n))
#define PS_SRLI16(a, n) ((vi)_mm512_srli_epi16((__m512i)(a), n))
#else
#define PS_MADD(a, b) ((vi)_mm256_madd_epi16((__m256i)(a), (__m256i)(b)))
#define PS_SLLI16(a, n) ((vi)_mm256_slli_epi16((__m256i)(a), n))
#define PS_SRAI16(a, n) ((vi)_mm256_srai_epi16((__m256i)(a), n))
#define PS_SRLI16(a, n) ((vi)_mm256_srli_epi16((__m256i)(a), n))
#endif
static inline ps_w4 ps_w4_vec(vi v) {
    ps_w4 r = {PS_SRAI16(PS_SLLI16(v, 8), 8), PS_SRAI16(v, 8)};
    return r;
}
static inline vi ps_dot4(vi acc, vi x, ps_w4 w) {
    return acc + PS_MADD(x & 0x00FF00FF, w.even) + PS_MADD(PS_SRLI16(x, 8), w.odd);
}
#else
""" + GENERIC_DOT4 + "#endif\n"

DIALECT = CDialect(pause=PAUSE, vector_width=VECTOR_WIDTH, minmax=MINMAX, masked_io=MASKED_IO,
                   keep=KEEP, load_s2=LOAD_S2, spread4=SPREAD4, dot4=DOT4)
