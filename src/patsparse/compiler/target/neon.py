"""The aarch64 NEON dialect: 4-float vectors, 32 vector registers.

What differs from the portable forms: a deinterleaving load (``ld2``) reads a stride-2 vector
in one instruction, the spin hint is ``yield``, and PS_KEEP pins a vector with the ``w``
constraint. NEON's FMA takes no memory operand, so PS_KEEP only stops GCC from re-loading a
value it could keep; max/min stay compare + select (``fmax`` returns NaN for a NaN input, where
the kernels' epilogues promise the other operand).
"""

from __future__ import annotations

from .dialect import CDialect
from .generic import DOT4 as GENERIC_DOT4
from .generic import MASKED_IO, MINMAX, OPAQUE_ASM, SPREAD4

LANES = 4
VREG_CONSTRAINT = "w"

LOAD_S2 = r"""#include <arm_neon.h>
static inline vf ps_load_s2(const float *p) { return (vf)vld2q_f32(p).val[0]; }
"""

# int8 4-way dot product: ``sdot`` (ARMv8.2 dot product) multiplies signed bytes only, so the
# uint8 codes are laid out XOR 0x80 (code - 128 as int8) and the kernels add 128 * sum(w) back
# (PS_XMASK says so); without the extension, the portable form.
DOT4 = r"""#include <arm_neon.h>
#if defined(__ARM_FEATURE_DOTPROD)
#define PS_XMASK 0x80808080
typedef int8x16_t ps_w4;
static inline ps_w4 ps_w4_vec(vi w) { return vreinterpretq_s8_s32((int32x4_t)w); }
static inline vi ps_dot4(vi acc, vi x, ps_w4 w) {
    return (vi)vdotq_s32((int32x4_t)acc, vreinterpretq_s8_s32((int32x4_t)x), w);
}
#else
""" + GENERIC_DOT4 + "#endif\n"

DIALECT = CDialect(pause='    __asm__ __volatile__("yield");\n', vector_width=f"#define VL {LANES}\n",
                   minmax=MINMAX, masked_io=MASKED_IO,
                   keep='#define PS_KEEP(v) __asm__("" : "+%s"(v))\n' % VREG_CONSTRAINT + OPAQUE_ASM,
                   load_s2=LOAD_S2, spread4=SPREAD4, dot4=DOT4)
