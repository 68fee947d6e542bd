"""A 1x1 conv pruned in virtual 3x3 kernels (compiler/grouped.py) as a sparse GEMM over
gather lists (compiler/gather.py), the structure of XNNPACK's f32-spmm kernels.

Each kept virtual kernel of a filter is a group g and a mask: its taps are input channels
9g + t for the mask's positions t. Unlike a 3x3 kernel's taps (nine pixels of one plane, loaded
once for the whole kernel), these are four channels no other tap of the filter reads, so the
kernel gains nothing from knowing the mask at compile time and loses a loop per mask: it walks
one list of (channel offset, weight) steps per block of ``fb`` filters instead, with one loop
exit per block.

Vectorised over output pixels: a tile is NV vectors of VL pixels, either row vectors read from
the layout in place (stride 1) or vectors over the flattened plane (``compact``: a prep packs
each channel's pixels densely, access.compact_access; stride 2 and small planes, where row
vectors would leave lanes idle). A step broadcasts ``fb`` weights and adds each times the NV
vectors of its channel into that filter's NV accumulators: fb x NV independent FMA chains.

Work split: tiles of pixels outer, filter blocks inner: a tile's input vectors are copied once
into a contiguous panel (GroupedEmitter) that every filter reads. Threads take whole pixel tiles
when there are enough to share evenly, else the filter blocks by step count (ps_split, as the
pattern kernel does). One load per FMA bounds the kernel below the dense GEMM's FLOP rate,
which is why the compiler runs it only on sparse enough layers (compiler/grouped.py). Small
layers run the register-blocked form instead (grouped_reg.py; schedule "reg", ``schedules``),
where a group's input loads feed a whole block of filters.

``row_c`` renders the same reduction for one row of the fused inverted-residual kernel
(pw_dw.py): a pruned expand conv writing its row into the ring, a pruned project conv reading
the depthwise conv's row.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError, UnsupportedError
from ..gather import GatherPlan, gather_plan
from ..grouped import analyse_grouped, kept_weights, register_ok, virtual_weight
from ..layout import Layout
from ..regblock import RegPlan, reg_plan
from ..reorder import LayerSparsity
from ..target import Target
from .access import compact_access, compact_rows_c
from .base import GeneratedKernel, act_c
from .common import check_act, check_layouts, check_name, conv_out_size, helpers_c
from .grouped_reg import RegisterEmitter, reg_fb
from .igemm import COMPACT_MAX_SHARE, _slots
from .pattern_conv.shared import support_c

FB = 2  # filters a step feeds by default (gather.py): 2 x tile accumulators in flight


def max_nv(target: Target, fb: int = FB) -> int:
    """Widest tile whose accumulators (``fb`` per vector), ``fb`` weight broadcasts and a loaded
    vector or two fit the register file, at most 8 vectors: 8 with 32 registers, 5 with 16."""
    return max(1, min(8, (target.require_cpu("grouped 1x1").vector_registers - 2 * fb - 2) // fb))


def balanced_nv(slots: int, widest: int) -> int:
    """The tile width that covers ``slots`` vectors in as few tiles as ``widest`` does, with the
    least padding (14 row vectors: 5, 5, 4 rather than 6, 6, 2 of which 4 recompute a slot)."""
    tiles = -(-slots // widest)
    return max(1, -(-slots // tiles))


def use_compact(stride: int, Ho: int, Wo: int, vl: int) -> bool:
    """Vectors over the flattened plane: always at stride 2 (rows would need a deinterleave), and
    where row vectors leave lanes idle as the implicit GEMM decides it (igemm.schedules)."""
    return stride != 1 or _slots(Ho, Wo, vl, True) <= COMPACT_MAX_SHARE * _slots(Ho, Wo, vl)


def schedules(*, stride: int, Ho: int, Wo: int, target: Target, channels: int = 0, fmas: int = 0) -> list[dict]:
    """Candidate schedules, the default first: {"nv": tile vectors, "compact": 0 or 1, "fb":
    filters per step, "panel": 0 or 1, and "gb" where it differs from default_gb}, or with
    "reg": 1 the register-blocked kernel's (grouped_reg.py; "gb" there: one channel block unless
    given).

    Default: the register-blocked kernel on a tile of one vector when the layer's ``fmas`` (kept
    weights) make little enough code (grouped.REGISTER_MAX_FMAS); then its half-sized filter
    block and two-vector tile. The gather kernel next (the default beyond that size): row
    vectors are read in place (no panel) and compact ones through a panel; the tile as wide as
    the registers and its input footprint allow (panel_nv). Then the other filter block, the
    other side of the panel choice, L1-sized channel blocks when the layer's ``channels``
    overflow one, a narrower tile, the other vector form."""
    vl = target.require_cpu("grouped 1x1").lanes
    cp = use_compact(stride, Ho, Wo, vl)
    ns = _slots(Ho, Wo, vl, cp)

    def cand(fb: int, panel: bool, compact: bool = cp) -> dict:
        nv = balanced_nv(_slots(Ho, Wo, vl, compact), panel_nv(channels, target, fb))
        return {"nv": nv, "compact": int(compact), "fb": fb, "panel": int(panel)}

    def reg(nv: int, fb: int) -> dict:
        return {"nv": nv, "compact": int(cp), "fb": fb, "panel": 0, "reg": 1}

    regs = [reg(nv, fb) for nv, fb in ((1, reg_fb(1, target)), (1, reg_fb(1, target) // 2), (2, reg_fb(2, target)))
            if register_ok(fmas, nv)]
    first = cand(FB, cp)
    cands = [first, cand(2 * FB, cp), cand(FB, not cp)]
    for c in cands[:2]:
        gb = l1_gb(c["nv"], target)
        if c["panel"] and 9 * gb < channels:
            cands.append({**c, "gb": gb})
    cands.append({**first, "nv": max(1, min(first["nv"], ns) // 2)})
    if stride == 1:
        cands.append(cand(FB, not cp, not cp))
    return [dict(t) for t in dict.fromkeys(tuple(sorted(c.items())) for c in regs + cands)]


def pick(cands: list[dict], schedule: dict | None) -> dict:
    """``schedule`` over the first of ``cands`` of its kind: a schedule that names no "reg" but
    other keys is the gather kernel's (schedules written before the register kernel stay so)."""
    s = dict(schedule or {})
    want = int(s.get("reg", 0 if s else cands[0].get("reg", 0)))
    return {**next((c for c in cands if int(c.get("reg", 0)) == want), cands[0]), **s}


def panel_nv(channels: int, target: Target, fb: int = FB) -> int:
    """The widest tile (max_nv) whose input, all ``channels`` of its vectors (in a panel or in
    place), fills at most a quarter of L2. Why: a step loads its channel's tile vectors from
    anywhere in that input; a project conv (576-960 channels) ran 1.2-1.5x faster at 2-3
    vectors (AVX-512, one thread) than at the register file's 7-8, an expand conv (16-160
    channels) alike at any width."""
    cpu = target.require_cpu("grouped 1x1")
    return max(1, min(max_nv(target, fb), cpu.l2_bytes // 4 // (max(1, channels) * cpu.lanes * 4)))


def l1_gb(nv: int, target: Target) -> int:
    """Groups per channel block whose panel fills half of L1."""
    cpu = target.require_cpu("grouped 1x1")
    return max(1, cpu.l1_bytes // 2 // (9 * nv * cpu.lanes * 4))


def default_gb(nv: int, target: Target) -> int:
    """Groups per channel block: the block's panel (9 channels a group, NV vectors a channel)
    fills at most half of L2. Why not L1: each block costs every filter a partial sum and a
    loop exit, and at 8x a filter keeps about one kernel per L1-sized block."""
    cpu = target.require_cpu("grouped 1x1")
    return max(1, cpu.l2_bytes // 2 // (9 * nv * cpu.lanes * 4))


def sections_c(o: dict, indent: str = "    ", base: str = "w") -> list[str]:
    """C pointers to the sections of a layer packed by gather.GatherPlan at ``base``."""
    return [indent + x for x in (
        f"const int32_t *restrict gi = (const int32_t *)({base});",
        *(f"const int32_t *restrict {k} = gi + {o[k]};" for k in ("perm", "seg", "cost", "offs")),
        f"const float *restrict wts = ({base}) + {o['wts']};")]


class GroupedEmitter:
    """The C of one grouped layer's reduction over a tile of NV pixel vectors (``tile``).

    Why a panel: the tile's input vectors sit one channel plane apart in the layout, and a
    plane stride is often a multiple of 2 KB, so the few L1 sets those addresses map to are
    thrashed and every tap is read from L2. The tile copies its vectors of a block of GB groups
    into a contiguous per-thread panel (default_gb); every filter block then walks its steps of
    that block (gather.py): per step, ``fb`` weight broadcasts and index loads, then ``fb`` x NV
    loads and FMAs into as many accumulators. With more than one block, partial sums carry
    from block to block."""

    def __init__(self, name: str, plan: GatherPlan, *, nv: int, channels: int, vl: int, panel: bool = True):
        self.name, self.plan, self.nv, self.channels, self.vl = name, plan, nv, channels, vl
        self.gb, self.nb, self.fb, self.panel = plan.gb, plan.nb, plan.fb, panel
        if not panel and plan.nb > 1:
            raise InputError(f"{name}: channel blocks need the panel")
        self.w = nv * vl  # floats per channel in the panel

    def pointers(self, indent: str, base: str) -> list[str]:
        """C naming the sections of the layer packed at ``base`` (``cost`` among them)."""
        return sections_c(self.plan.offsets, indent, base)

    def describe(self) -> str:
        return f"{int(self.plan.seg[-1]) * self.fb} gather entries in blocks of {self.fb} filters"

    def ld(self, src_cs: int) -> int:
        """Floats between two input channels where the steps read them: ``panel_ld`` to pack with."""
        return self.w if self.panel else src_cs

    @property
    def private_floats(self) -> int:
        """Floats of the thread's own scratch: the panel, and partial sums with several blocks."""
        return (self.gb * 9 * self.w if self.panel else 0) + (self.plan.F * self.w if self.nb > 1 else 0)

    def decls(self, indent: str, at: str | None = None) -> list[str]:
        """C declaring the thread's panel and, with several blocks, its partial sums (every
        thread of the team runs it, at the top of the kernel). The scratch is the thread's
        private arena, or ``private_floats`` at ``at`` in a kernel that carves it from its own
        (a second PS_PRIVATE would return, and may move, the same arena)."""
        if not self.panel:
            return []
        lines = [f"float *restrict panel = {at};" if at else
                 f'PS_PRIVATE(panel, {self.private_floats}, "{self.name}");']
        if self.nb > 1:
            lines.append(f"float *restrict part = panel + {self.gb * 9 * self.w};")
        return [indent + x for x in lines]

    def tile(self, src: list[str], src_cs: int, k0: str, k1: str, store: list[str], indent: str) -> list[str]:
        """C for one tile: ``src[v]`` points at tile vector v of input channel 0, channels
        ``src_cs`` floats apart; filter blocks [k0, k1) each end in ``store`` per filter, C that
        sees ``oc`` (the output channel) and ``sum{v}`` (the tile's result before bias)."""
        V, I, w, nb, fb, cb = range(self.nv), range(self.fb), self.w, self.nb, self.fb, 9 * self.gb
        part = lambda i, v: f"part + (size_t)((k - {k0}) * {fb} + {i}) * {w} + {v} * VL"  # noqa: E731
        first = (lambda i, v: f"b ? vload({part(i, v)}) : (vf){{0}}") if nb > 1 else (lambda i, v: "(vf){0}")
        lines = [f"for (int b = 0; b < {nb}; b++) {{" if nb > 1 else "{ const int b = 0; (void)b;"]
        if self.panel:
            lines += [f"    const int c1 = b * {cb} + {cb} < {self.channels} ? b * {cb} + {cb} : {self.channels};",
                      f"    for (int c = b * {cb}; c < c1; c++) {{",
                      f"        float *restrict d = panel + (size_t)(c - b * {cb}) * {w};",
                      "        " + " ".join(f"vstore(d + {v} * VL, vload({src[v]} + (size_t)c * {src_cs}));" for v in V),
                      "    }"]
            at = lambda i, v: f"x{i} + {v * self.vl}"  # noqa: E731
        else:  # the steps read the tile's vectors where they are, offsets in input channels
            at = lambda i, v: f"{src[v]} + o{i}"  # noqa: E731
        lines += [f"    for (int k = {k0}; k < {k1}; k++) {{",
                  "        vf " + ", ".join(f"a{i}_{v} = {first(i, v)}" for i in I for v in V) + ";",
                  f"        for (int s = seg[k * {nb} + b], s1 = seg[k * {nb} + b + 1]; s < s1; s++) {{",
                  "            " + " ".join(f"const vf w{i} = vbcast(wts[s * {fb} + {i}]);" + (
                      f" const float *restrict x{i} = panel + offs[s * {fb} + {i}];" if self.panel else
                      f" const ptrdiff_t o{i} = offs[s * {fb} + {i}];") for i in I)]
        lines += ["            " + " ".join(f"a{i}_{v} += w{i} * vload({at(i, v)});" for v in V) for i in I]
        lines.append("        }")
        if nb > 1:
            lines += [f"        if (b < {nb - 1}) {{",
                      *(f"            vstore({part(i, v)}, a{i}_{v});" for i in I for v in V),
                      "            continue;", "        }"]
        for i in I:
            lines += [f"        {{ const int oc = perm[k * {fb} + {i}]; if (oc >= 0) {{",
                      "            " + " ".join(f"const vf sum{v} = a{i}_{v};" for v in V),
                      *("            " + x for x in store), "        } }"]
        lines += ["    }", "}"]
        return [indent + x for x in lines]


def layer_plan(sp: LayerSparsity, sched: dict, target: Target, where: str) -> GatherPlan | RegPlan:
    """The gather lists of a layer with sparsity ``sp`` for a schedule {"nv", "fb", "gb",
    "panel"} (all but nv optional: FB, default_gb, 1; without the panel, one channel block), or
    with "reg": 1 its register blocks ("fb" default reg_fb, "gb" default one channel block)."""
    try:
        nv, reg = int(sched["nv"]), int(sched.get("reg", 0))
        fb = int(sched.get("fb", reg_fb(nv, target) if reg else FB))
        gb = int(sched.get("gb", default_gb(nv, target))) if int(sched.get("panel", 1)) and not reg else \
            int(sched.get("gb", sp.kernel_mask.shape[1]) if reg else sp.kernel_mask.shape[1])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: schedule must have integer 'nv' (and 'fb', 'gb', 'reg'), got {sched!r}") from None
    top = 32 if reg else 8
    if not (1 <= nv <= 16 and 1 <= fb <= top and gb >= 1 and reg in (0, 1)):
        raise InputError(f"{where}: schedule nv={nv}, fb={fb}, gb={gb} or reg={reg} out of range "
                         f"(1..16, 1..{top}, >= 1, 0 or 1)")
    return reg_plan(sp, fb=fb, gb=gb) if reg else gather_plan(sp, fb=fb, gb=gb)


def emitter(name: str, plan: GatherPlan | RegPlan, *, nv: int, channels: int, vl: int,
            panel: bool) -> GroupedEmitter | RegisterEmitter:
    """The C emitter of ``plan``'s kernel (both speak GroupedEmitter's interface)."""
    if isinstance(plan, RegPlan):
        return RegisterEmitter(plan, nv=nv)
    return GroupedEmitter(name, plan, nv=nv, channels=channels, vl=vl, panel=panel)


def pack_grouped(gp: GatherPlan | RegPlan, sp: LayerSparsity, weight: np.ndarray, panel_ld: int,
                 where: str) -> np.ndarray:
    """A (O, I, 1, 1) weight with sparsity ``sp`` (analyse_grouped) in ``gp``'s form."""
    virtual_weight(weight, where)  # the shape checks
    return gp.pack(np.asarray(weight, np.float32), sp, panel_ld, where)


def gen_grouped1x1(name: str, weight: np.ndarray, *, stride: int = 1, padding: int = 0,
                   in_layout: Layout, out_layout: Layout, act: str = "none", has_residual: bool = False,
                   schedule: dict | None = None, target: Target, sparsity: LayerSparsity | None = None,
                   where: str | None = None) -> GeneratedKernel:
    """The grouped sparse kernel ``name`` for a (O, I, 1, 1) ``weight`` (stride 1 or 2, no padding).

    The code depends on which masks the weights use (read from the weights, or ``sparsity``:
    compiler.grouped.analyse_grouped); ``pack`` of the result turns a weight with that sparsity
    into the array the kernel reads (gather.py, or regblock.py with "reg": 1). ``schedule``:
    {"nv", "compact", "fb", "gb", "panel", "reg"} (``schedules``; all but nv and compact optional)."""
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
    fmas = kept_weights(sp)
    sched = pick(schedules(stride=stride, Ho=Ho, Wo=Wo, target=target, channels=I, fmas=fmas), schedule)
    gp = layer_plan(sp, sched, target, where)
    try:
        nv, compact = int(sched["nv"]), bool(int(sched["compact"]))
        panel = bool(int(sched.get("panel", 1))) and not isinstance(gp, RegPlan)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: schedule must have integer 'nv' and 'compact' (and 'panel'), "
                         f"got {schedule!r}") from None
    if stride != 1 and not compact:
        raise InputError(f"{where}: row vectors at stride {stride} (the schedule must be compact)")
    L, O_ = in_layout, out_layout
    if compact:
        cacc = compact_access(name, channels=I, stride=stride, in_layout=L, Ho=Ho, Wo=Wo)
        cs, scratch, prep = cacc.cs, cacc.scratch, cacc.prep
    else:
        cs, scratch, prep = L.ps, "", ""
    em = emitter(name, gp, nv=nv, channels=I, vl=vl, panel=panel)
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
    NFB = gp.blocks
    loop, xs = ["        for (int pt = t0; pt < t1; pt++) {", *slots], [f"x{v}" for v in V]
    body = (em.blocks_outer(loop, xs, cs, "f0", "f1", stores, " " * 8) if isinstance(em, RegisterEmitter) else
            [*loop, *em.tile(xs, cs, "f0", "f1", stores, " " * 12), "        }"])
    code = helpers_c(target) + support_c(target) + "\n".join([
        f"/* ---- {name}: grouped 1x1 conv /{stride}, {I}->{O} ch ({sp.kernel_mask.shape[1]} virtual 3x3 "
        f"kernels per filter), {H}x{W} -> {Ho}x{Wo}, {len(sp.masks)} masks, {em.describe()}, "
        f"tile {nv} {'plane' if compact else 'row'} vectors, {em.nb} blocks of {gp.gb} groups */",
        f'_Static_assert(VL == {vl}, "{name} was generated for {vl}-float vectors; regenerate it on this machine");',
        f"static void {name}(const float *restrict in, float *restrict out,",
        "    const float *restrict w, const float *restrict bias, const float *restrict res) {",
        *em.pointers("    ", "w"),
        "    (void)res;",
        f"    enum {{ NVW = ({Wo} + VL - 1) / VL, NPT = ({ns} + {nv - 1}) / {nv}, LASTW = (NVW - 1) * VL }};",
        f"    const vi tm = vtailmask({Wo} - LASTW); (void)tm;{scratch}",
        *em.decls("    "),
        f"    {{{prep}",
        "        const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
        f"        int t0 = 0, t1 = NPT, f0 = 0, f1 = {NFB};",
        "        if (NPT % nt == 0 || NPT >= 4 * nt) { t0 = NPT * t / nt; t1 = NPT * (t + 1) / nt; }",
        f"        else {{ f0 = ps_split(cost, {NFB}, t, nt); f1 = ps_split(cost, {NFB}, t + 1, nt); }}",
        *body,
        "    }",
        "}", ""])

    def pack(wt: np.ndarray) -> np.ndarray:
        return pack_grouped(gp, sp, wt, em.ld(cs), where)

    flops = 2 * fmas * Ho * Wo
    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=flops,
                           schedule={"nv": nv, "compact": int(compact), "fb": gp.fb, "gb": gp.gb,
                                     "panel": int(panel), "vl": vl, **({"reg": 1} if isinstance(gp, RegPlan) else {})})


def row_nv(W: int, target: Target) -> int:
    """The fused kernel's default grouped tile for one row of ``W`` pixels."""
    return balanced_nv(-(-W // target.require_cpu("grouped 1x1").lanes), max_nv(target))


def row_c(name: str, gp: GatherPlan | RegPlan, *, nv: int, W: int, cin: int, cs: int, src: str, dst: str, dst_ld: int,
          bias_at: int, act: str, target: Target, tail: str, res: str | None = None, base: str = "w") -> list[str]:
    """C block computing one row of a grouped 1x1 conv inside a fused kernel (pw_dw.py: the
    pruned expand writing a ring row, the pruned project reading the depthwise row). It reads
    ``src`` (input channel 0 of the row, ``cin`` channels ``cs`` apart) and writes output channel
    oc's row of ``act(conv + bias [+ residual])`` at ``dst + oc * dst_ld``, the residual read at
    ``res + oc * dst_ld``, lanes past ``W`` zeroed by the mask ``tail``. The layer is packed at
    ``base`` (``pack_grouped`` with ``gp``, channels ``cs`` apart, no panel; register blocks in one
    channel block), its bias at ``w + bias_at``."""
    vl = target.require_cpu(name).lanes
    em = emitter(name, gp, nv=nv, channels=cin, vl=vl, panel=False)
    nvw = -(-W // vl)
    V = range(nv)
    loop = [f"for (int vt = 0; vt < {-(-nvw // nv)}; vt++) {{"]
    for v in V:
        loop += [f"    int v{v} = vt * {nv} + {v}; const int ok{v} = v{v} < {nvw}; if (!ok{v}) v{v} = vt * {nv};",
                 f"    const float *restrict x{v} = {src} + v{v} * VL;"]
    store = [f"const vf eb = vbcast(w[{bias_at} + oc]);"]
    for v in V:
        at = f"(size_t)oc * {dst_ld} + v{v} * VL"
        val = f"sum{v} + eb" + (f" + vload({res} + {at})" if res else "")
        store.append(f"if (ok{v}) {{ vf y = {act_c(act, val)}; if (v{v} == {nvw - 1}) y = vand(y, {tail});"
                     f" vstore({dst} + {at}, y); }}")
    xs = [f"x{v}" for v in V]
    if isinstance(em, RegisterEmitter):
        loop = em.blocks_outer(loop, xs, cs, "0", str(gp.blocks), store, "")
    else:
        loop += [*em.tile(xs, cs, "0", str(gp.blocks), store, "    "), "}"]
    return ["{", *em.pointers("    ", base), *("    " + x for x in loop), "}"]
