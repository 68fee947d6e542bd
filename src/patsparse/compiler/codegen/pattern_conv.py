"""Pattern-specialised 3x3 convolution (PatDNN / PCONV), stride 1 or 2, groups = 1.

Why it is fast (see /work/shared/notes/kernel-lessons.md): the sparsity is compiled in.
  * Filter-kernel reorder (reorder.py) makes every (filter, mask) a contiguous run of kernels;
    the kernel loops over a run with that mask's taps at compile-time offsets: no branch, no
    per-weight index, 4 FMAs per input channel of a pattern kernel.
  * Output tile in registers: ``rows`` output rows x ``vecs`` vectors of VL outputs stay in
    accumulators for the whole reduction over kernels (8-12 accumulators fill the register file).
  * Load-redundancy elimination across output rows: the tile streams input rows; each input
    vector is loaded once and feeds every (tap, output row) pair that uses it.
  * Threads split the reordered filters by tap count (prefix sums stored with the weights), so
    each thread does the same amount of work.
  * Bias, residual and activation are applied at the store; the output goes straight into its
    consumer's padded layout, tail lanes masked to zero so halos stay zero.
Stride 2 first copies the input into four phase planes (space-to-depth, access.py), so its
loads are unit-stride at compile-time offsets like stride 1's. The vector length is fixed when the code is generated (``vl``; the host's by
default) and checked by the C compiler, so a library never runs with the wrong width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout
from ..reorder import FULL_MASK, LayerSparsity, analyse, mask_taps, reorder
from ..storage import pack as fkw_pack, plan
from .base import GeneratedKernel, act_c, act_scalar_c
from .access import input_access
from ..target import CpuCaps, Target
from .common import VECTOR_LOAD, WEIGHT_PREFETCH, helpers_c

DEFAULT_SCHEDULE = {"rows": 0, "vecs": 0, "order": "tf"}  # 0 = choose from the shape
def max_acc(cpu: CpuCaps) -> int:
    """Accumulators per row tile: the register file minus 4 weight broadcasts and a temporary
    (and, with 32 registers, room for the input vectors a tile reuses)."""
    return 24 if cpu.vector_registers >= 32 else 11


def _fkw_prologue(name: str, o: dict) -> list[str]:
    """The kernel's signature and the pointers to its FKW1 sections (offsets ``o`` in floats)."""
    return [f"static void {name}(const float *restrict in, float *restrict out,",
            "    const float *restrict w, const float *restrict bias, const float *restrict res) {",
            "    const int32_t *restrict wi = (const int32_t *)w;",
            *(f"    const int32_t *restrict {k} = wi + {o[k]};" for k in ("perm", "runs", "cost", "wptr")),
            f"    const uint16_t *restrict cidx = (const uint16_t *)(wi + {o['cidx']});",
            f"    const float *restrict wts = w + {o['weights']};",
            "    (void)res;"]


def _header(name: str, sh: "ConvShape", lay, target: Target, what: str) -> list[str]:
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


CT_VECS = 2  # the channel-tile layout's tile width in vectors with 16 registers (see default_schedule)


FLAT_MAX_VECS = 4          # flat layout: the whole output plane in at most this many vectors
FLAT_MAX_SCRATCH = 1 << 19  # bytes of per-tap input copies (C * 9 planes) the flat layout may use
UNROLL_COPY_MAX = 512     # floats per channel up to which the flat layout's copy is straight-line code


CT_MAX_FILTERS = 128       # above it stride-1 rows of several vectors stay on the row layout
INPUT_PREFETCH = 2         # channel tiles and channel-major layers prefetch the input this many channels ahead


def ct_rows(out: Layout, target: Target, vecs: int, limit: int | None = None, threads: int | None = None) -> int:
    """Output rows per channel tile (at most ``limit``): as many as keep a mask run's input
    vectors in registers. More rows per tile spread each kernel's fixed costs (its index,
    weight broadcasts, loop) over more FMAs: stride-2 64->128 @56x56 and 128->256 @28x28 at 8x
    ran 1.2-1.4x faster with 2-4 rows than with 1 (AVX-512, in-process A/B).

    The register bound: a 4-tap mask reads at most 3 * rows + 2 distinct input vectors per
    tile column (taps in one column shift share rows), plus 4 weight broadcasts and a temporary
    per column. The first bound assumed 4 * rows (no sharing) in 3/4 of the registers; it is
    kept where it allowed more (16-register AVX2), so only one-vector tiles with 32 registers
    changed, from 6 to 8 rows: ResNet-18's 14-row layers run two tiles of 7 rows.

    With ``threads`` known, the row count up to that bound whose tiles split best over the team
    wins (tiles go to threads in contiguous blocks, ``omp for schedule(static)``; a tile costs
    its rows plus about one row of fixed work). Why: ResNet-18's 128->256 @28/2 has 14 output
    rows; 6-row tiles make 3 tiles (6, 6, 2) and one of two threads got 12 rows (258 against
    97 us in the model); 7-row tiles split 7/7 (alone, 2 threads: 228 us against 263 with 4
    rows and 309 with 6). Within 5% of the best balance, a row count whose split gives every
    thread whole rows of tiles wins (56 rows: 7, not 8, whose 28 tiles split inside a row)."""
    cpu = target.require_cpu("pattern conv schedule")
    regs, vl = cpu.vector_registers, cpu.lanes
    shared = ((regs - 5 - vecs) // vecs - 2) // 3  # (3R + 2) * vecs + vecs + 5 <= registers
    top = max(1, min(out.H, max((regs * 3 // 4) // (4 * vecs), shared), limit or out.H))
    if not threads or threads < 2:
        return top
    nv = -(-out.W // vl)
    ncols = -(-nv // vecs)

    def split(r: int) -> tuple[int, bool]:
        """(busiest thread's cost, whether a thread's share starts inside a row of tiles)."""
        costs = [min(r, out.H - h) + 1 for h in range(0, out.H, r) for _ in range(ncols)]
        q, rem = divmod(len(costs), threads)
        bounds = [t * q + min(t, rem) for t in range(threads + 1)]
        return (max(sum(costs[bounds[t]:bounds[t + 1]]) for t in range(threads)),
                any(b % ncols for b in bounds[1:-1]))

    spans = {r: split(r) for r in range(top, 0, -1)}
    best = min(span for span, _ in spans.values())
    # a share that starts inside a row of tiles writes half the cache lines of that row next to
    # the other thread's (false sharing, and reads across cores in the next layer): within 5%
    # of the best balance, whole rows of tiles per thread win
    aligned = [r for r, (span, mid) in spans.items() if not mid and span <= best * 1.05]
    return aligned[0] if aligned else min(spans, key=lambda r: spans[r][0])  # ties: the most rows


def ct_hoist(inp: Layout, out: Layout) -> int:
    """Default ``hoist`` of a channel tile: on at stride 2 only (_ChannelTileEmitter says why)."""
    return int(inp.H > out.H)


def cm_fits(out: Layout, target: Target) -> bool:
    """Whether the channel-major layout can run this layer: the plane in few vectors (its tap
    vectors stay in registers for a mask run; its copies are per channel, so C does not matter)."""
    return -(-(out.H * out.W) // target.require_cpu("pattern conv schedule").lanes) <= FLAT_MAX_VECS


def flat_fits(inp: Layout, out: Layout, target: Target) -> bool:
    """Whether the flat layout can run this layer: plane in few vectors, copies fit in L2."""
    vl = target.require_cpu("pattern conv schedule").lanes
    hwp = -(-(out.H * out.W) // vl) * vl
    return cm_fits(out, target) and inp.C * 9 * hwp * 4 <= FLAT_MAX_SCRATCH


def tap_pack(out: Layout, target: Target) -> int:
    """Taps per vector the packed flat layout puts in one vector for this output plane (1: none).

    A plane of ``H*W`` outputs smaller than a vector would leave lanes idle (a 2x2 plane fills a
    quarter of an 8-float vector); when ``H*W`` divides the vector, 2 or 4 taps of a kernel share
    it instead (lane ``l`` holds tap ``l // (H*W)`` of output ``l % (H*W)``).
    """
    hw, vl = out.H * out.W, target.require_cpu("pattern conv schedule").lanes
    g = vl // hw if vl % hw == 0 else 1
    return g if g in (2, 4) else 1


def default_schedule(inp: Layout, out: Layout, target: Target, threads: int | None = None) -> dict:
    """A good untuned schedule (``threads``: the team size, when known, balances channel tiles).

    Row layout: all vectors of a row when they fit, then as many rows as fit in registers.
    Small planes whose rows fill under 3/4 of a vector (4x4 and 2x2 with 8-float vectors; 7x7
    and 8x8 too with 16) vectorise over the whole plane instead, channel-major (``cm``):
    1.3-1.9x faster than the filter-major flat layout on VGG-CIFAR's 4x4 and 2x2 layers, and
    1.5x faster than 7-of-16-lane rows on 512->512 @7x7 (docs/COMPILER.md).

    Stride 2 runs channel tiles (``ct``), and so does stride 1 up to 128 filters: the row
    layout reloads each kernel's input rows from L2, a channel tile loads a mask run's input
    once for all its kernels (in-process A/B, AVX-512, rows -> ct: 64->64 @32x32 8x 87 -> 70 us,
    128->128 @28x28 290 -> 236, @16x16 90 -> 67, at 2.25x 1.4-1.6x).

    With 32 vector registers the tiles are one vector wide and as tall as the registers allow
    (ct_rows, balanced over the team): a kernel's index, broadcasts and loop then feed 28-32
    FMAs instead of 24 (2 vectors x 3 rows), and the taller tiles win even where their partial
    sums overflow L1. Alone, 2 threads, 2 x 3 -> 1 x 7 rows: 64->64 @56x56 8x 311 -> 276 us,
    128->128 @28x28 8x 300 -> 253 (2 x 2 before), 2.25x 899 -> 761 (1 x 8); 64->64 @32x32,
    128->128 @16x16 and the stride-2 64->128 @56 tie. One-vector rows run channel tiles with
    more filters too: 256->256 @14x14 8x lost with 2-row tiles (248 -> 271 us) but wins with 7
    rows (307 -> 289). With 16 registers (AVX2, not measured since) tiles stay 2 vectors wide,
    and stride 1 runs them only while 2 rows of every filter's partial sums fit in L1.
    """
    cpu = target.require_cpu("pattern conv schedule")
    vl = cpu.lanes
    nv = -(-out.W // vl)
    if out.W / (nv * vl) < 0.75 and cm_fits(out, target):
        return {"layout": "cm", "pack": tap_pack(out, target), "wpf": WEIGHT_PREFETCH}
    stride2 = inp.H > out.H
    if cpu.vector_registers >= 32:
        if stride2 or out.C <= CT_MAX_FILTERS or nv == 1:
            return {"layout": "ct", "vecs": 1, "rows": ct_rows(out, target, 1, threads=threads),
                    "hoist": ct_hoist(inp, out)}
    else:
        vecs = min(CT_VECS, nv)
        l1_rows = None if stride2 else cpu.l1_bytes // (out.C * vecs * vl * 4)
        if stride2 or (ct_rows(out, target, vecs, l1_rows) >= 2 and out.C <= CT_MAX_FILTERS):
            return {"layout": "ct", "vecs": vecs, "rows": ct_rows(out, target, vecs, l1_rows, threads),
                    "hoist": ct_hoist(inp, out)}
    vecs = min(nv, 4)
    rows = max(1, min(out.H, max_acc(cpu) // vecs))
    return {"layout": "rows", "rows": rows, "vecs": vecs, "order": "tf", "prefetch": 1}


CBLK = 16            # input channels per block of the channel-blocked row tile
CBLK_DENSITY = 0.5   # kept kernels / (F * C) from which it pays


def channel_blocking(sp: LayerSparsity, inp: Layout, sched: dict) -> dict:
    """Schedule keys that turn channel blocking on for a row tile where it pays (else none).

    Why: the row tile streams (rows + 2) input rows of every kernel's channel, and over all
    filters of a tile those rows (64 channels x 14 rows of a 32-wide plane: 172 KB) overflow
    L1, so each kernel reloads them from L2. Blocks of CBLK channels (all filters, then the next
    block) keep a block's rows in L1; partial sums wait in the output between blocks. It pays
    when most kernels are kept (pattern-only pruning: 64->64 @32x32 1.2x, @56x56 1.17x,
    128->128 @16x16 1.1x; in-process A/B, AVX-512); at 8x each filter has ~2 kernels per block
    and the partial-sum traffic cancels the gain (1.0x or slower). Prefetching the next
    kernel's rows only re-fetches lines already in L1 then, so it is off."""
    if sp.kernel_mask.size and (sp.kernel_mask >= 0).mean() >= CBLK_DENSITY and inp.C > CBLK \
            and sched.get("order", "tf") == "tf":
        return {"cblk": CBLK, "prefetch": 0}
    return {"cblk": 0}


def candidate_schedules(inp: Layout, out: Layout, target: Target, threads: int | None = None) -> list[dict]:
    """The tuning space: row tiles of 4..max_acc accumulators in both loop orders, channel tiles
    (1 row, the most that fit, the best balanced over ``threads``), and where the plane is tiny
    the channel-major layout and the flat one with a few unroll factors."""
    cpu = target.require_cpu("pattern conv schedule")
    nv = -(-out.W // cpu.lanes)
    top = max_acc(cpu)
    seen, cands = set(), []
    for vecs in range(1, min(nv, 6) + 1):
        for rows in range(1, min(out.H, top) + 1):
            acc = rows * vecs
            if not (4 <= acc <= top or (acc < 4 and rows == out.H and vecs == nv)):
                continue
            for order in ("tf", "ft"):
                key = (rows, vecs, order)
                if key not in seen:
                    seen.add(key)
                    cands.append({"layout": "rows", "rows": rows, "vecs": vecs, "order": order,
                                  "prefetch": 1})
    cands += [{"layout": "ct", "vecs": v, "rows": r, "hoist": h} for v in range(1, min(nv, CT_VECS) + 1)
              for r in sorted({1, ct_rows(out, target, v), ct_rows(out, target, v, threads=threads)}) for h in (0, 1)]
    if cm_fits(out, target):
        cands += [{"layout": "cm", "pack": g, "wpf": d} for g in sorted({1, tap_pack(out, target)})
                  for d in (0, WEIGHT_PREFETCH)]
    if flat_fits(inp, out, target):
        cands += [{"layout": "flat", "unroll": u, "prefetch": 0, "pack": 1} for u in (1, 2, 4)]
        cands.append({"layout": "flat", "unroll": 4, "prefetch": 1, "pack": 1})
        if tap_pack(out, target) > 1:
            cands += [{"layout": "flat", "unroll": u, "prefetch": 0, "pack": tap_pack(out, target)} for u in (2, 4)]
    return cands


def gen_pattern_conv(name: str, weight: np.ndarray, *, stride: int, padding: int, in_layout: Layout,
                     out_layout: Layout, act: str = "none", has_residual: bool = False,
                     schedule: dict | None = None, target: Target,
                     sparsity: LayerSparsity | None = None, where: str | None = None,
                     threads: int | None = None) -> GeneratedKernel:
    """Generate the pattern-specialised kernel ``name`` for a (F, C, 3, 3) ``weight``.

    The code depends on which masks the weights use (read from the weights, or ``sparsity``);
    ``pack`` of the result turns a weight with that sparsity into the compact FKW array the
    kernel reads. ``where`` names the layer in errors (defaults to ``name``). ``threads``: the
    team that will run it, if known (the default schedule balances its work over them). The code
    is generated for ``target``'s vector width and registers.
    """
    where = where or name
    weight = np.asarray(weight, dtype=np.float32)
    shape = ConvShape.check(weight.shape, stride, padding, in_layout, out_layout, where)
    vl = target.require_cpu(where).lanes
    sp = sparsity or analyse(weight, where)
    sched = _resolve_schedule(schedule, in_layout, out_layout, target, where, sp, threads)
    if sched["layout"] == "flat" and sched["pack"] > 1 and \
            _FlatEmitter.scratch_floats(sp, in_layout.C, out_layout, sched["pack"]) * 4 > FLAT_MAX_SCRATCH:
        sched["pack"] = 1  # too many masks: the packed copies would not stay in L2
    # the channel-major layout stores the transposed layer: input channels play the filters'
    # part in FKW1 (perm, runs, cost per input channel; cidx holds output channels)
    emitter = {"flat": _FlatEmitter, "cm": _ChannelMajorEmitter, "ct": _ChannelTileEmitter}.get(
        sched["layout"], _Emitter)
    transposed = emitter.TRANSPOSED
    sp_st = LayerSparsity(sp.masks, np.ascontiguousarray(sp.kernel_mask.T)) if transposed else sp
    ro = reorder(sp_st)
    lay = plan(sp_st, ro)
    code = emitter(name, sp, lay, shape, act, has_residual, sched, target).emit()
    taps = sp.taps_per_kernel().sum()
    flops = 2 * int(taps) * out_layout.H * out_layout.W

    def pack(w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float32)
        return fkw_pack(sp_st, ro, w.transpose(1, 0, 2, 3) if transposed else w, where)

    sched["vl"] = vl
    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=flops, schedule=sched)


def _input_prefetch_distance(sched: dict, where: str) -> int:
    """The checked ``ipf`` of a channel-tile or channel-major schedule (default INPUT_PREFETCH)."""
    ipf = sched.get("ipf", INPUT_PREFETCH)
    if not isinstance(ipf, int) or ipf < 0:
        raise InputError(f"{where}: schedule ipf (input channels prefetched ahead) must be an int >= 0, "
                         f"got {ipf!r}")
    return ipf


def _channel_prefetch(ipf: int, bound: str, base: str, cs: int, offsets, span: int, line: int) -> list[str]:
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


def _resolve_schedule(schedule: dict | None, inp: Layout, out: Layout, target: Target, where: str,
                      sp: LayerSparsity, threads: int | None = None) -> dict:
    """The default schedule for this layer, overridden by ``schedule``; checked."""
    cpu = target.require_cpu(where)
    vl = cpu.lanes
    given = {k: v for k, v in (schedule or {}).items() if v is not None and k != "vl"}
    layout = given.get("layout") or ("rows" if {"rows", "vecs", "order"} & given.keys() else None)
    base = default_schedule(inp, out, target, threads)
    if layout and layout != base["layout"]:  # the other layout's defaults; rows/vecs filled below
        base = {"rows": {"layout": "rows", "order": "tf", "prefetch": 1},
                "cm": {"layout": "cm", "pack": tap_pack(out, target), "wpf": WEIGHT_PREFETCH},
                "flat": {"layout": "flat", "unroll": 2, "prefetch": 0, "pack": tap_pack(out, target)},
                }.get(layout, {"layout": layout})
    sched = {**base, **given}
    if sched["layout"] not in ("rows", "flat", "cm", "ct"):
        raise InputError(f"{where}: schedule layout must be 'rows', 'flat', 'cm' or 'ct', got {sched['layout']!r}")
    if sched["layout"] == "ct":
        nv = -(-out.W // vl)
        vecs = max(1, min(int(sched.get("vecs") or CT_VECS), nv))
        rows = sched.get("rows") or ct_rows(out, target, vecs, threads=threads)
        hoist = sched.get("hoist", ct_hoist(inp, out))
        s2 = {"s2": sched.get("s2", 1)} if inp.H > out.H else {}  # stride 2 only
        if hoist not in (0, 1) or s2.get("s2", 0) not in (0, 1):
            raise InputError(f"{where}: schedule hoist and s2 must be 0 or 1, got hoist={hoist!r}, "
                             f"s2={s2.get('s2')!r}")
        return {"layout": "ct", "vecs": vecs, "rows": max(1, min(int(rows), out.H)), "hoist": hoist,
                "ipf": _input_prefetch_distance(sched, where), **s2}
    if sched["layout"] in ("flat", "cm"):
        if not cm_fits(out, target):
            raise InputError(f"{where}: the {sched['layout']} layout needs an output plane of at most "
                             f"{FLAT_MAX_VECS} vectors of {vl} floats, got {out.H}x{out.W}")
        if sched["layout"] == "flat" and not flat_fits(inp, out, target):
            raise InputError(f"{where}: the flat layout's per-tap copies of {inp.C} channels exceed "
                             f"{FLAT_MAX_SCRATCH} bytes; use the 'cm' layout")
        if sched["layout"] == "flat":
            sched["unroll"] = int(sched.get("unroll") or 1)
        sched["pack"] = int(sched.get("pack") or 1)
        if sched["layout"] == "cm":
            sched["wpf"] = int(sched.get("wpf") or 0)
            sched["ipf"] = _input_prefetch_distance(sched, where)
            if sched["wpf"] < 0:
                raise InputError(f"{where}: schedule wpf (weight prefetch distance in floats) must be >= 0, "
                                 f"got {sched['wpf']}")
        if sched["pack"] not in (1, tap_pack(out, target)):
            raise InputError(f"{where}: schedule pack {sched['pack']} does not fit a {out.H}x{out.W} "
                             f"plane in {vl}-float vectors (possible: 1, {tap_pack(out, target)})")
    else:
        if sched.get("order", "tf") not in ("tf", "ft"):
            raise InputError(f"{where}: schedule order must be 'tf' or 'ft', got {sched['order']!r}")
        nv = -(-out.W // vl)
        vecs = max(1, min(int(sched.get("vecs") or min(nv, 4)), nv))
        rows = int(sched.get("rows") or max(1, min(out.H, max_acc(cpu) // vecs)))
        sched.update(vecs=vecs, rows=max(1, min(rows, out.H)), order=sched.get("order", "tf"))
        if "cblk" not in given:  # its default depends on the sparsity; keys the caller gave stand
            sched.update({k: v for k, v in channel_blocking(sp, inp, sched).items() if k not in given})
        cblk = int(sched.get("cblk") or 0)
        if cblk < 0 or (cblk and sched["order"] != "tf"):
            raise InputError(f"{where}: schedule cblk must be >= 0 and needs order 'tf', got "
                             f"cblk={cblk}, order={sched['order']!r}")
        sched["cblk"] = cblk if 0 < cblk < inp.C else 0
    return sched


class _Emitter:
    """Writes the C for one layer; one method per piece so each stays readable."""

    TRANSPOSED = False  # weights stored filter-major (True: the transposed layer, channel-major)

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target):
        self.name, self.sp, self.lay, self.sh = name, sp, lay, shape
        self.act, self.res, self.target = act, has_residual, target
        cpu = target.require_cpu(name)
        self.vl = vl = cpu.lanes
        self.line = cpu.cache_line // 4  # floats per cache line
        self.rows, self.vecs, self.order = int(sched["rows"]), int(sched["vecs"]), sched["order"]
        self.prefetch = int(sched.get("prefetch", 0))
        self.cblk = int(sched.get("cblk", 0))  # input channels per block (0: no blocking)
        out = shape.out
        self.nv = -(-out.W // vl)
        self.vecs = max(1, min(self.vecs, self.nv))
        self.rows = max(1, min(self.rows, out.H))
        self.tail_lanes = out.W - (self.nv - 1) * vl  # valid lanes of a row's last vector
        # stride 1 reads the layout itself; stride 2 reads phase planes a prep builds, so its
        # loads are unit-stride too (a deinterleave per vector ran at a quarter of the speed)
        self.acc = input_access(name, channels=lay.C, k=3, stride=shape.stride, padding=shape.pad,
                                in_layout=shape.inp, Ho=out.H, Wo=out.W, allow_strided=False,
                                row_align=4, vl=vl)

    # ---- the tile: R x V accumulators, all mask runs of one filter ------------------------
    def _mask_body(self, p: int, R: int, V: int) -> list[str]:
        m = self.sp.masks[p]
        taps = mask_taps(m)
        acc, vl = self.acc, self.vl
        head = (f"    for (int k = runs[{p}]; k < runs[{p + 1}]; k++, wk += {len(taps)}) {{" if not self.cblk else
                f"    {{ int k = cur[{p}]; wk = w0 + {self._woff(p)} + (k - runs[{p}]) * {len(taps)};\n"
                f"    for (; k < runs[{p + 1}] && cidx[k] < hi; k++, wk += {len(taps)}) {{")
        lines = [f"    /* mask {p}: taps {list(taps)}{' (dense kernel)' if m == FULL_MASK else ''} */",
                 head, f"        const float *restrict ip = ib + (ptrdiff_t)cidx[k] * {acc.cs};"]
        # stream input rows: each input vector (an offset from the tile's origin) is loaded once
        # and feeds every (tap, output row) that reads it
        uses: dict[int, list[tuple[int, int, int]]] = {}
        for j, t in enumerate(taps):
            for r in range(R):
                for v in range(V):
                    uses.setdefault(acc.tap_off[t] + r * acc.row_stride + v * vl, []).append((j, r, v))
        if self.prefetch:  # the cache lines of a kernel a few iterations ahead, into L1
            lines.append(f"        const float *pf = ib + (ptrdiff_t)cidx[k + {self.prefetch}] * {acc.cs};")
            for line in sorted({off // self.line for off in uses} | {(off + vl - 1) // self.line for off in uses}):
                lines.append(f"        __builtin_prefetch(pf + {line * self.line}, 0, 3);")
        for j in range(len(taps)):
            lines.append(f"        const vf w{j} = vbcast(wk[{j}]);")
        for off in sorted(uses):  # PS_KEEP: one load in a register, not one folded into each FMA
            lines.append(f"        {{ vf x = vload(ip + {off}); PS_KEEP(x);")
            for j, r, v in uses[off]:
                lines.append(f"          a{r}_{v} += w{j} * x;")
            lines.append("        }")
        lines.append("    }" + ("" if not self.cblk else f" nxt[{p}] = k; }}"))
        return lines

    def _woff(self, p: int) -> str:
        """C expression: offset of mask ``p``'s first weight within the filter's weights."""
        terms = [f"(runs[{q + 1}] - runs[{q}]) * {len(mask_taps(self.sp.masks[q]))}" for q in range(p)]
        return "(" + " + ".join(terms) + ")" if terms else "0"

    def _tile(self, R: int, V: int) -> str:
        out, P = self.sh.out, len(self.sp.masks)
        fn = f"{self.name}_t{R}x{V}"
        lines = [f"static inline __attribute__((always_inline)) void {fn}(",
                 "    const float *restrict ib, float *restrict op, const float *restrict rp,",
                 "    const int32_t *restrict runs, const uint16_t *restrict cidx,",
                 "    const float *restrict wk, float b, int lastmask" +
                 (", const int *restrict cur, int *restrict nxt, int hi, int first, int final) {"
                  if self.cblk else ") {")]
        if self.cblk:
            lines.append("    const float *restrict w0 = wk;")
        for r in range(R):  # later channel blocks continue from the partial sums in the output
            lines.append("    vf " + ", ".join(
                f"a{r}_{v} = " + (f"first ? (vf){{0}} : vload(op + {r * out.ld + v * self.vl})" if self.cblk
                                  else "{0}") for v in range(V)) + ";")
        for p in range(P):
            lines += self._mask_body(p, R, V)
        if self.cblk:  # partial sums as they are; the last block finishes the tile below
            lines.append("    if (!final) {")
            lines += [f"        vstore(op + {r * out.ld + v * self.vl}, a{r}_{v});" for r in range(R) for v in range(V)]
            lines.append("        return;")
            lines.append("    }")
        lines.append("    const vf bv = vbcast(b);")
        lines.append(f"    const vi tm = vtailmask({self.tail_lanes});")
        for r in range(R):
            for v in range(V):
                o = f"{r * out.ld + v * self.vl}"
                val = f"a{r}_{v} + bv" + (f" + vload(rp + {o})" if self.res else "")
                val = act_c(self.act, val)
                store = f"vand({val}, tm)" if v == V - 1 else None
                if store:
                    lines.append(f"    if (lastmask) vstore(op + {o}, {store}); else vstore(op + {o}, {val});")
                else:
                    lines.append(f"    vstore(op + {o}, {val});")
        lines.append("}")
        return "\n".join(lines)

    # ---- the layer: thread split, loops over tiles and filters ----------------------------
    def _row_loops(self) -> list[tuple[str, int, list[tuple[int, int]]]]:
        """Row tiles as (C loop header, R, column tiles): main rows in a loop, the tail after."""
        H, R = self.sh.out.H, self.rows
        cols = [(v, min(self.vecs, self.nv - v)) for v in range(0, self.nv, self.vecs)]
        loops = []
        full = H // R * R
        if full:
            loops.append((f"for (int oh = 0; oh < {full}; oh += {R})", R, cols))
        if H - full:
            loops.append((f"for (int oh = {full}; oh < {H}; oh += {H - full})", H - full, cols))
        return loops

    def _call(self, R: int, v0: int, V: int) -> str:
        acc, vl, out = self.acc, self.vl, self.sh.out
        ib = f"{acc.src} + (ptrdiff_t)oh * {acc.row_stride} + {acc.origin + acc.step * v0 * vl}"
        ob = f"oplane + oh * {out.ld} + {v0 * vl}"
        rb = f"rplane + oh * {out.ld} + {v0 * vl}" if self.res else "0"
        last = 1 if (v0 + V == self.nv and self.tail_lanes != vl) else 0
        P = len(self.sp.masks)
        blk = f", cur + (ptrdiff_t)(f - f0) * {P}, nxt, hi, b == 0, b == NB - 1" if self.cblk else ""
        return (f"{self.name}_t{R}x{V}({ib}, {ob}, {rb}, runs + (ptrdiff_t)f * {P}, cidx, "
                f"wts + wptr[f], bias[oc], {last}{blk});")

    def emit(self) -> str:
        lay, out = self.lay, self.sh.out
        o = lay.offsets
        shapes = sorted({(R, V) for _, R, cols in self._row_loops() for _, V in cols})
        parts = _header(self.name, self.sh, lay, self.target, f"tile {self.rows}x{self.vecs} order {self.order}"
                        + (f", {self.cblk}-channel blocks" if self.cblk else ""))
        parts += [self._tile(R, V) for R, V in shapes]
        filt = ["const int oc = perm[f];",
                f"float *restrict oplane = out + (ptrdiff_t)oc * {out.ps} + {out.origin};"]
        if self.res:
            filt.append(f"const float *restrict rplane = res + (ptrdiff_t)oc * {out.ps} + {out.origin};")
        floop = "for (int f = f0; f < f1; f++) {"
        loops = []
        for head, R, cols in self._row_loops():
            calls = [self._call(R, v0, V) for v0, V in cols]
            if self.order == "ft":
                loops += [head + " {"] + ["    " + c for c in calls] + ["}"]
            elif not self.cblk:  # tiles outer, filters inner: a tile's input rows stay in cache across filters
                loops += [head + " {", "    " + floop] + ["        " + x for x in filt + calls]
                loops += ["    }", "}"]
            else:  # tiles, then channel blocks, then filters: a block's input rows stay in L1
                P = len(self.sp.masks)
                loops += [head + " {",
                          f"    for (int f = f0; f < f1; f++) for (int p = 0; p < {P}; p++) "
                          f"cur[(f - f0) * {P} + p] = runs[f * {P} + p];",
                          f"    for (int b = 0; b < NB; b++) {{",
                          f"        const int hi = (b + 1) * {self.cblk};",
                          "        " + floop] + ["            " + x for x in filt + calls]
                # all column tiles of this (filter, block) started from the same cursor: move it on
                loops += [f"            for (int p = 0; p < {P}; p++) cur[(f - f0) * {P} + p] = nxt[p];",
                          "        }", "    }", "}"]
        if self.order == "ft":
            loops = [floop] + ["    " + x for x in filt + loops] + ["}"]
        fn = [*_fkw_prologue(self.name, o), *self.acc.scratch.strip("\n").splitlines(),
              "    {", *self.acc.prep.strip("\n").splitlines(),
              "        const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
              f"        const int f0 = ps_split(cost, {lay.F}, t, nt), f1 = ps_split(cost, {lay.F}, t + 1, nt);"]
        if self.cblk:  # per thread: where each of its (filter, mask) runs has got to
            fn += [f"        enum {{ NB = {-(-lay.C // self.cblk)} }};",
                   f"        int *cur = (int *)__builtin_alloca(sizeof(int) * {len(self.sp.masks)} * (f1 - f0 + 1));",
                   f"        int nxt[{len(self.sp.masks)}];"]
        fn += ["        " + x for x in loops]
        fn += ["    }", "}"]
        parts.append("\n".join(fn))
        return "\n\n".join(parts) + "\n"


class _FlatEmitter:
    """The flat layout for tiny output planes (4x4, 2x2...): vectorise over the whole plane.

    A row of 4 outputs fills half an 8-float vector; here each input channel is first copied
    into 9 per-tap planes (im2col per channel, the output plane flattened and padded to whole
    vectors), so every tap of every kernel is an aligned vector load and no lane is wasted.
    Few output vectors mean few accumulators, so the kernel loop is unrolled ``unroll`` times
    into separate accumulator sets (independent FMA chains), summed at the end. The copies
    live in the calling thread's scratch arena, shared with its team (PS_SCRATCH).

    Tap packing (``pack`` = g > 1, see ``tap_pack``): a plane of VL/g outputs fills a vector
    with g taps. The copies are then per mask: for every channel and every mask the layer uses,
    the mask's taps one after the other (padded with zero taps to a multiple of g), so a kernel
    reads 4/g aligned vectors and does 4/g full-width FMAs instead of 4 with idle lanes; its
    weight vector is [w0 x hw, w1 x hw, ...] shuffled from its four stored weights. The g lane
    groups are summed at the store.
    """

    TRANSPOSED = False

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target):
        self.name, self.sp, self.lay, self.sh = name, sp, lay, shape
        self.act, self.res, self.target = act, has_residual, target
        cpu = target.require_cpu(name)
        self.vl = vl = cpu.lanes
        self.line = cpu.cache_line // 4  # floats per cache line
        self.unroll = max(1, int(sched.get("unroll", 1)))  # the flat layout's knobs (cm: unused)
        self.prefetch = int(sched.get("prefetch", 0))
        out = shape.out
        self.nvt = -(-(out.H * out.W) // vl)
        self.hwp = self.nvt * vl
        self.g = int(sched.get("pack", 1))
        if self.g > 1:  # packed copies: per channel, every mask's taps in slots of hw floats
            self.hw = out.H * out.W
            self.slots = [self._slots(len(mask_taps(m)), self.g) for m in sp.masks]
            self.moff = np.concatenate([[0], np.cumsum(self.slots)]).astype(int) * self.hw
            self.cs = int(self.moff[-1])  # floats per channel: a multiple of VL

    @staticmethod
    def _slots(ntaps: int, g: int) -> int:
        return -(-ntaps // g) * g

    @staticmethod
    def scratch_floats(sp: LayerSparsity, C: int, out: Layout, g: int) -> int:
        """Floats of per-thread copies the packed flat layout needs for this layer."""
        return C * out.H * out.W * sum(_FlatEmitter._slots(len(mask_taps(m)), g) for m in sp.masks)

    def _weight_vec(self, p: int, u: int, i: int) -> str:
        """Packed layout: vector ``i`` of kernel ``u``'s weights, lane l = weight i*g + l // hw."""
        nt, g, hw = len(mask_taps(self.sp.masks[p])), self.g, self.hw
        idx = [i * g + lane // hw for lane in range(self.vl)]
        if nt == 4:  # the kernel's four weights in one load, spread by one shuffle
            return f"PC_SPREAD4(wk + {u * nt}, {', '.join(map(str, idx))})"
        return "(vf){" + ", ".join(f"wk[{u * nt + j}]" if j < nt else "0.0f" for j in idx) + "}"

    def _kernels(self, p: int, us: list[int]) -> list[str]:
        """FMAs of kernels ``k + u`` (u in ``us``) of mask ``p``, kernel u into accumulator set u."""
        taps = mask_taps(self.sp.masks[p])
        nt, vl = len(taps), self.vl
        if self.g > 1:
            lines = [f"const float *restrict ip{u} = col + (ptrdiff_t)cidx[k + {u}] * {self.cs} + {self.moff[p]};"
                     for u in us]
            for u in us:
                for i in range(self.slots[p] // self.g):
                    lines.append(f"a{u}_0 += {self._weight_vec(p, u, i)} * vloada(ip{u} + {i * vl});")
            return lines
        hwp = self.hwp
        lines = [f"const float *restrict ip{u} = col + (ptrdiff_t)cidx[k + {u}] * {9 * hwp};" for u in us]
        for j, t in enumerate(taps):
            for u in us:
                lines.append(f"{{ const vf wv = vbcast(wk[{u * nt + j}]);")
                for v in range(self.nvt):
                    lines.append(f"  a{u}_{v} += wv * vloada(ip{u} + {t * hwp + v * vl});")
                lines.append("}")
        return lines

    def _run(self, p: int, U: int) -> list[str]:
        """The main loop over mask ``p``'s run: ``U`` kernels per iteration."""
        nt = len(mask_taps(self.sp.masks[p]))
        lines = [f"for (; k + {U} <= e; k += {U}, wk += {U * nt}) {{"]
        if self.prefetch:  # this mask's copies of the kernels a few iterations ahead
            if self.g > 1:
                base, offs = f"{self.cs} + {self.moff[p]}", range(0, self.slots[p] * self.hw, self.line)
            else:
                base = f"{9 * self.hwp}"
                offs = [t * self.hwp + c0 for t in mask_taps(self.sp.masks[p]) for c0 in range(0, self.hwp, self.line)]
            lines.append(f"    const float *pf = col + (ptrdiff_t)cidx[k + {U * self.prefetch}] * {base};")
            lines += [f"    __builtin_prefetch(pf + {o}, 0, 3);" for o in offs]
        lines += ["    " + x for x in self._kernels(p, list(range(U)))]
        lines.append("}")
        return lines

    def _cs(self) -> int:
        """Floats of copies per input channel."""
        return self.cs if self.g > 1 else 9 * self.hwp

    def _copy(self) -> list[str]:
        """Body of the per-channel copy loop: ``src`` (the channel's padded plane) -> ``dst``.

        Unpacked: 9 tap planes of hwp floats. Packed: each mask's taps in order, a zero slot
        where a mask's taps do not fill a multiple of g.
        """
        sh, out, inp = self.sh, self.sh.out, self.sh.inp
        if self.g > 1:
            tab = [t for m, n in zip(self.sp.masks, self.slots) for t in
                   list(mask_taps(m)) + [-1] * (n - len(mask_taps(m)))]
            nslot, size = len(tab), self.hw
            head = [f"static const int8_t tap[{nslot}] = {{{', '.join(map(str, tab))}}};",
                    f"for (int q = 0; q < {nslot}; q++) {{", "    const int t = tap[q];"]
        else:
            nslot, size = 9, self.hwp
            head = ["for (int q = 0; q < 9; q++) {", "    const int t = q;"]
        if nslot * size <= UNROLL_COPY_MAX:  # straight-line: per-slot loop overhead dominated the copy
            taps = tab if self.g > 1 else list(range(9))
            lines = []
            for q, t in enumerate(taps):
                for i in range(size):
                    oh, ow = divmod(i, out.W)
                    src = (f"src[{(t // 3) * inp.ld + t % 3 + oh * sh.stride * inp.ld + ow * sh.stride}]"
                           if t >= 0 and i < out.H * out.W else "0.0f")
                    lines.append(f"dst[{q * size + i}] = {src};")
            return lines
        return head + [
            f"    float *restrict d = dst + q * {size};",
            f"    if (t < 0) {{ for (int i = 0; i < {size}; i++) d[i] = 0.0f; continue; }}",
            f"    const float *restrict s0 = src + (t / 3) * {inp.ld} + t % 3;",
            f"    for (int oh = 0; oh < {out.H}; oh++) for (int ow = 0; ow < {out.W}; ow++)",
            f"        d[oh * {out.W} + ow] = s0[oh * {sh.stride * inp.ld} + ow * {sh.stride}];",
            f"    for (int i = {out.H * out.W}; i < {size}; i++) d[i] = 0.0f;",
            "}"]

    def emit(self) -> str:
        lay, sh, out, inp = self.lay, self.sh, self.sh.out, self.sh.inp
        o, hwp, U = lay.offsets, self.hwp, self.unroll
        off0 = (inp.pad - sh.pad) * inp.ld + (inp.pad - sh.pad)
        body = [*_header(self.name, sh, lay, self.target, f"flat layout, unroll {U}"),
                *_fkw_prologue(self.name, o),
                f"    PS_SCRATCH(col, {lay.C * self._cs()}, \"{self.name}\");",
                "    {",
                "        #pragma omp for schedule(static) nowait",
                f"        for (int c = 0; c < {lay.C}; c++) {{",
                f"            const float *restrict src = in + (ptrdiff_t)c * {inp.ps} + {off0};",
                f"            float *restrict dst = col + (ptrdiff_t)c * {self._cs()};",
                *["            " + x for x in self._copy()],
                "        }",
                "        ps_barrier();",
                "        const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
                f"        const int f0 = ps_split(cost, {lay.F}, t, nt), f1 = ps_split(cost, {lay.F}, t + 1, nt);",
                "        for (int f = f0; f < f1; f++) {",
                "            const int oc = perm[f];",
                f"            const int32_t *restrict rf = runs + (ptrdiff_t)f * {lay.P};",
                "            const float *restrict wk = wts + wptr[f];"]
        nacc = 1 if self.g > 1 else self.nvt
        for u in range(U):
            body.append("            vf " + ", ".join(f"a{u}_{v} = {{0}}" for v in range(nacc)) + ";")
        for p in range(lay.P):
            body.append(f"            {{ int k = rf[{p}]; const int e = rf[{p + 1}];  /* mask {p} */")
            body += ["                " + x for x in self._run(p, U)]
            if U > 1:
                body += ["                " + x for x in self._run(p, 1)]
            body.append("            }")
        body.append(f"            float tmp[{hwp}] __attribute__((aligned(64)));")
        body.append("            const vf bv = vbcast(bias[oc]);")
        for v in range(nacc):
            total = " + ".join(f"a{u}_{v}" for u in range(U))
            body.append(f"            vstore(tmp + {v * self.vl}, {total}{'' if self.g > 1 else ' + bv'});")
        body.append(f"            float *restrict op = out + (ptrdiff_t)oc * {out.ps} + {out.origin};")
        val = f"tmp[oh * {out.W} + ow]"
        if self.g > 1:  # sum the g lane groups (one tap group each), then the bias
            val = "(" + " + ".join(f"tmp[{i * self.hw} + oh * {out.W} + ow]" for i in range(self.g)) + \
                  " + bias[oc])"
        if self.res:
            body.append(f"            const float *restrict rp = res + (ptrdiff_t)oc * {out.ps} + {out.origin};")
            val += f" + rp[oh * {out.ld} + ow]"
        body += [f"            for (int oh = 0; oh < {out.H}; oh++) for (int ow = 0; ow < {out.W}; ow++)",
                 f"                op[oh * {out.ld} + ow] = {act_scalar_c(self.act, val)};",
                 "        }", "    }", "}"]
        return "\n".join(body) + "\n"


class _ChannelMajorEmitter(_FlatEmitter):
    """The channel-major layout for tiny output planes: input channel outer, filters inner.

    Why: in the flat layout every kernel of every filter fetches its channel's tap copies from
    L2 (a 512-channel layer's copies are 256-300 KB), and the cost per kernel stays the same
    whatever its FMA count. Here a thread takes a share of the input channels; for each it
    builds the tap copies once (in L1), keeps a mask's tap vectors in registers for the whole
    mask run, and adds each kernel into its filter's partial sums (a whole output plane per
    filter: F x 16 floats for 4x4, in L1/L2), so the only per-kernel traffic is the filter's
    partials and the weights. After a barrier the threads' partials are summed per filter,
    with bias, residual and activation, into the output layout.

    The weights are the transposed layer in FKW1 (``gen_pattern_conv``): runs per (input
    channel, mask), ``cidx`` holding output channels, threads split channels by tap count.
    Tap packing (``pack`` > 1) works as in the flat layout; partials are then one vector per
    filter whose g lane groups are summed at the end.

    ``wpf`` > 0 prefetches the weight stream that many floats ahead, one prefetch per kernel.
    These layers stream their weights once per image (a 512->512 layer at pattern-only
    sparsity: 4.7 MB, from L3 or memory) at ~2.5 cycles per kernel, faster than the hardware
    prefetcher keeps up with. Measured in the model (VGG-16 CIFAR 2.25x, ``profile``, 12
    interleaved rounds, AVX-512): 512->512 @2x2 140 -> 108 us, @4x4 162 -> 139 us, the
    whole model 1.32 -> 1.12 ms (WEIGHT_PREFETCH: 4 KB; 4 KB to 32 KB ahead gave the same).
    ``ipf`` prefetches the plane region the copy reads ``ipf`` channels ahead, as in the
    channel-tile layout: ResNet-18 8x layer4 1.13-1.25x with the vCPUs apart, 1.00 together;
    VGG-16 CIFAR 2.25x 1.047 together, 1.131 apart (benchmarks/ab_models.py).
    """

    TRANSPOSED = True

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target):
        super().__init__(name, sp, lay, shape, act, has_residual, sched, target)
        self.wpf, self.ipf = int(sched["wpf"]), int(sched["ipf"])

    def _part_floats(self) -> int:
        """Partial-sum floats per filter."""
        return self.vl if self.g > 1 else self.hwp

    def _tap_vectors(self, p: int) -> list[tuple[str, str]]:
        """(C name, load) of mask ``p``'s tap vectors, loaded once per run from the copies."""
        if self.g > 1:
            return [(f"x{i}", f"vloada(col + {self.moff[p] + i * self.vl})")
                    for i in range(self.slots[p] // self.g)]
        return [(f"x{j}_{v}", f"vloada(col + {t * self.hwp + v * self.vl})")
                for j, t in enumerate(mask_taps(self.sp.masks[p])) for v in range(self.nvt)]

    def _kernel(self, p: int) -> list[str]:
        """Add kernel ``k`` (mask ``p``) into its filter's partial sums.

        The partial is added last (``w0*x0 + ... + partial``), so the FMA chain does not start
        from its load: C evaluates left to right and GCC keeps that order (no -ffast-math), so
        the partial-first form put an L1/L2 load plus four dependent FMAs on every output
        vector's path. ResNet-18 ImageNet 8x (benchmarks/ab_models.py, 120 s): every channel-major
        and channel-tile layer 1.03-1.08x, the model 1.016 with the vCPUs together, 1.014 apart.
        """
        nt, vl, S = len(mask_taps(self.sp.masks[p])), self.vl, self._part_floats()
        lines = [f"float *restrict pp = part + (ptrdiff_t)cidx[k] * {S};"]
        if self.g > 1:
            terms = " + ".join(f"{self._weight_vec(p, 0, i)} * x{i}" for i in range(self.slots[p] // self.g))
            return lines + [f"vstore(pp, {terms} + vloada(pp));"]
        lines += [f"const vf w{j} = vbcast(wk[{j}]);" for j in range(nt)]
        for v in range(self.nvt):
            terms = " + ".join(f"w{j} * x{j}_{v}" for j in range(nt))
            lines.append(f"vstore(pp + {v * vl}, {terms} + vloada(pp + {v * vl}));")
        return lines

    def _epilogue(self) -> list[str]:
        """Sum the threads' partials of filter f (+ bias, residual, activation) into the output."""
        out, S, vl = self.sh.out, self._part_floats(), self.vl
        F = self.sh.out.C
        lines = [f"float tmp[{S}] __attribute__((aligned(64)));"]
        for v in range(S // vl):
            lines += [f"{{ vf a = vloada(scr + (ptrdiff_t)f * {S} + {v * vl});",
                      f"  for (int q = 1; q < nt; q++) a += vloada(scr + ((ptrdiff_t)q * {F} + f) * {S} + {v * vl});",
                      f"  vstore(tmp + {v * vl}, a); }}"]
        val = f"tmp[oh * {out.W} + ow]"
        if self.g > 1:
            val = "(" + " + ".join(f"tmp[{i * self.hw} + oh * {out.W} + ow]" for i in range(self.g)) + ")"
        val += " + bias[f]"
        lines.append(f"float *restrict op = out + (ptrdiff_t)f * {out.ps} + {out.origin};")
        if self.res:
            lines.append(f"const float *restrict rp = res + (ptrdiff_t)f * {out.ps} + {out.origin};")
            val += f" + rp[oh * {out.ld} + ow]"
        lines += [f"for (int oh = 0; oh < {out.H}; oh++) for (int ow = 0; ow < {out.W}; ow++)",
                  f"    op[oh * {out.ld} + ow] = {act_scalar_c(self.act, val)};"]
        return lines

    def _input_prefetch(self) -> list[str]:
        """Prefetch the plane region the copy reads (its rows, vector by vector), ``ipf`` ahead."""
        sh, inp, vl = self.sh, self.sh.inp, self.vl
        rows, cols = (sh.out.H - 1) * sh.stride + 3, (sh.out.W - 1) * sh.stride + 3
        starts = [r * inp.ld + c for r in range(rows) for c in range(0, cols, vl)]
        return ["        " + x for x in _channel_prefetch(self.ipf, "i1", "src", inp.ps, starts, vl, self.line)]

    def emit(self) -> str:
        lay, sh, out, inp = self.lay, self.sh, self.sh.out, self.sh.inp
        F, C, S, CS = out.C, inp.C, self._part_floats(), self._cs()
        off0 = (inp.pad - sh.pad) * inp.ld + (inp.pad - sh.pad)
        body = [*_header(self.name, sh, lay, self.target, f"channel-major, pack {self.g}"),
                *_fkw_prologue(self.name, lay.offsets),
                "    const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
                f"    PS_SCRATCH(scr, (size_t)nt * {F * S}, \"{self.name}\");  /* partials: summed across threads */",
                f"    float *restrict part = scr + (size_t)t * {F * S};",
                f"    PS_PRIVATE(col, {CS}, \"{self.name}\");",
                f"    memset(part, 0, {F * S} * sizeof(float));",
                f"    const int i0 = ps_split(cost, {C}, t, nt), i1 = ps_split(cost, {C}, t + 1, nt);",
                "    for (int i = i0; i < i1; i++) {",
                f"        const float *restrict src = in + (ptrdiff_t)perm[i] * {inp.ps} + {off0};",
                *self._input_prefetch(),
                "        float *restrict dst = col;",
                *["        " + x for x in self._copy()],
                "        const float *restrict wk = wts + wptr[i];",
                f"        const int32_t *restrict ri = runs + (ptrdiff_t)i * {lay.P};"]
        for p in range(lay.P):
            nt = len(mask_taps(self.sp.masks[p]))
            body.append(f"        {{  /* mask {p} */")
            body += [f"            const vf {n} = {ld};" for n, ld in self._tap_vectors(p)]
            body.append(f"            for (int k = ri[{p}]; k < ri[{p + 1}]; k++, wk += {nt}) {{")
            if self.wpf:
                body.append(f"                __builtin_prefetch(wk + {self.wpf}, 0, 3);")
            body += ["                " + x for x in self._kernel(p)]
            body += ["            }", "        }"]
        body += ["    }", "    ps_barrier();", "    #pragma omp for schedule(static) nowait",
                 f"    for (int f = 0; f < {F}; f++) {{", *["        " + x for x in self._epilogue()], "    }", "}"]
        return "\n".join(body) + "\n"


class _ChannelTileEmitter:
    """The channel-tile layout (``ct``): output tiles outer, input channels, then filters.

    Why: a stride-2 output reads a 4x larger input footprint than a stride-1 one, spread over
    four phase planes, so the row layout (filters inner, each kernel fetching its channel's
    rows) ran at a third of its stride-1 speed. Here a thread takes whole tiles (``rows`` output
    rows of ``vecs`` vectors); for each input channel it loads the tile's input vectors of one mask
    run into registers once, then every kernel of that run (one per filter using the channel
    with that mask) costs its weight broadcasts and a read-modify-write of that filter's
    partial tile (F x rows x vecs vectors, L1 or L2). After the last channel the partials get
    bias, residual and activation and go to the output. Threads split tiles, so no reduction.
    Weights are the transposed layer in FKW1, as in the channel-major layout.

    ``hoist`` 1 loads the distinct input vectors of all masks once per channel instead of per
    mask run (they outnumber the registers, so the compiler keeps some on the stack, reloaded
    aligned, where the run loads would cross cache lines). At 8x a run holds 2-5 kernels, so its
    loads are a large share of its work. ResNet-18 ImageNet 8x in the model
    (benchmarks/ab_models.py, AVX-512): stride-2 layers 1.05 and 1.19x faster, the stride-1 ones
    0.94-0.99x; alone (pattern_kernel.py, 2 threads) stride 2 1.05x, stride 1 0.93-0.98x. So it is
    on by default for stride 2 only, and both are in the tuning space.

    ``s2`` 1 (stride 2, the default) reads the input in place through its halo with
    ``ps_load_s2`` (two loads and a shuffle per vector, loaded once per channel and tile)
    instead of through phase planes: the planes' copy (the prep, the whole input written
    again) cost as much as a third of these layers. ResNet-18 ImageNet 8x
    (benchmarks/ab_models.py, 120 s): layer2.0.conv1 1.36x, layer3.0.conv1 1.18x with the vCPUs
    together (1.51x, 1.50x apart), the model 1.019 together, 1.014 apart.

    ``ipf`` > 0 prefetches, at the start of each channel, the tile's input lines of the channel
    ``ipf`` ahead. ResNet-18's activations (0.8 MB a tensor at 56x56) do not stay in L2, and a
    tile's rows of one channel are a few scattered lines the hardware prefetcher does not
    predict. ResNet-18 ImageNet 8x (benchmarks/ab_models.py, 2 channels ahead): 1.037 with the
    vCPUs together, 1.133 apart; layer1 1.05-1.22x together, up to 1.59x apart.
    """

    TRANSPOSED = True

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target):
        self.name, self.sp, self.lay, self.sh = name, sp, lay, shape
        self.act, self.res, self.target = act, has_residual, target
        cpu = target.require_cpu(name)
        self.vl = vl = cpu.lanes
        self.line = cpu.cache_line // 4  # floats per cache line
        out = shape.out
        self.nv = -(-out.W // vl)
        self.V = int(sched["vecs"])
        self.R = int(sched.get("rows", 1))  # output rows per tile
        self.T = self.R * self.V * vl  # floats of one filter's partial tile
        self.tail_lanes = out.W - (self.nv - 1) * vl
        self.acc = input_access(name, channels=shape.inp.C, k=3, stride=shape.stride, padding=shape.pad,
                                in_layout=shape.inp, Ho=out.H, Wo=out.W, allow_strided=bool(sched.get("s2")),
                                row_align=4, vl=vl)
        self.load = VECTOR_LOAD[self.acc.step]
        self.hoist = int(sched["hoist"])
        self.ipf = int(sched["ipf"])

    def _off(self, t: int, r: int, v: int) -> int:
        """Offset from the tile's input origin of tap ``t``'s vector ``v`` at tile row ``r``."""
        return self.acc.tap_off[t] + r * self.acc.row_stride + v * self.vl * self.acc.step

    def _inputs(self, R: int, V: int) -> list[int]:
        """The distinct input vectors (offsets) the masks in use read on an R x V tile."""
        return sorted({self._off(t, r, v) for m in self.sp.masks for t in mask_taps(m)
                       for r in range(R) for v in range(V)})

    def _load(self, off: int) -> str:
        """An input vector: loaded where the run needs it, or the channel's hoisted copy."""
        return f"u{off}" if self.hoist else f"{self.load}(ib + {off})"

    def _run(self, p: int, R: int, V: int) -> list[str]:
        """Mask ``p``'s run of the current channel, on a tile of ``R`` rows x ``V`` vectors (each
        partial added after its products, as in _ChannelMajorEmitter._kernel)."""
        taps, vl = mask_taps(self.sp.masks[p]), self.vl
        lines = [f"{{  /* mask {p} */"]
        lines += [f"    const vf x{j}_{r}_{v} = {self._load(self._off(t, r, v))};"
                  for j, t in enumerate(taps) for r in range(R) for v in range(V)]
        lines.append(f"    for (int k = ri[{p}]; k < ri[{p + 1}]; k++, wk += {len(taps)}) {{")
        lines.append(f"        float *restrict pp = part + (ptrdiff_t)cidx[k] * {self.T};")
        lines += [f"        const vf w{j} = vbcast(wk[{j}]);" for j in range(len(taps))]
        for r in range(R):
            for v in range(V):
                o = (r * self.V + v) * vl
                terms = " + ".join(f"w{j} * x{j}_{r}_{v}" for j in range(len(taps)))
                lines.append(f"        vstore(pp + {o}, {terms} + vloada(pp + {o}));")
        return lines + ["    }", "}"]

    def _tile(self, R: int, V: int) -> str:
        """The function doing one tile of ``R`` rows x ``V`` vectors at output row ``oh``, vector ``v0``."""
        lay, out, vl, acc = self.lay, self.sh.out, self.vl, self.acc
        F, C, T = out.C, self.sh.inp.C, self.T
        lines = [f"static inline __attribute__((always_inline)) void {self.name}_ct{R}x{V}(",
                 "    const float *restrict src, float *restrict out, const int32_t *restrict perm,",
                 "    const int32_t *restrict runs, const uint16_t *restrict cidx, const int32_t *restrict wptr,",
                 "    const float *restrict wts, const float *restrict bias, const float *restrict res,",
                 "    float *restrict part, int oh, int v0) {",
                 f"    memset(part, 0, {F * T} * sizeof(float));",
                 f"    for (int i = 0; i < {C}; i++) {{",
                 f"        const float *restrict ib = src + (ptrdiff_t)perm[i] * {acc.cs} + {acc.origin}"
                 f" + (ptrdiff_t)oh * {acc.row_stride} + v0 * {vl * acc.step};",
                 "        const float *restrict wk = wts + wptr[i];",
                 f"        const int32_t *restrict ri = runs + (ptrdiff_t)i * {lay.P};"]
        inputs = self._inputs(R, V)
        lines += ["        " + x for x in _channel_prefetch(self.ipf, str(C), "ib", acc.cs, inputs, vl * acc.step, self.line)]
        if self.hoist:
            lines += [f"        const vf u{o} = {self.load}(ib + {o});" for o in inputs]
        for p in range(lay.P):
            lines += ["        " + x for x in self._run(p, R, V)]
        lines += ["    }", "    const int lastv = v0 + " + str(V) + f" == {self.nv};",
                  f"    const vi tm = vtailmask({self.tail_lanes});",
                  f"    for (int f = 0; f < {F}; f++) {{",
                  f"        float *restrict op = out + (ptrdiff_t)f * {out.ps} + {out.origin} + oh * {out.ld} + v0 * {vl};",
                  "        const vf bv = vbcast(bias[f]);"]
        if self.res:
            lines.append(f"        const float *restrict rp = res + (ptrdiff_t)f * {out.ps} + {out.origin}"
                         f" + oh * {out.ld} + v0 * {vl};")
        for r in range(R):
            for v in range(V):
                o = r * out.ld + v * vl
                val = f"vloada(part + f * {T} + {(r * self.V + v) * vl}) + bv" + (f" + vload(rp + {o})" if self.res else "")
                val = act_c(self.act, val)
                if v == V - 1:
                    lines.append(f"        if (lastv) vstore(op + {o}, vand({val}, tm)); else vstore(op + {o}, {val});")
                else:
                    lines.append(f"        vstore(op + {o}, {val});")
        lines += ["    }", "}"]
        return "\n".join(lines)

    def emit(self) -> str:
        lay, sh, out, acc, vl = self.lay, self.sh, self.sh.out, self.acc, self.vl
        F, R, V, nv, T = out.C, self.R, self.V, self.nv, self.T
        rows = sorted({R} | ({out.H % R} if out.H % R else set()), reverse=True)
        cols = sorted({V} | ({nv % V} if nv % V else set()), reverse=True)
        ntile_cols, ntile_rows = -(-nv // V), -(-out.H // R)

        def call(r: int, w: int) -> str:
            return f"{self.name}_ct{r}x{w}({acc.src}, out, perm, runs, cidx, wptr, wts, bias, res, part, oh, v0);"

        body = [*_header(self.name, sh, lay, self.target, f"channel-tile layout, {R} rows x {V} vectors per tile"),
                *[self._tile(r, w) for r in rows for w in cols],
                *_fkw_prologue(self.name, lay.offsets),
                *acc.scratch.strip("\n").splitlines(),  # phase planes (shared), if any
                f"    PS_PRIVATE(part, {F * T}, \"{self.name}\");",
                "    (void)cost;",
                "    {",
                *acc.prep.strip("\n").splitlines(),
                "    }",
                "    #pragma omp for schedule(static) nowait",
                f"    for (int q = 0; q < {ntile_rows * ntile_cols}; q++) {{",
                f"        const int oh = q / {ntile_cols} * {R}, v0 = q % {ntile_cols} * {V};"]
        def by_cols(r: int) -> str:  # full-width tiles, or the right-hand remainder
            if len(cols) == 1:
                return call(r, cols[0])
            return f"{{ if (v0 + {V} <= {nv}) {call(r, cols[0])} else {call(r, cols[1])} }}"

        if len(rows) == 1:
            body.append("        " + by_cols(R))
        else:  # full-height tiles, or the bottom remainder
            body += [f"        if (oh + {R} <= {out.H}) {by_cols(R)}", f"        else {by_cols(rows[1])}"]
        body += ["    }", "}"]
        return "\n".join(body) + "\n"


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
