"""A 1x1 conv pruned in virtual 3x3 kernels (compiler/grouped.py) as a sparse GEMM with a
gather fixed at compile time.

Each kept virtual kernel of a filter is a group g and a mask: its taps are input channels
9g + t for the mask's positions t. As in the 3x3 pattern kernel, the reordered FKW1 layer
(cidx = g) makes every (filter, mask) a contiguous run, so the code loops over a run with the
mask's channel offsets t * cs as constants: per kernel one index, its weight broadcasts, and a
tap's load and FMA per vector of the tile. No per-weight index, no branch on the pattern.

Vectorised over output pixels: a tile is NV vectors of VL pixels, either row vectors read from
the layout in place (stride 1) or vectors over the flattened plane (``compact``: a prep packs
each channel's pixels densely, access.compact_access; stride 2 and small planes, where row
vectors would leave lanes idle). A filter's taps accumulate into four accumulators per vector,
one per tap of a mask (a dense kernel's nine cycle over them): the chain of FMAs into one
register is then 4 x NV apart, enough to hide the FMA latency without unrolling over kernels
(runs have any length), and the four are summed at the store.

Work split: tiles of pixels outer, filters inner: a tile's input vectors are copied once into a
contiguous panel (GroupedEmitter) that every filter reads. Threads take whole pixel tiles when
there are enough to share evenly, else the reordered filters by tap count (ps_split, as the
pattern kernel does). One load per FMA bounds the kernel at about half the dense GEMM's FLOP
rate, which is why the compiler runs it only on sparse enough layers (compiler/grouped.py).

``expand_c`` renders the same reduction for one row of the fused 1x1 + depthwise kernel
(pw_dw.py), where a pruned expand conv writes its row into the ring.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError, UnsupportedError
from ..grouped import analyse_grouped, virtual_weight
from ..layout import Layout
from ..reorder import LayerSparsity, mask_taps, reorder
from ..storage import FKWLayout, pack as fkw_pack, plan
from ..target import Target
from .access import compact_access, compact_rows_c
from .base import GeneratedKernel, act_c
from .common import check_act, check_layouts, check_name, conv_out_size, helpers_c
from .igemm import COMPACT_MAX_SHARE, _slots
from .pattern_conv.shared import fkw_prologue, fkw_sections, support_c

TAP_ACCS = 4  # accumulators per tile vector: one per tap of a 4-tap mask


def max_nv(target: Target) -> int:
    """Widest tile whose accumulators (TAP_ACCS per vector), four weight broadcasts and a couple
    of loaded vectors fit the register file: 6 vectors with 32 registers, 2 with 16."""
    return max(1, (target.require_cpu("grouped 1x1").vector_registers - 6) // TAP_ACCS)


def balanced_nv(slots: int, widest: int) -> int:
    """The tile width that covers ``slots`` vectors in as few tiles as ``widest`` does, with the
    least padding (14 row vectors: 5, 5, 4 rather than 6, 6, 2 of which 4 recompute a slot)."""
    tiles = -(-slots // widest)
    return max(1, -(-slots // tiles))


def use_compact(stride: int, Ho: int, Wo: int, vl: int) -> bool:
    """Vectors over the flattened plane: always at stride 2 (rows would need a deinterleave), and
    where row vectors leave lanes idle as the implicit GEMM decides it (igemm.schedules)."""
    return stride != 1 or _slots(Ho, Wo, vl, True) <= COMPACT_MAX_SHARE * _slots(Ho, Wo, vl)


def schedules(*, stride: int, Ho: int, Wo: int, target: Target) -> list[dict]:
    """Candidate schedules, the default first: {"nv": tile vectors, "compact": 0 or 1}."""
    vl = target.require_cpu("grouped 1x1").lanes
    widest = max_nv(target)
    default_cp = use_compact(stride, Ho, Wo, vl)
    cands = []
    for cp in (default_cp,) if stride != 1 else (default_cp, not default_cp):
        ns = _slots(Ho, Wo, vl, cp)
        for nv in dict.fromkeys((balanced_nv(ns, widest), min(widest, ns), max(1, widest // 2))):
            cands.append({"nv": nv, "compact": int(cp)})
    return cands


def default_gb(nv: int, target: Target) -> int:
    """Groups per channel block: the block's panel (9 channels a group, NV vectors a channel)
    fills at most half of L2. Why not L1: each block costs every filter a partial sum and a
    pass over its mask runs, and at 8x a filter keeps about one kernel per L1-sized block; one
    block measured 1.2-1.7x faster there (AVX-512, one thread, MobileNet-V2's 1x1 shapes) and
    alike at 2.25x, where one shape (960 -> 320 at 7x7) ran 30x slower in L1-sized blocks."""
    cpu = target.require_cpu("grouped 1x1")
    return max(1, cpu.l2_bytes // 2 // (9 * nv * cpu.lanes * 4))


class GroupedEmitter:
    """The C of one grouped layer's reduction over a tile of NV pixel vectors (``tile``).

    Why a panel: the tile's input vectors sit one channel plane apart in the layout, and a
    plane stride is often a multiple of 2 KB, so the few L1 sets those addresses map to are
    thrashed and every tap is read from L2. The tile copies its vectors of a block of GB groups
    into a contiguous per-thread panel (default_gb); every filter then reads its taps of that
    block from there. With more than one block, each filter's per-mask cursors and partial sums
    carry from block to block (kernels ascend by group inside a run)."""

    def __init__(self, name: str, sp: LayerSparsity, lay: FKWLayout, *, nv: int, gb: int, channels: int, vl: int):
        self.name, self.sp, self.lay, self.nv, self.channels, self.vl = name, sp, lay, nv, channels, vl
        self.G = lay.C
        self.gb = max(1, min(gb, self.G))
        self.nb = -(-self.G // self.gb)
        self.w = nv * vl  # floats per channel in the panel

    @property
    def private_floats(self) -> int:
        """Floats of the thread's own scratch: the panel, and partial sums with several blocks."""
        return self.gb * 9 * self.w + (self.lay.F * self.w if self.nb > 1 else 0)

    def decls(self, indent: str, at: str | None = None) -> list[str]:
        """C declaring the thread's panel and, with several blocks, its partial sums and cursors
        (every thread of the team runs it, at the top of the kernel). The scratch is the
        thread's private arena, or ``private_floats`` at ``at`` in a kernel that carves it
        from its own (a second PS_PRIVATE would return, and may move, the same arena)."""
        lines = [f"float *restrict panel = {at};" if at else
                 f'PS_PRIVATE(panel, {self.private_floats}, "{self.name}");']
        if self.nb > 1:
            lines += [f"float *restrict part = panel + {self.gb * 9 * self.w};",
                      f"int *restrict cur = (int *)__builtin_alloca(sizeof(int) * {max(1, self.lay.F * self.lay.P)});"]
        return [indent + x for x in lines]

    def tile(self, src: list[str], src_cs: int, f0: str, f1: str, store: list[str], indent: str) -> list[str]:
        """C for one tile: ``src[v]`` points at tile vector v of input channel 0, channels
        ``src_cs`` floats apart; reordered filters [f0, f1) each end in ``store``, C that sees
        ``oc`` (the output channel) and ``sum{v}`` (the tile's result before bias)."""
        V, P, w = range(self.nv), self.lay.P, self.w
        lines = []
        if self.nb > 1:
            lines.append(f"for (int f = {f0}; f < {f1}; f++) for (int p = 0; p < {P}; p++) "
                         f"cur[(f - {f0}) * {P} + p] = runs[f * {P} + p];")
        lines.append(f"for (int b = 0; b < {self.nb}; b++) {{" if self.nb > 1 else "{ const int b = 0;")
        lines += [f"    const int c1 = b * {9 * self.gb} + {9 * self.gb} < {self.channels} ? "
                  f"b * {9 * self.gb} + {9 * self.gb} : {self.channels};",
                  f"    for (int c = b * {9 * self.gb}; c < c1; c++) {{",
                  f"        float *restrict d = panel + (size_t)(c - b * {9 * self.gb}) * {w};",
                  "        " + " ".join(f"vstore(d + {v} * VL, vload({src[v]} + (size_t)c * {src_cs}));" for v in V),
                  "    }",
                  f"    const float *restrict pb = panel - (ptrdiff_t)b * {9 * self.gb * w};",
                  f"    const int hi = (b + 1) * {self.gb}; (void)hi;",
                  f"    for (int f = {f0}; f < {f1}; f++) {{",
                  "        const int oc = perm[f];",
                  f"        const int32_t *restrict rr = runs + (ptrdiff_t)f * {P};",
                  "        const float *restrict wq = wts + wptr[f];"]
        if self.nb > 1:
            lines.append(f"        int *restrict cu = cur + (ptrdiff_t)(f - {f0}) * {P};")
        lines += ["        " + x for x in self._reduce(f0)]
        if self.nb > 1:
            lines += [f"        if (b < {self.nb - 1}) {{",
                      *(f"            vstore(part + (size_t)(f - {f0}) * {w} + {v} * VL, sum{v});" for v in V),
                      "            continue;", "        }"]
        lines += ["        " + x for x in store]
        lines += ["    }", "}"]
        return [indent + x for x in lines]

    def _reduce(self, f0: str) -> list[str]:
        """C accumulating filter ``f``'s kernels of block ``b`` into ``sum{v}``."""
        V, w, blocked = range(self.nv), self.w, self.nb > 1
        ntap = max(len(mask_taps(m)) for m in self.sp.masks) if self.sp.masks else 1
        J = range(min(TAP_ACCS, ntap))
        first = (lambda v: f"b ? vload(part + (size_t)(f - {f0}) * {w} + {v} * VL) : (vf){{0}}") if blocked else \
            (lambda v: "(vf){0}")
        lines = ["vf " + ", ".join(f"a{j}_{v} = {first(v) if j == 0 else '(vf){0}'}" for j in J for v in V) + ";"]
        for p, m in enumerate(self.sp.masks):
            taps = mask_taps(m)
            n = len(taps)
            if blocked:  # this block's kernels of the run: from the cursor while the group is below hi
                lines += [f"{{ /* mask {p}: channels 9g + {list(taps)} */",
                          f"int k = cu[{p}]; const float *restrict wk = wq + (ptrdiff_t)(k - rr[{p}]) * {n};",
                          f"for (; k < rr[{p + 1}] && cidx[k] < hi; k++, wk += {n}) {{"]
            else:
                lines += [f"{{ /* mask {p}: channels 9g + {list(taps)} */",
                          f"const float *restrict wk = wq;",
                          f"for (int k = rr[{p}]; k < rr[{p + 1}]; k++, wk += {n}) {{"]
            lines.append(f"    const float *restrict x = pb + (ptrdiff_t)cidx[k] * {9 * w};")
            for c0 in range(0, n, TAP_ACCS):  # a dense kernel's nine taps, four at a time
                chunk = list(enumerate(taps))[c0:c0 + TAP_ACCS]
                lines.append("    {" + " ".join(f"const vf w{j} = vbcast(wk[{j}]);" for j, _ in chunk))
                for v in V:
                    lines.append("      " + " ".join(f"a{j % TAP_ACCS}_{v} += w{j} * vload(x + {t * w + v * self.vl});"
                                                     for j, t in chunk))
                lines.append("    }")
            lines.append("}")
            if blocked:
                lines.append(f"cu[{p}] = k;")
            lines.append(f"wq += (ptrdiff_t)(rr[{p + 1}] - rr[{p}]) * {n}; }}")
        for v in V:
            terms = [f"a{j}_{v}" for j in J]
            total = f"({terms[0]} + {terms[1]}) + ({terms[2]} + {terms[3]})" if len(terms) == 4 else " + ".join(terms)
            lines.append(f"const vf sum{v} = {total};")
        return lines


def pack_grouped(sp: LayerSparsity, weight: np.ndarray, where: str) -> np.ndarray:
    """A (O, I, 1, 1) weight with sparsity ``sp`` (analyse_grouped) in FKW1, groups as channels."""
    return fkw_pack(sp, reorder(sp), virtual_weight(weight, where), where)


def gen_grouped1x1(name: str, weight: np.ndarray, *, stride: int = 1, padding: int = 0,
                   in_layout: Layout, out_layout: Layout, act: str = "none", has_residual: bool = False,
                   schedule: dict | None = None, target: Target, sparsity: LayerSparsity | None = None,
                   where: str | None = None) -> GeneratedKernel:
    """The grouped sparse kernel ``name`` for a (O, I, 1, 1) ``weight`` (stride 1 or 2, no padding).

    The code depends on which masks the weights use (read from the weights, or ``sparsity``:
    compiler.grouped.analyse_grouped); ``pack`` of the result turns a weight with that sparsity
    into the FKW1 array the kernel reads. ``schedule``: {"nv", "compact"} (``schedules``)."""
    where = where or name
    check_name(name)
    check_act(act, where)
    vl = target.require_cpu(where).lanes
    w = np.asarray(weight, dtype=np.float32)
    if stride not in (1, 2) or padding != 0:
        raise UnsupportedError(f"{where}: grouped 1x1 kernel needs stride 1 or 2 and no padding "
                               f"(got stride {stride}, padding {padding})")
    sp = sparsity or analyse_grouped(w, where)
    O, I = w.shape[:2]
    H, W = in_layout.H, in_layout.W
    Ho, Wo = (conv_out_size(n, 1, stride, 0, where) for n in (H, W))
    check_layouts(where, in_layout, out_layout, (I, H, W), (O, Ho, Wo))
    sched = {**schedules(stride=stride, Ho=Ho, Wo=Wo, target=target)[0], **(schedule or {})}
    try:
        nv, compact = int(sched["nv"]), bool(int(sched["compact"]))
        gb = int(sched.get("gb", default_gb(nv, target)))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: schedule must have integer 'nv' and 'compact' (and 'gb'), "
                         f"got {schedule!r}") from None
    if not 1 <= nv <= 16 or gb < 1 or (stride != 1 and not compact):
        raise InputError(f"{where}: schedule nv={nv} out of range (1..16), gb={gb} below 1, or row "
                         f"vectors at stride {stride}")
    ro = reorder(sp)
    lay = plan(sp, ro)
    L, O_ = in_layout, out_layout
    if compact:
        cacc = compact_access(name, channels=I, stride=stride, in_layout=L, Ho=Ho, Wo=Wo)
        cs, scratch, prep = cacc.cs, cacc.scratch, cacc.prep
    else:
        cs, scratch, prep = L.ps, "", ""
    em = GroupedEmitter(name, sp, lay, nv=nv, gb=gb, channels=I, vl=vl)
    ns = _slots(Ho, Wo, vl, compact)
    V = range(nv)
    slots = []
    for v in V:
        slots.append(f"            int s{v} = pt * {nv} + {v}; const int ok{v} = s{v} < {ns}; if (!ok{v}) s{v} = pt * {nv};")
        if compact:
            slots.append(f"            const float *restrict x{v} = scr + (size_t)s{v} * VL;")
        else:
            slots.append(f"            const int oh{v} = s{v} / NVW, w0{v} = s{v} % NVW * VL;")
            slots.append(f"            const float *restrict x{v} = in + {L.origin} + (size_t)oh{v} * {L.ld} + w0{v};")
    stores = [f"float *restrict op = out + (size_t)oc * {O_.ps};",
              f"const float *restrict rp = {f'res + (size_t)oc * {O_.ps}' if has_residual else 'op'}; (void)rp;",
              "const vf bv = vbcast(bias[oc]);"]
    for v in V:
        stores.append(f"if (ok{v}) {{")
        if compact:
            stores += ["    " + x for x in compact_rows_c(f"s{v}", Ho, Wo, O_.origin, O_.ld)]
            val = f"sum{v} + bv" + (" + vload_lanes(rp + o, m)" if has_residual else "")
            stores += [f"      vstore_lanes(op + o, m, {act_c(act, val)});", "    }"]
        else:
            stores.append(f"    const size_t o = {O_.origin} + (size_t)oh{v} * {O_.ld} + w0{v};")
            val = f"sum{v} + bv" + (" + vload(rp + o)" if has_residual else "")
            stores.append(f"    vf y = {act_c(act, val)}; if (w0{v} == LASTW) y = vand(y, tm); vstore(op + o, y);")
        stores.append("}")
    F, nl = lay.F, "\n"
    code = helpers_c(target) + support_c(target) + "\n".join([
        f"/* ---- {name}: grouped 1x1 conv /{stride}, {I}->{O} ch ({lay.C} virtual 3x3 kernels per "
        f"filter), {H}x{W} -> {Ho}x{Wo}, {lay.P} masks, {lay.K} kernels, tile {nv} "
        f"{'plane' if compact else 'row'} vectors, {em.nb} blocks of {em.gb} groups */",
        f'_Static_assert(VL == {vl}, "{name} was generated for {vl}-float vectors; regenerate it on this machine");',
        *fkw_prologue(name, lay.offsets),
        f"    enum {{ NVW = ({Wo} + VL - 1) / VL, NPT = ({ns} + {nv - 1}) / {nv}, LASTW = (NVW - 1) * VL }};",
        f"    const vi tm = vtailmask({Wo} - LASTW); (void)tm;{scratch}",
        *em.decls("    "),
        f"    {{{prep}",
        "        const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
        f"        int t0 = 0, t1 = NPT, f0 = 0, f1 = {F};",
        "        if (NPT % nt == 0 || NPT >= 4 * nt) { t0 = NPT * t / nt; t1 = NPT * (t + 1) / nt; }",
        f"        else {{ f0 = ps_split(cost, {F}, t, nt); f1 = ps_split(cost, {F}, t + 1, nt); }}",
        "        for (int pt = t0; pt < t1; pt++) {",
        *slots,
        *em.tile([f"x{v}" for v in V], cs, "f0", "f1", stores, " " * 12),
        "        }",
        "    }",
        "}", ""])

    def pack(wt: np.ndarray) -> np.ndarray:
        return pack_grouped(sp, wt, where)

    flops = 2 * int(sp.taps_per_kernel().sum()) * Ho * Wo
    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=flops,
                           schedule={"nv": nv, "compact": int(compact), "gb": em.gb, "vl": vl})


def expand_nv(W: int, target: Target) -> int:
    """The fused kernel's default tile for one expanded row of ``W`` pixels."""
    return balanced_nv(-(-W // target.require_cpu("grouped 1x1").lanes), max_nv(target))


def expand_c(name: str, sp: LayerSparsity, *, nv: int, W: int, cin: int, cs: int, ring_ld: int, bias_at: int,
             act: str, target: Target, scratch_at: str) -> tuple[list[str], list[str], int]:
    """C of a pruned expand conv in the fused 1x1 + depthwise kernel (pw_dw.py): (declarations
    for the function's top, after the kernel's private scratch; the loop computing one expanded
    row; floats of private scratch it uses at ``scratch_at``). The row loop reads ``src``
    (input channel 0 of the row, ``cin`` channels ``cs`` apart) and writes each output channel's
    row of ``act(conv + bias)`` at ``slot + channel * ring_ld``, lanes past ``W`` zeroed (``te``);
    the layer is packed at ``w`` (``pack_grouped``), its bias at ``w + bias_at``."""
    vl = target.require_cpu(name).lanes
    lay = plan(sp, reorder(sp))
    em = GroupedEmitter(name, sp, lay, nv=nv, gb=default_gb(nv, target), channels=cin, vl=vl)
    nvw = -(-W // vl)
    V = range(nv)
    loop = [f"for (int vt = 0; vt < {-(-nvw // nv)}; vt++) {{"]
    for v in V:
        loop += [f"    int v{v} = vt * {nv} + {v}; const int ok{v} = v{v} < {nvw}; if (!ok{v}) v{v} = vt * {nv};",
                 f"    const float *restrict x{v} = src + v{v} * VL;"]
    store = [f"const vf eb = vbcast(w[{bias_at} + oc]);"]
    store += [f"if (ok{v}) {{ vf y = {act_c(act, f'sum{v} + eb')}; if (v{v} == {nvw - 1}) y = vand(y, te);"
              f" vstore(slot + (size_t)oc * {ring_ld} + v{v} * VL, y); }}" for v in V]
    loop += em.tile([f"x{v}" for v in V], cs, "0", str(lay.F), store, "    ")
    loop.append("}")
    return fkw_sections(lay.offsets) + em.decls("    ", scratch_at), loop, em.private_floats
