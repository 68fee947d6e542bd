"""The aarch64 NEON dialect: 4-float vectors, 32 vector registers.

What differs from the portable forms: a deinterleaving load (``ld2``) reads a stride-2 vector
in one instruction, the spin hint is ``yield``, and PS_KEEP pins a vector with the ``w``
constraint. NEON's FMA takes no memory operand, so PS_KEEP only stops GCC from re-loading a
value it could keep; max/min stay compare + select (``fmax`` returns NaN for a NaN input, where
the kernels' epilogues promise the other operand).
"""

from __future__ import annotations

from .dialect import CDialect
from .generic import MASKED_IO, MINMAX, SPREAD4

LANES = 4
VREG_CONSTRAINT = "w"

LOAD_S2 = r"""#include <arm_neon.h>
static inline vf ps_load_s2(const float *p) { return (vf)vld2q_f32(p).val[0]; }
"""

DIALECT = CDialect(pause='    __asm__ __volatile__("yield");\n', vector_width=f"#define VL {LANES}\n",
                   minmax=MINMAX, masked_io=MASKED_IO,
                   keep='#define PS_KEEP(v) __asm__("" : "+%s"(v))\n' % VREG_CONSTRAINT,
                   load_s2=LOAD_S2, spread4=SPREAD4)
