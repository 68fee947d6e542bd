"""The contract between the graph compiler and every kernel generator.

A generator returns a ``GeneratedKernel``: C source defining one ``static void`` function with
the fixed signature below, a function that packs the layer's PyTorch weights into the order the
kernel reads, and its useful FLOP count (for GFLOP/s tables). Kernels process ONE image; the
entry point loops over the batch. Threads: each kernel parallelises itself with OpenMP.

Signature of every kernel function::

    static void NAME(const float *restrict in,    /* input, in its Layout            */
                     float *restrict out,         /* output, in its Layout           */
                     const float *restrict w,     /* packed weights (64-byte aligned) */
                     const float *restrict bias,  /* Cout floats (zeros if none)      */
                     const float *restrict res)   /* residual in the output Layout, or NULL */

Epilogue order: acc + bias (+ res) -> activation -> store. Memory rules (see layout.py): the
halo of every activation is zero and must stay zero, so a kernel writes only zeros outside the
interior (mask the tail vector of a row with ``vtailmask``); it may read up to VL-1 floats past
a row's interior. Every buffer has ``SLACK`` zero floats after its last plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SLACK = 64  # zero floats after every activation buffer, so vector over-reads stay inside it

ACTIVATIONS = ("none", "relu", "relu6")

# Portable vectors via GCC/Clang vector extensions: 16 floats with AVX-512, 8 with AVX/AVX2,
# 4 otherwise. Kernels are written once against VL and these helpers.
PRELUDE = r"""
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <math.h>
#include <omp.h>
#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
static inline vf vload(const float *p) { return *(const vfu *)p; }
static inline vf vloada(const float *p) { return *(const vf *)p; }
static inline void vstore(float *p, vf v) { *(vfu *)p = v; }
/* x - 0 is exact for every x (-0.0 included), so it folds to a plain broadcast; 0 + x does not */
static inline vf vbcast(float x) { return x - (vf){0}; }
static inline vf vselect(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
/* max/min as single instructions where the ISA has them (the generic select is compare + blend);
   both forms return b when a is NaN. PS_EMULATED_VL: tests build 16-lane code on a host without
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
static inline vf vmax(vf a, vf b) { return vselect(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return vselect(a < b, a, b); }
#endif
static inline vf vrelu(vf a) { return vmax(a, (vf){0}); }
static inline vf vrelu6(vf a) { return vmin(vmax(a, (vf){0}), vbcast(6.0f)); }
/* lanes [0, n) of all-ones, the rest zero: AND it into a row's last vector */
static inline vi vtailmask(int n) {
    vi m; for (int i = 0; i < VL; i++) m[i] = i < n ? -1 : 0; return m;
}
static inline vf vand(vf a, vi m) { return (vf)((vi)a & m); }
"""


def act_c(act: str, expr: str) -> str:
    """C expression applying ``act`` to vector expression ``expr``."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
    return {"none": expr, "relu": f"vrelu({expr})", "relu6": f"vrelu6({expr})"}[act]


def act_scalar_c(act: str, expr: str) -> str:
    """C expression applying ``act`` to scalar expression ``expr``."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
    return {"none": expr, "relu": f"fmaxf({expr}, 0.0f)",
            "relu6": f"fminf(fmaxf({expr}, 0.0f), 6.0f)"}[act]


@dataclass
class GeneratedKernel:
    """One generated kernel: its C function, how to pack its weights, and its useful FLOPs."""

    name: str
    code: str
    pack: Callable[[np.ndarray], np.ndarray]
    flops: int
    schedule: dict = field(default_factory=dict)
