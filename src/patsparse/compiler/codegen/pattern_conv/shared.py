"""What every layout of the pattern conv shares: the conv's checked geometry, the head of a
kernel's source, the FKW1 pointer prologue, the channel prefetch, and the C support code every
pattern layer relies on (emitted once per source)."""

from __future__ import annotations

from dataclasses import dataclass

from ....errors import InputError, UnsupportedError
from ...layout import Layout
from ...target import Target
from ..base import BATCHED_PARAMS
from ..common import helpers_c


def fkw_sections(o: dict) -> list[str]:
    """C pointers to the FKW1 sections of a layer packed at ``w`` (offsets ``o`` in floats)."""
    return ["    const int32_t *restrict wi = (const int32_t *)w;",
            *(f"    const int32_t *restrict {k} = wi + {o[k]};" for k in ("perm", "runs", "cost", "wptr")),
            f"    const uint16_t *restrict cidx = (const uint16_t *)(wi + {o['cidx']});",
            f"    const float *restrict wts = w + {o['weights']};"]


def fkw_prologue(name: str, o: dict, batched: bool = False) -> list[str]:
    """The kernel's signature and the pointers to its FKW1 sections (offsets ``o`` in floats);
    ``batched``: the signature of ``name``'s batched form (base.GeneratedKernel)."""
    return [f"static void {name}{'_nb' if batched else ''}(const float *restrict in, float *restrict out,",
            "    const float *restrict w, const float *restrict bias, const float *restrict res"
            f"{BATCHED_PARAMS if batched else ''}) {{",
            *fkw_sections(o),
            "    (void)res;"]


def header(name: str, sh: "ConvShape", lay, target: Target, what: str) -> list[str]:
    """The head of every layout's source: shared helpers, what the kernel is, the width check."""
    vl = target.require_cpu(name).lanes
    return [helpers_c(target),
            f"/* ---- {name}: pattern conv 3x3/{sh.stride} pad {sh.pad}, {sh.inp.C}->{sh.out.C} ch, "
            f"{sh.inp.H}x{sh.inp.W} -> {sh.out.H}x{sh.out.W}, {lay.P} masks, {lay.K} kernels, {what} */",
            f'_Static_assert(VL == {vl}, "{name} was generated for {vl}-float vectors; '
            f'regenerate it on this machine");']


@dataclass(frozen=True)
class ConvShape:
    """Geometry of one 3x3 conv, checked against the layouts it reads and writes."""

    stride: int
    pad: int
    inp: Layout
    out: Layout

    @staticmethod
    def check(weight_shape: tuple, stride: int, pad: int, inp: Layout, out: Layout, where: str) -> "ConvShape":
        F, C = weight_shape[:2]
        if stride not in (1, 2):
            raise UnsupportedError(f"{where}: pattern conv supports stride 1 or 2, not {stride}")
        if inp.C != C or out.C != F:
            raise InputError(f"{where}: weight {tuple(weight_shape)} does not match input channels "
                             f"{inp.C} / output channels {out.C}")
        if inp.pad < pad:
            raise InputError(f"{where}: input layout halo {inp.pad} is smaller than the conv padding {pad}")
        ho, wo = (inp.H + 2 * pad - 3) // stride + 1, (inp.W + 2 * pad - 3) // stride + 1
        if (out.H, out.W) != (ho, wo) or ho < 1 or wo < 1:
            raise InputError(f"{where}: output layout {out.H}x{out.W} but a 3x3/{stride} conv with "
                             f"padding {pad} on {inp.H}x{inp.W} gives {ho}x{wo}")
        return ConvShape(stride, pad, inp, out)


class LayerEmitter:
    """What every layout's emitter knows about the layer it writes (the layouts subclass it)."""

    TRANSPOSED = False  # weights stored filter-major (True: the transposed layer, channel-major)
    batched = False     # the code also defines NAME_nb (base.GeneratedKernel)

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, target: Target):
        self.name, self.sp, self.lay, self.sh = name, sp, lay, shape
        self.act, self.res, self.target = act, has_residual, target
        cpu = target.require_cpu(name)
        self.vl = cpu.lanes
        self.line = cpu.cache_line // 4  # floats per cache line


def channel_prefetch(ipf: int, bound: str, base: str, cs: int, offsets, span: int, line: int) -> list[str]:
    """C lines that prefetch, ``ipf`` channels ahead of channel ``i`` (while below ``bound``),
    the cache lines (``line`` floats) of the ``span`` floats at each of ``offsets`` (vector
    starts, in floats) from ``base``, the current channel's pointer; channels are ``cs`` floats
    apart and reached through ``perm``."""
    if not ipf:
        return []
    lines = sorted({q for o in offsets for q in (o // line, (o + span - 1) // line)})
    return [f"if (i + {ipf} < {bound}) {{",
            f"    const float *pf = {base} + ((ptrdiff_t)perm[i + {ipf}] - perm[i]) * {cs};",
            *[f"    __builtin_prefetch(pf + {line * q}, 0, 3);" for q in lines], "}"]


# Shared by every pattern layer (the graph emits it once): first filter of thread t's share,
# the reordered filters split by cumulative tap count. Kernels run in a team (base.PRELUDE).
# PC_SPREAD4 is the target dialect's (target/dialect.py).
SUPPORT = r"""
#ifndef PS_SPLIT_DEFINED
#define PS_SPLIT_DEFINED
static inline int ps_split(const int32_t *cost, int F, int t, int nt) {
    if (t >= nt) return F;
    const int64_t goal = (int64_t)cost[F] * t / nt;
    int lo = 0, hi = F;                 /* first i with cost[i] >= goal */
    while (lo < hi) { int mid = (lo + hi) / 2; if (cost[mid] < goal) lo = mid + 1; else hi = mid; }
    return lo;
}
/* PC_SPREAD4(p, lane indices...): a vector whose lane l is p[index l], from four consecutive floats
   at p (a pattern kernel's weights, any alignment). The generic form widens a 4-float vector with
   __builtin_shufflevector, which GCC 12 compiles to a stack round trip (a 64-byte reload of a
   16-byte store: a store-forwarding stall that made packed 2x2 layers 4x slower with AVX-512);
   the intrinsic forms are one load and one lane permute. */
typedef float pc_v4u __attribute__((vector_size(16), aligned(4)));
static inline pc_v4u pc_load4(const float *p) { return *(const pc_v4u *)p; }
/*@spread4@*/
#endif
"""


def support_c(target: Target) -> str:
    """The C every pattern layer relies on (emitted once per source), rendered for ``target``."""
    return target.render(SUPPORT)
