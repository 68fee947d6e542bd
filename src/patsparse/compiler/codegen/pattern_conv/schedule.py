"""The pattern conv's schedule policy: which layout and tile a layer gets by default, the
tuning space, and the checks a given schedule passes. Reads the target's registers, lanes and
cache sizes, never an ISA."""

from __future__ import annotations

from ....errors import InputError
from ...layout import Layout
from ...reorder import LayerSparsity
from ...target import CpuCaps, Target
from ..common import WEIGHT_PREFETCH


def max_acc(cpu: CpuCaps) -> int:
    """Accumulators per row tile: the register file minus 4 weight broadcasts and a temporary
    (and, with 32 registers, room for the input vectors a tile reuses). Where the weight
    broadcasts need registers of their own (NEON: no FMA memory operand), 32 registers hold 12:
    the AVX-512 tile of 6 x 4 spilled in GCC's aarch64 code, and llvm-mca gave its hot loop 5.6
    FLOP/cycle against 7.3 for 3 x 4 (256->256 @56x56, 8x; LLVM 14's A57 model of the A76, see
    benchmarks/arm_estimate.py: static estimates, not measurements)."""
    if cpu.vector_registers < 32:
        return 11
    return 24 if cpu.fma_broadcast_operand else 12


CT_VECS = 2  # the channel-tile layout's tile width in vectors with 16 registers (see default_schedule)


FLAT_MAX_VECS = 4          # flat layout: the whole output plane in at most this many vectors
FLAT_MAX_SCRATCH = 1 << 19  # bytes of per-tap input copies (C * 9 planes) the flat layout may use


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
    """Default ``hoist`` of a channel tile: on at stride 2 only (ChannelTileEmitter says why)."""
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
    every lane holds a real output where rows would leave most of a vector to padding.

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


def input_prefetch_distance(sched: dict, where: str) -> int:
    """The checked ``ipf`` of a channel-tile or channel-major schedule (default INPUT_PREFETCH)."""
    ipf = sched.get("ipf", INPUT_PREFETCH)
    if not isinstance(ipf, int) or ipf < 0:
        raise InputError(f"{where}: schedule ipf (input channels prefetched ahead) must be an int >= 0, "
                         f"got {ipf!r}")
    return ipf


def resolve_schedule(schedule: dict | None, inp: Layout, out: Layout, target: Target, where: str,
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
                "ipf": input_prefetch_distance(sched, where), **s2}
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
            sched["ipf"] = input_prefetch_distance(sched, where)
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





# cycles per (kept tap, output vector): an FMA on one of two ports plus ~10% for the kernel's
# index, broadcasts and loop. Fitted where the pattern kernel and Winograd are close (2.25x,
# VGG-16 CIFAR, in-process A/B of the two families on the same weights, AVX-512, 2 threads):
# 64->64 @32x32 pattern 1.08x faster, 128->128 @16x16 Winograd 1.24x, 256->256 @8x8 pattern 1.2x
TAP_VECTOR_CYCLES = 0.55


def cost(sp: LayerSparsity, inp: Layout, out: Layout, target: Target) -> float:
    """Modelled cycles of one call of the pattern kernel (its default layout), in igemm.ranked's
    units, so that kernels.py can weigh it against the dense conv's schedules: every kept tap
    costs one FMA per output vector (row vectors; whole-plane vectors on the small planes the
    channel-major and flat layouts take, fewer where taps share a vector)."""
    vl = target.require_cpu("pattern conv cost").lanes
    sched = default_schedule(inp, out, target)
    if sched["layout"] in ("cm", "flat"):
        vecs = -(-(out.H * out.W) // vl) / sched.get("pack", 1)
    else:
        vecs = out.H * -(-out.W // vl)
    return TAP_VECTOR_CYCLES * int(sp.taps_per_kernel().sum()) * vecs
