"""Small pieces every dense generator shares: argument checks, C helpers, the loop-order choice.

The C helpers sit behind an include guard because the compiler concatenates many kernels into
one translation unit; each kernel's code carries the guarded block so it also builds alone.
"""

from __future__ import annotations

import re

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout
from ..target import Target
from . import activations

MAX_VL = 16  # widest vector any target uses; Python-side sizes that must fit every VL use it
# How far ahead (in floats: 4 KB) a kernel that streams its weights once per image prefetches them:
# the channel-major pattern layout and the implicit GEMM on small planes consume weights faster
# than the hardware prefetcher follows (docs/COMPILER.md); 4-32 KB measured alike, 1 KB no gain.
WEIGHT_PREFETCH = 1024

# The C load of one input vector whose columns are ``step`` apart (ps_load_s2: the target's dialect).
VECTOR_LOAD = {1: "vload", 2: "ps_load_s2"}


def ring_rows_c(out_row: str, stride: int, pad: int, k: int, n: int) -> list[str]:
    """C opening the loop over the rows a ring kernel must compute before output row
    ``out_row``: its window [r0, r1) of the ``n`` input rows (clipped at the edges), minus the
    rows below ``done`` already in the ring. The caller declares ``int done = 0`` before its
    output-row loop, sets ``done = r1`` after this loop, and writes the loop body (conv_pool.py
    and pw_dw.py: each row is computed once, rows shared with the previous window stay)."""
    lo = f"{out_row} * {stride} - {pad}"
    return [f"const int r0 = {lo} > 0 ? {lo} : 0;",
            f"const int r1 = {lo} + {k} < {n} ? {lo} + {k} : {n};",
            "for (int r = r0 > done ? r0 : done; r < r1; r++)"]


# PS_KEEP (pin a loaded vector in a register) and ps_load_s2 (lanes 0, 2, 4, ... of p[0 .. 2*VL):
# one stride-2 vector) come from the target's dialect (target/dialect.py).
# PS_SCRATCH: scratch that lives as long as the calling thread (kernels are called from several
# threads at once, and malloc/free per call would fault fresh pages in on every call); one arena
# per calling thread serves all kernels of a library, shared with that call's team.
# PS_PRIVATE: a team thread's own scratch (partial tiles, conv rings), from an arena of its own
# that the thread allocated and touched itself, at the same address in every kernel. Carved out
# of the shared arena instead, thread 1's part of one layer was thread 0's part of another, so
# every layer moved those lines from one core's cache to the other's.
HELPERS = r"""
#ifndef PATSPARSE_DENSE_HELPERS
#define PATSPARSE_DENSE_HELPERS
#include <stdlib.h>
#include <stdio.h>
#include <pthread.h>
/*@keep@*/
/*@load_s2@*/
/* Per-thread scratch arenas shared by every kernel of the library (kernels run one after
   another on the calling thread, so the largest request sizes each). Two per thread: the team
   arena (a calling thread's, shared with its team) and the private one (a thread's own).
   They hang off a thread-local pointer; one pthread key per library only frees them when the
   thread exits. Keys are few per process (PTHREAD_KEYS_MAX, 1024 with glibc) and a library
   loaded by ctypes is never unloaded, so a process that loads about a thousand models has none
   left: the arenas then still work, and a thread's are reclaimed when the process ends. (A failed
   key creation leaves the key variable 0, which another library owns: it is never used then.)
   Unloading the library deletes its key, so no destructor runs in unmapped code. */
typedef struct { float *p; size_t n; } ps_arena_t;
typedef struct { ps_arena_t team, priv; } ps_arenas_t;
static __thread ps_arenas_t *ps_arenas;
static pthread_key_t ps_arena_key;
static int ps_arena_keyed;
static pthread_once_t ps_arena_once = PTHREAD_ONCE_INIT;
static void ps_arenas_free(void *v) {
    ps_arenas_t *t = v;
    if (t) { free(t->team.p); free(t->priv.p); free(t); }
}
static void ps_arena_init(void) { ps_arena_keyed = pthread_key_create(&ps_arena_key, ps_arenas_free) == 0; }
__attribute__((destructor)) static void ps_arena_fini(void) {
    if (ps_arena_keyed) pthread_key_delete(ps_arena_key);
}
static void ps_oom(const char *who, size_t bytes) {
    fprintf(stderr, "patsparse: kernel %s could not allocate %zu bytes of scratch\n", who, bytes);
    abort();
}
static ps_arenas_t *ps_thread_arenas(const char *who) {
    if (!ps_arenas) {
        pthread_once(&ps_arena_once, ps_arena_init);
        if (!(ps_arenas = calloc(1, sizeof *ps_arenas))) ps_oom(who, sizeof *ps_arenas);
        if (ps_arena_keyed) pthread_setspecific(ps_arena_key, ps_arenas);
    }
    return ps_arenas;
}
static float *ps_arena(ps_arena_t *a, size_t nfloats, const char *who) {
    if (a->n < nfloats) {
        size_t bytes = (nfloats * sizeof(float) + 63) / 64 * 64;
        free(a->p);
        a->n = 0;
        if (!(a->p = aligned_alloc(64, bytes))) ps_oom(who, bytes);
        a->n = bytes / sizeof(float);
    }
    return a->p;
}
/* inside a team: the calling thread's (thread 0's) arena, shared with the team */
static float *ps_team_scratch(size_t nfloats, const char *who) {
    ps_sync *s = ps_team_sync;
    if (!s || ps_team_nt <= 1) return ps_arena(&ps_thread_arenas(who)->team, nfloats, who);
    if (omp_get_thread_num() == 0) s->scr = ps_arena(&ps_thread_arenas(who)->team, nfloats, who);
    ps_barrier();
    return s->scr;
}
#define PS_SCRATCH(var, nfloats, who) float *var = ps_team_scratch((nfloats), (who))
#define PS_PRIVATE(var, nfloats, who) float *var = ps_arena(&ps_thread_arenas(who)->priv, (nfloats), (who))
#endif
"""

def helpers_c(target: Target) -> str:
    """The guarded helper block every dense kernel's code carries, rendered for ``target``."""
    return target.render(HELPERS)


_C_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(name: str) -> None:
    """Kernel names go straight into C source: accept only plain identifiers."""
    if not isinstance(name, str) or not _C_IDENT.match(name):
        raise InputError(f"kernel name {name!r} is not a safe C identifier")


def check_act(act: str, where: str) -> None:
    try:
        activations.parse(act)
    except UnsupportedError as e:
        raise UnsupportedError(f"{where}: {e}") from None


def conv_out_size(size: int, k: int, stride: int, pad: int, where: str) -> int:
    """PyTorch's output size (floor mode); an InputError when the window does not fit."""
    out = (size + 2 * pad - k) // stride + 1
    if out < 1:
        raise InputError(f"{where}: input size {size} with kernel {k}, stride {stride}, padding "
                         f"{pad} gives an empty output")
    return out


def check_layout_types(where: str, in_layout: Layout, out_layout: Layout) -> None:
    for label, lay in (("in_layout", in_layout), ("out_layout", out_layout)):
        if not isinstance(lay, Layout):
            raise InputError(f"{where}: {label} must be a Layout, got {type(lay).__name__}")


def check_layouts(where: str, in_layout: Layout, out_layout: Layout,
                  expect_in: tuple[int, int, int], expect_out: tuple[int, int, int]) -> None:
    """Both layouts must describe the shapes the op implies; the message shows which differs."""
    check_layout_types(where, in_layout, out_layout)
    for label, lay, exp in (("in_layout", in_layout, expect_in), ("out_layout", out_layout, expect_out)):
        if (lay.C, lay.H, lay.W) != exp:
            raise InputError(f"{where}: {label} is (C, H, W) = {(lay.C, lay.H, lay.W)}, "
                             f"expected {exp}")


def check_positive(where: str, **values: int) -> None:
    for key, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise InputError(f"{where}: {key} must be a positive integer, got {v!r}")


def check_weight(weight: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The layer's weight as float32 of exactly ``shape`` (what a pack function accepts)."""
    w = np.asarray(weight, dtype=np.float32)
    if w.shape != tuple(shape):
        raise InputError(f"kernel {name}: weight of shape {w.shape}, expected {tuple(shape)}")
    if not np.isfinite(w).all():
        raise InputError(f"kernel {name}: weight has non-finite values")
    return w


def loop_order(*, cin: int, kk: int, cout_pad: int, mr: int, npt: int, src_floats: int,
               out_floats: int, l2_bytes: int) -> str:
    """Which operand a thread re-streams: 'pix' walks pixel tiles outside (all weights are read
    again for every pixel tile, and each tile's stores hop across all Cout planes), 'co' walks
    channel tiles outside (the input is read again for every channel tile, stores stay in MR
    planes). Measured on AVX2, one thread, cold caches: 'co' wins whenever the output is large
    (16->96 1x1 at 112x112: 47 against 29 GF/s; VGG conv1 at 224: 57 against 27; the plane-hopping
    stores miss the TLB) and on 7x7 planes with big weights (960->320: 52 against 44); 'pix'
    only wins, slightly, for small outputs whose input overflows L2 while the weights fit
    (576->96 at 14x14: 48 against 46). So: 'co' unless the output is small (<= 1 MB) and the
    input re-stream costs more than the weight re-stream, counting a re-stream that stays in
    L2 (``l2_bytes``, the target's) as a third of one that spills."""

    def cost(times: int, nbytes: int) -> float:
        return times * nbytes * (1 if nbytes <= l2_bytes else 3)

    if out_floats * 4 > 1024 * 1024:
        return "co"
    weights = cout_pad * cin * kk * 4
    return "co" if cost(cout_pad // mr, src_floats * 4) < cost(npt, weights) else "pix"
