"""The contract between the graph compiler and every kernel generator.

A generator returns a ``GeneratedKernel``: C source defining one ``static void`` function with
the fixed signature below, a function that packs the layer's PyTorch weights into the order the
kernel reads, and its useful FLOP count (for GFLOP/s tables). A kernel processes ONE image; the
entry point calls it once per image of a block. A *batched* kernel (``batched``) also defines
``NAME_nb(in, out, w, bias, res, int nb, ptrdiff_t is)``, which runs images 0..nb-1 in one
call, image b's tensors at ``b * is`` floats past the pointers given: its work pool spans the
images, so one weight panel serves them all (``NAME`` is ``NAME_nb`` with one image). Threads: every thread of the caller's team calls the kernel
(one OpenMP region per forward pass); a kernel splits its work and never opens a region.

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

from ..target import Target
from . import activations

SLACK = 64  # zero floats after every activation buffer, so vector over-reads stay inside it

# the activations every kernel test samples (each generator renders the whole family through
# act_c / act_scalar_c; activations.py)
ACTIVATIONS = ("none", "relu", "relu6")

# Portable vectors via GCC/Clang vector extensions, VL floats wide (the target's dialect defines
# VL and fills the /*@slot@*/ markers: target/dialect.py). Kernels are written once against VL
# and these helpers.
PRELUDE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <sched.h>
/* Teams. One OpenMP parallel region runs a whole forward pass (graph.py): every kernel is called
   by all threads of the team, splits its work with orphaned `omp for ... nowait` loops or by
   thread number, and ps_barrier() separates its phases (the caller puts one after each kernel).
   Why not OpenMP's own barriers and one region per kernel: with the default wait policy GNU
   OpenMP spins ~300K iterations before sleeping, so while another process holds a core a
   waiting thread burns whole time slices its descheduled partner needs (VGG-16 CIFAR: p90 276 ms
   against 13 ms), and with passive waits every region is a thread wake-up. This barrier spins
   briefly, then sleeps on a futex: a sleeping waiter leaves its core idle, so the scheduler can
   move the partner it waits for onto it (a yielding waiter keeps the core and the partner waits
   for the busy core's time slice to end).
   The ps_sync lives in the caller's workspace (one per calling thread), so concurrent forward
   passes never share one. It also owns the scratch arenas the team's kernels use: arena[0] the
   team's shared scratch, arena[1 + t] thread t's own; ps_release frees them with the workspace.
   (Per-library pthread keys ran out after ~500 libraries in one process: 2 of 1024 per library.)
   Solo fallback: when the threads of PS_STALLS calls in a row spent over a quarter of their time
   asleep at barriers waiting for a partner (another process holds a core; the call's first
   barrier, the team's wake-up, does not count), calls run on one thread for the next `backoff`
   milliseconds (doubling while the team keeps stalling, halved after PS_CLEAN team calls in a
   row without a stall): one thread on the free core beats a team that waits for a time slice at
   every barrier, and every stalled team call is a latency outlier. The spell is wall time, not
   a number of calls, because the busy core is: counted in calls, a caller that calls seldom (a
   benchmark alternating engines, a slow video loop) stayed on one thread long after the other
   process had gone. Once one-thread calls have been timed, a stall counts only while team calls
   run slower on average than one thread (`team_s`, `solo_s`: running means of seconds per
   image): on a machine loaded by several processes the team stalls at barriers yet gets two
   cores' time slices, and one thread, one core's share, ran 1.5-2x slower. */
typedef struct { float *p; size_t n; } ps_arena_t;
typedef struct {
    atomic_uint count, gen, sleepers;  /* barrier: arrivals, generation, waiters asleep on gen */
    atomic_uint slept_us;              /* this call's microseconds asleep at barriers, all threads */
    float *scr;                        /* the team's shared scratch, handed out by thread 0 */
    ps_arena_t *arena;                 /* [0] team scratch, [1 + t] thread t's own */
    double solo_until;                 /* omp_get_wtime() before which calls run on one thread */
    float solo_s, team_s;              /* seconds per image of one-thread and team calls, running
                                          means (0: none yet) */
    int narena;
    unsigned backoff, clean;           /* the last fallback's milliseconds; team calls since the
                                          last stall */
    unsigned stalls;                   /* team calls in a row that stalled */
} ps_sync;
_Static_assert(sizeof(ps_sync) <= 64, "ps_sync must fit the 64 bytes the workspace reserves");
static __thread ps_sync *ps_team_sync;
static __thread int ps_team_nt;
static inline void ps_team_enter(ps_sync *s) { ps_team_sync = s; ps_team_nt = omp_get_num_threads(); }
static inline void ps_team_leave(void) { ps_team_sync = 0; ps_team_nt = 0; }
#ifndef PS_SPIN
#define PS_SPIN 4000
#endif
#ifndef PS_SOLO_MIN_MS
#define PS_SOLO_MIN_MS 100
#endif
#ifndef PS_SOLO_MAX_MS
#define PS_SOLO_MAX_MS 2000
#endif
#ifndef PS_CLEAN
#define PS_CLEAN 64
#endif
#ifndef PS_STALLS
#define PS_STALLS 3
#endif
static inline void ps_pause(void) {
/*@pause@*/
}
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
static inline void ps_sleep_while(atomic_uint *a, unsigned v) {
    while (atomic_load_explicit(a, memory_order_seq_cst) == v)
        syscall(SYS_futex, (unsigned *)a, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}
static inline void ps_wake_all(atomic_uint *a) { syscall(SYS_futex, (unsigned *)a, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0); }
#else
static inline void ps_sleep_while(atomic_uint *a, unsigned v) {
    while (atomic_load_explicit(a, memory_order_seq_cst) == v) sched_yield();
}
static inline void ps_wake_all(atomic_uint *a) { (void)a; }
#endif
/* `record`: add the time asleep to slept_us. The first barrier of a call does not: waiting there
   is the team's wake-up after an idle spell (the OS parks idle threads; a VM may halt their vCPU),
   a cost of calling after a pause that one thread would not avoid, not contention. */
static void ps_barrier_ex(int record) {
    ps_sync *s = ps_team_sync;
    if (!s || ps_team_nt <= 1) return;
    const unsigned g = atomic_load_explicit(&s->gen, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&s->count, 1, memory_order_acq_rel) == (unsigned)ps_team_nt - 1) {
        atomic_store_explicit(&s->count, 0, memory_order_relaxed);
        atomic_store_explicit(&s->gen, g + 1, memory_order_seq_cst);
        if (atomic_load_explicit(&s->sleepers, memory_order_seq_cst)) ps_wake_all(&s->gen);
        return;
    }
    for (unsigned i = 0; i < PS_SPIN; i++) {
        if (atomic_load_explicit(&s->gen, memory_order_acquire) != g) return;
        ps_pause();
    }
    const double t0 = omp_get_wtime();
    atomic_fetch_add_explicit(&s->sleepers, 1, memory_order_seq_cst);
    ps_sleep_while(&s->gen, g);
    atomic_fetch_sub_explicit(&s->sleepers, 1, memory_order_relaxed);
    if (record)
        atomic_fetch_add_explicit(&s->slept_us, (unsigned)((omp_get_wtime() - t0) * 1e6), memory_order_relaxed);
}
static inline void ps_barrier(void) { ps_barrier_ex(1); }
static void ps_oom(const char *who, size_t bytes) {
    fprintf(stderr, "patsparse: kernel %s could not allocate %zu bytes of scratch\n", who, bytes);
    abort();
}
/* arena[0 .. nt] exist (call before the team starts, at `now` = omp_get_wtime()); returns the
   team size to use */
static int ps_team_prepare(ps_sync *s, int nt, double now) {
    if (nt > 1 && now < s->solo_until) nt = 1;
    if (s->narena < nt + 1) {
        ps_arena_t *a = realloc(s->arena, (size_t)(nt + 1) * sizeof *a);
        if (!a) ps_oom("team", (size_t)(nt + 1) * sizeof *a);
        memset(a + s->narena, 0, (size_t)(nt + 1 - s->narena) * sizeof *a);
        s->arena = a;
        s->narena = nt + 1;
    }
    atomic_store_explicit(&s->slept_us, 0, memory_order_relaxed);
    return nt;
}
/* after a call of `images` images from `start` (the team awake) to `end` (omp_get_wtime()) on
   `nt` threads: fall back to one thread if the team kept stalling */
static void ps_team_adapt(ps_sync *s, int nt, double start, double end, int images) {
    const float per = (float)((end - start) / (images > 0 ? images : 1));
    if (nt <= 1) {
        s->solo_s = s->solo_s > 0 ? 0.75f * s->solo_s + 0.25f * per : per;
        return;
    }
    s->team_s = s->team_s > 0 ? 0.875f * s->team_s + 0.125f * per : per;
    if (atomic_load_explicit(&s->slept_us, memory_order_relaxed) * 1e-6 > 0.25 * (end - start) * nt &&
        !(s->solo_s > 0 && s->team_s <= s->solo_s)) {
        /* a first fallback needs PS_STALLS stalled calls in a row (one stall is a hiccup, not a
           busy core); once the team has fallen back, one stalled probe is enough */
        if (++s->stalls < PS_STALLS && !s->backoff) return;
        s->backoff = s->backoff ? (2 * s->backoff < PS_SOLO_MAX_MS ? 2 * s->backoff : PS_SOLO_MAX_MS)
                                : PS_SOLO_MIN_MS;
        s->solo_until = end + 1e-3 * s->backoff;
        s->clean = 0;
        s->stalls = 0;
    } else {
        s->stalls = 0;
        if (++s->clean >= PS_CLEAN) {
            s->backoff /= 2;
            s->clean = 0;
        }
    }
}
/* A forward pass's team, the same in every entry point: ps_forward_team sizes it (nthreads <= 0:
   OpenMP's default) and starts the clock in *woke; ps_block_start is the barrier before each
   block of images, whose first is the team's wake-up (not contention: unrecorded), after which
   the clock restarts, so ps_team_adapt times the work alone. */
static inline int ps_forward_team(ps_sync *s, int nthreads, double *woke) {
    *woke = omp_get_wtime();
    return ps_team_prepare(s, nthreads > 0 ? nthreads : omp_get_max_threads(), *woke);
}
static inline void ps_block_start(int first, double *woke) {
    ps_barrier_ex(!first);
    if (first && omp_get_thread_num() == 0) *woke = omp_get_wtime();
}
static void ps_team_release(ps_sync *s) {
    for (int i = 0; i < s->narena; i++) free(s->arena[i].p);
    free(s->arena);
    s->arena = 0;
    s->narena = 0;
}
/* at least nfloats of 64-byte-aligned scratch from arena a (grown, contents dropped, if short) */
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
/* a kernel called outside any team (a test calling it directly) takes its calling thread's own
   state; its arenas last as long as the process */
static __thread ps_sync ps_lone_sync;
static ps_sync *ps_lone(void) {
    if (ps_lone_sync.narena < 2) ps_team_prepare(&ps_lone_sync, 1, 0.0);
    return &ps_lone_sync;
}
/* inside a team: thread 0 sizes the team arena, every thread gets the same pointer */
static float *ps_team_scratch(size_t nfloats, const char *who) {
    ps_sync *s = ps_team_sync;
    if (!s) return ps_arena(&ps_lone()->arena[0], nfloats, who);
    if (ps_team_nt <= 1) return ps_arena(&s->arena[0], nfloats, who);
    if (omp_get_thread_num() == 0) s->scr = ps_arena(&s->arena[0], nfloats, who);
    ps_barrier();
    return s->scr;
}
#define PS_SCRATCH(var, nfloats, who) float *var = ps_team_scratch((nfloats), (who))
static inline ps_arena_t *ps_private_arena(void) {
    return ps_team_sync ? &ps_team_sync->arena[1 + omp_get_thread_num()] : &ps_lone()->arena[1];
}
#define PS_PRIVATE(var, nfloats, who) float *var = ps_arena(ps_private_arena(), (nfloats), (who))
/* Run `call` `reps` times in a team of its own, a barrier after each (single-kernel tests, tuner) */
#define PS_TEAM_LOOP(reps, call) do { \
    ps_sync ps_sync_ = {0}; \
    ps_team_prepare(&ps_sync_, omp_get_max_threads(), 0.0); \
    _Pragma("omp parallel") { \
        ps_team_enter(&ps_sync_); \
        for (int ps_r_ = 0; ps_r_ < (reps); ps_r_++) { call; ps_barrier(); } \
        ps_team_leave(); \
    } \
    ps_team_release(&ps_sync_); \
} while (0)
/*@vector_width@*/
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
static inline vf vload(const float *p) { return *(const vfu *)p; }
static inline vf vloada(const float *p) { return *(const vf *)p; }
static inline void vstore(float *p, vf v) { *(vfu *)p = v; }
/* x - 0 is exact for every x (-0.0 included), so it folds to a plain broadcast; 0 + x does not */
static inline vf vbcast(float x) { return x - (vf){0}; }
static inline vf vselect(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
/*@minmax@*/
/* ReLU / ReLU6 exactly as PyTorch's: NaN stays NaN and -0.0 stays -0.0, so the input goes
   second (every dialect's vmax/vmin returns b when either is NaN, and b when both are zeros) */
static inline vf vrelu(vf a) { return vmax((vf){0}, a); }
static inline vf vrelu6(vf a) { return vmin(vbcast(6.0f), vmax((vf){0}, a)); }
/* max that keeps a NaN from either operand, as PyTorch's max pooling does (vmax keeps b's only) */
static inline vf vmax_nan(vf a, vf b) { return vselect(a != a, a, vmax(a, b)); }
/* scalar forms for per-element epilogues: fmaxf is a libm call per element unless NaN rules are
   relaxed (GCC keeps its NaN semantics), 3x the whole cost of a 1x1 conv's scatter; the same
   NaN and -0.0 results as the vector forms */
static inline float srelu(float a) { return a < 0.0f ? 0.0f : a; }
static inline float srelu6(float a) { return a < 0.0f ? 0.0f : (a > 6.0f ? 6.0f : a); }
/* lanes [0, n) of all-ones, the rest zero: AND it into a row's last vector */
static inline vi vtailmask(int n) {
    vi m; for (int i = 0; i < VL; i++) m[i] = i < n ? -1 : 0; return m;
}
static inline vf vand(vf a, vi m) { return (vf)((vi)a & m); }
/* load / store only the lanes set in bit mask m (bit l: lane l); the other lanes' addresses
   are never touched, so a vector may straddle the start or end of a row it writes part of */
/*@masked_io@*/
"""


BATCHED_PARAMS = ", int nb, ptrdiff_t is"  # what NAME_nb takes after the fixed five


def single_image_c(name: str) -> str:
    """The C of a batched kernel's one-image form ``name`` (tests and the tuner call it)."""
    return (f"static __attribute__((unused)) void {name}(const float *restrict in, float *restrict out,\n"
            f"    const float *restrict w, const float *restrict bias, const float *restrict res) {{\n"
            f"    {name}_nb(in, out, w, bias, res, 1, 0);\n}}\n")


def prelude_c(target: Target) -> str:
    """The C every generated source starts with, rendered for ``target``."""
    return target.render(PRELUDE) + activations.HELPERS


def act_c(act: str, expr: str) -> str:
    """C expression applying ``act`` (activations.py: any of the family) to vector expression ``expr``."""
    return activations.vector_c(act, expr)


def act_scalar_c(act: str, expr: str) -> str:
    """C expression applying ``act`` to scalar expression ``expr``."""
    return activations.scalar_c(act, expr)


@dataclass
class GeneratedKernel:
    """One generated kernel: its C function, how to pack its weights, and its useful FLOPs."""

    name: str
    code: str
    pack: Callable[[np.ndarray], np.ndarray]
    flops: int
    schedule: dict = field(default_factory=dict)
    target: Target | None = None  # what the code was rendered for (KernelRunner builds for it)
    batched: bool = False  # the code also defines NAME_nb (module docstring)

    @property
    def team_free(self) -> bool:
        """Whether calls on different images may follow each other without a barrier: the
        kernel shares no scratch with its team (PS_SCRATCH) and has no barrier of its own, so
        a thread's share of one image never waits on, nor overwrites, another's. (A kernel
        whose code mentions either is assumed to need the barrier.)"""
        return "PS_SCRATCH(" not in self.code and "ps_barrier(" not in self.code
