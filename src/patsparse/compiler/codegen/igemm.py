"""Register-blocked implicit-GEMM convolution: the engine behind dense KxK convs and 1x1 convs.

out[co, oh, ow] = sum over (ci, kh, kw) of W[co, ci, kh, kw] * X[ci, oh*s + kh - P, ow*s + kw - P]

Output pixels are cut into *slots*: VL consecutive columns of one output row (the last slot of a
row is partial and its lanes past the row are masked to zero at the store). A micro-kernel
keeps an MR x NR tile in registers (MR output channels x NR slots); per reduction step it loads
NR input vectors, broadcasts MR weights and issues MR*NR FMAs, so it is FMA-bound, not load-bound,
whenever MR*NR is large. The reduction runs over input channels with the KxK taps unrolled at
compile-time offsets.

Stride 1 with enough input padding reads the activation layout directly; so may a KxK stride-2
conv (schedule ``s2``: ps_load_s2, two loads and a shuffle per input vector), where the cost
model ranks it first. Otherwise (stride 2 without ``s2``, or an input whose halo is narrower
than the conv padding) a prep pass copies the input once into a scratch of *phase planes*
(space-to-depth: phase (py, px) holds Xpad[s*r + py][s*c + px]) with full zero padding, which
turns any stride into unit-stride loads.
The prep touches each input element about once, against Cout*K*K/s^2 FMAs per element.

Weights are packed per MR-row tile as [tile][ci][kh][kw][MR] (rows past Cout are zero), so the
broadcasts of one reduction step are adjacent and the weight stream is sequential. Each step prefetches
the stream WEIGHT_PREFETCH floats ahead: on small planes (MobileNet-V2's 7x7 1x1 convs, 0.6-1.6 MB
of weights each, a panel used by one or two pixel tiles) the broadcasts otherwise wait on L3;
in the model (12 interleaved rounds of ``profile``, AVX-512) those layers ran 1.1-1.3x faster,
320->1280 176 -> 136 us. Where the weights stay in L1 or L2 the prefetch is one load-port uop per
MR*NR*K*K FMAs.

Three more knobs: the loop order over (pixel tile, channel tile) work units decides which
operand is re-streamed (common.loop_order); small planes, where row vectors leave lanes idle,
may use the channel-vectorised kernel instead (cvec.py, schedule ``{"np": N}``); and a 1x1 conv
without padding may slot the flattened plane instead of rows (``{"compact": 1}``: a prep packs
each channel's pixels densely, access.compact_access, and each output vector is stored
lane-masked, one store per output row it touches). ``schedules`` ranks all candidates with one
cost model; the auto-tuner measures the top ones.
"""

from __future__ import annotations

import itertools

import numpy as np

from ...errors import InputError
from ..layout import Layout, round_up
from ..target import Target
from . import cvec
from .access import compact_access, compact_rows_c, input_access
from .base import BATCHED_PARAMS, GeneratedKernel, act_c, single_image_c
from .batch import batch_walk, slot_c, units_c
from .common import VECTOR_LOAD, WEIGHT_PREFETCH, check_weight, helpers_c, loop_order


L2_BYTES_PER_CYCLE = 32      # sustained L2 -> L1 bandwidth the model assumes
COMPACT_MAX_SHARE = 0.75     # compact tiles need at most this share of the row vectors


def _slots(Ho: int, Wo: int, vl: int, compact: bool = False) -> int:
    """Output vectors per channel: row vectors, or vectors over the flattened plane (compact)."""
    return -(-(Ho * Wo) // vl) if compact else Ho * -(-Wo // vl)


def direct_s2_floats(*, k: int, stride: int, padding: int, in_layout: Layout) -> int:
    """The input's floats when a KxK (K > 1) stride-2 conv can read it in place (its halo covers
    the padding: schedule ``s2``), else 0: the ``s2_input`` of ``schedules``."""
    return in_layout.size if k > 1 and stride == 2 and in_layout.pad >= padding else 0


def schedules(*, cout: int, Ho: int, Wo: int, cin: int | None = None, k: int = 1,
              target: Target, compact: bool = False, s2_input: int = 0,
              others: tuple[tuple[float, float, dict], ...] = ()) -> list[dict]:
    """Candidate schedules for the auto-tuner: the heuristic's best first (the untuned default),
    then the best of each other tile family, then the rest by rank (``ranked``'s cost model)."""
    ranked_ = [c[2] for c in ranked(cout=cout, Ho=Ho, Wo=Wo, cin=cin, k=k, target=target, compact=compact,
                                    s2_input=s2_input, others=others)]

    def family(d: dict) -> str:
        return (f"wino{d['wino']}" if "wino" in d else "np" if "np" in d else "compact" if d.get("compact")
                else "rows")

    # the default first, then the best of every other family (so a tuner measuring the first few
    # always compares row, compact and channel-vector tiles, and each Winograd tile size), then
    # the rest by rank
    leaders: list[dict] = []
    for d in ranked_:
        if family(d) not in {family(e) for e in leaders}:
            leaders.append(d)
    best = ([d for d in ranked_ if "mr" in d and "wino" not in d][:6] + [d for d in ranked_ if "np" in d][:2]
            + [d for d in ranked_ if "wino" in d][:2])
    return leaders + [d for d in best if d not in leaders]


def ranked(*, cout: int, Ho: int, Wo: int, cin: int | None = None, k: int = 1,
           target: Target, compact: bool = False, s2_input: int = 0,
           others: tuple[tuple[float, float, dict], ...] = ()) -> list[tuple[float, float, dict]]:
    """(modelled cycles of one call, tie-break, schedule) of every candidate, cheapest first.

    Row-vector tiles ``{"mr", "nr"}`` (MR channels x NR row vectors; all fit the register file
    with the NR input vectors held in registers and one spare, MR*NR + NR + 2 <= registers) and
    channel-vector tiles ``{"np"}`` (cvec.py: 16 channels x NP pixels, for small planes).
    Ranked by modelled cycles: per reduction step max(FMAs, loads) / 2 ports times the tiles
    computed (which charges padded channels, padded slots and idle lanes), plus the epilogue.
    ``cin``/``k`` give the reduction length (assumed long when unknown). An optional "order"
    key ('pix' or 'co') fixes the loop order; without it a re-stream heuristic picks it.
    ``compact`` (a 1x1 conv without padding) adds tiles over the flattened plane
    (``{"compact": 1}``, compact_access) where they need at most COMPACT_MAX_SHARE of the row
    vectors; they are charged for the copy and for a store per output row a vector touches.
    ``s2_input`` (direct_s2_floats) adds row tiles that read a stride-2 input in place
    (``{"s2": 1}``: two loads and a shuffle per input vector) instead of through phase planes
    (a copy of the input); both are then charged for re-reading the input (or the planes, as big)
    from L2 once per channel tile, the channel-major walk a large output gets. MobileNet-V2's
    stem (3->32 3x3/2 at 224x224, ``profile``, 40 interleaved rounds, AVX-512): phase planes
    4 x 6 172 us, in place 4 x 6 164, 8 x 3 123, 16 x 1 123.
    ``others``: (modelled cycles, tie-break, schedule) of another kernel's candidates for the same
    conv, ranked with these (winograd.candidates: the ``{"wino"}`` family).
    """
    cpu = target.require_cpu("dense conv schedules")
    vl, nregs = cpu.lanes, cpu.vector_registers
    red = (cin or 256) * k * k
    cands = []
    # compact tiles only where rows leave many lanes idle: with a saving of 1/8 (28x28 planes,
    # 16 lanes) the copy cost more than it saved (MobileNet-V2 192->32 @28x28: 59-75 -> 80-111 us
    # in the model; 160->960 @7x7, 7 -> 4 vectors: 159 -> 116 us)
    worth = compact and _slots(Ho, Wo, vl, True) <= COMPACT_MAX_SHARE * _slots(Ho, Wo, vl)
    for cp in (False, True) if worth else (False,):
        ns = _slots(Ho, Wo, vl, cp)
        # compact: the copy (element by element: a cycle per input pixel) and the extra
        # row-segment stores of each vector (a vector spans about VL / Wo + 1 rows)
        copy = (cin or 256) * Ho * Wo if cp else 0
        segs = (vl / Wo + 1) if cp else 1
        for s2, mr, nr in itertools.product((False, True) if s2_input and not cp else (False,),
                                            range(1, 17), range(1, 9)):
            # one register spare: tiles that fill all 16 AVX2 registers (4x3, 2x5) spill in
            # GCC's code and measured up to 1.8x slower (VGG conv1: 4x3 41 GF/s, 6x2 73)
            if mr * nr + nr + 2 > nregs or mr * nr < 4:
                continue
            tiles = -(-cout // mr) * -(-ns // nr)
            if cp and tiles < 2:  # one work unit: one thread would do the whole layer
                continue
            # a tile whose input stream (red steps x NR vectors) overflows L1 reads it from L2
            # every step; at ~32 bytes per cycle that bounds wide-NR tiles on long reductions
            # (MobileNet-V2 160->960 at 7x7, AVX-512: MR=3 x NR=7 62 GF/s, 16 x 1 77)
            l2_cycles = nr * vl * 4 / L2_BYTES_PER_CYCLE if red * nr * vl * 4 > cpu.l1_bytes else 0.0
            loads = (mr + (2 if s2 else 1) * nr) / 2
            step = max(mr * nr / 2, loads, l2_cycles) + 0.5  # +0.5: loop/pointer overhead
            extra = 0.0
            if s2_input:  # the input re-read per channel tile, and the phase planes' copy
                extra = -(-cout // mr) * s2_input * 4 / L2_BYTES_PER_CYCLE + (0 if s2 else s2_input)
            sched = {"mr": mr, "nr": nr, **({"compact": 1} if cp else {}), **({"s2": 1} if s2 else {})}
            cands.append((tiles * (red * step + mr * nr * segs) + copy + extra, -mr * nr, sched))
    for np_ in cvec.np_choices(target):
        c = cvec.cost(cout=cout, Ho=Ho, Wo=Wo, np_=np_, target=target, red=red, k=k)
        cands.append((c, -np_ * cvec.CB // vl, {"np": np_}))
    cands += others
    cands.sort(key=lambda c: c[:2])
    return cands


def _check_schedule(schedule: dict, where: str) -> tuple[int, int, int, str | None]:
    """(mr, nr, np, order) with np = 0 for a row- or compact-vector tile, mr = nr = 0 for a cvec tile."""
    order = schedule.get("order") if isinstance(schedule, dict) else None
    if order not in (None, "pix", "co"):
        raise InputError(f"{where}: schedule order must be 'pix' or 'co', got {order!r}")
    try:
        if "np" in schedule:
            np_ = int(schedule["np"])
            if not 1 <= np_ <= 32 or schedule.get("compact"):
                raise ValueError
            return 0, 0, np_, order
        mr, nr = int(schedule["mr"]), int(schedule["nr"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: schedule must be a dict with integer 'mr' and 'nr' (or "
                         f"'np' in 1..32, without 'compact'), got {schedule!r}") from None
    if not (1 <= mr <= 32 and 1 <= nr <= 16):
        raise InputError(f"{where}: schedule mr={mr}, nr={nr} out of range (1..32, 1..16)")
    return mr, nr, 0, order


def fma_step(tap_off, mr: int, nr: int, indent: str, load: str = "vload") -> list[str]:
    """One reduction step of an MR x NR tile (input channel ``ci``; ``q{j}`` point at its NR
    input vectors, ``wk`` at its packed weights): per tap NR input loads (``load``: vload, or
    ps_load_s2 for a stride-2 read) pinned in registers, then MR broadcasts of MR*NR FMAs into
    accumulators ``a{i}_{j}``."""
    lines = []
    for t, off in enumerate(tap_off):
        lines.append(f"{indent}{{")
        lines += [f"{indent}    vf b{j} = {load}(q{j} + {off}); PS_KEEP(b{j});" for j in range(nr)]
        for i in range(mr):
            lines.append(f"{indent}    {{ vf wv = vbcast(wk[{t * mr + i}]);")
            lines.append(f"{indent}      " + " ".join(f"a{i}_{j} += wv * b{j};" for j in range(nr)) + " }")
        lines.append(f"{indent}}}")
    return lines


def pack_tiles(weight: np.ndarray, mr: int) -> np.ndarray:
    """(Cout, Cin, K, K) weights packed per MR-row tile as [tile][ci][tap][MR], rows past Cout
    zero: the order ``fma_step`` reads them in."""
    cout, cin, kk = weight.shape[0], weight.shape[1], weight.shape[2] * weight.shape[3]
    cout_pad = round_up(cout, mr)
    full = np.zeros((cout_pad, cin, kk), np.float32)
    full[:cout] = weight.reshape(cout, cin, kk)
    return np.ascontiguousarray(full.reshape(cout_pad // mr, mr, cin, kk).transpose(0, 2, 3, 1)).ravel()


def gen_igemm(name: str, *, cin: int, cout: int, k: int, stride: int, padding: int,
              in_layout: Layout, out_layout: Layout, act: str, has_residual: bool,
              schedule: dict | None, where: str, target: Target, images: int = 1) -> GeneratedKernel:
    """Generate the implicit-GEMM conv; callers have already validated shapes and arguments.

    Tiles reading the input in place (row and channel-vector tiles) and compact tiles (their
    prep packs every image of the block) are batched (base.GeneratedKernel): the images of a
    block are walked as batch.py says, for ``images`` (the block the model runs); tiles through
    phase planes (one image's scratch) run one image per call."""
    H, W, s, P, K = in_layout.H, in_layout.W, stride, padding, k
    Ho, Wo = out_layout.H, out_layout.W
    if schedule is None:
        schedule = schedules(cout=cout, Ho=Ho, Wo=Wo, cin=cin, k=K, compact=K == 1 and P == 0,
                             s2_input=direct_s2_floats(k=K, stride=s, padding=P, in_layout=in_layout),
                             target=target)[0]
    mr, nr, np_, order = _check_schedule(schedule, where)
    compact = bool(schedule.get("compact"))  # never with np (_check_schedule)
    if compact and (K != 1 or P != 0):
        raise InputError(f"{where}: schedule compact needs a 1x1 conv without padding "
                         f"(got {K}x{K}, padding {P})")
    kk = K * K
    # channel-vector tiles broadcast single input values, so they read any stride in place
    acc = None if compact else input_access(name, channels=cin, k=K, stride=s, padding=P,
                                            in_layout=in_layout, Ho=Ho, Wo=Wo,
                                            allow_strided=bool(np_ or schedule.get("s2")) and K > 1)
    if np_:
        return cvec.gen_cvec(name, cin=cin, cout=cout, k=K, acc=acc, out_layout=out_layout,
                             act=act, has_residual=has_residual, np_=np_, order=order, target=target,
                             images=images)
    s2 = bool(acc and acc.step == 2)  # direct stride-2 reads: two loads and a shuffle per vector
    cout_pad = round_up(cout, mr)
    if compact:
        cacc = compact_access(name, channels=cin, stride=s, in_layout=in_layout, Ho=Ho, Wo=Wo, batched=True)
        src, cs, tap_off, scratch, prep = "scr", cacc.cs, (0,), cacc.scratch, cacc.prep
        reads = "compact-plane prep"
    else:
        src, cs, tap_off, scratch, prep = acc.src, acc.cs, acc.tap_off, acc.scratch, acc.prep
        reads = "phase-plane prep" if not acc.direct else "direct stride-2 input" if s2 else "direct input"

    cpu = target.require_cpu(where)
    ns1 = _slots(Ho, Wo, cpu.lanes, compact)
    order = order or loop_order(cin=cin, kk=kk, cout_pad=cout_pad, mr=mr, npt=-(-ns1 // nr), src_floats=cin * cs,
                                l2_bytes=cpu.l2_bytes, out_floats=out_layout.size)
    batched = compact or acc.direct
    walk = batch_walk(images=images, order=order, ns=ns1, per_tile=nr, nct=cout_pad // mr, src_floats=cin * cs,
                      weight_floats=cout_pad * cin * kk, out_floats=out_layout.size, l2_bytes=cpu.l2_bytes)
    J, I = range(nr), range(mr)
    decl = "\n".join(f"        vf a{i}_{j} = (vf){{0}};" for i in I for j in J)
    body = "\n".join(fma_step(tap_off, mr, nr, " " * 12, VECTOR_LOAD[2 if s2 else 1]))
    olay = out_layout
    ochk = "" if cout == cout_pad else f"if (co0 + {{i}} < {cout}) "

    def store(j: int, i: int, masked: str) -> str:
        """Output channel co0 + i of slot j at offset o (lanes of ``masked``, or all + tail mask)."""
        at = f"o + (size_t)(co0 + {i}) * {olay.ps}"
        expr = f"a{i}_{j} + vbcast(bias[co0 + {i}])"
        if has_residual:
            expr += f" + vload_lanes(res + {at}, m)" if masked else f" + vload(res + {at})"
        put = (f"vstore_lanes(out + {at}, m, v);" if masked else
               f"if (w0{j} == LASTW) v = vand(v, tm); vstore(out + {at}, v);")
        return f"{ochk.format(i=i)}{{ vf v = {act_c(act, expr)}; {put} }}"

    stores = []
    for j in J:
        stores.append(f"        if (ok{j}) {{")
        if compact:  # a vector over the flattened plane: one lane-masked store per output row it touches
            stores += ["          " + x for x in compact_rows_c(f"s{j}", Ho, Wo, olay.origin, olay.ld,
                                                                   f"(size_t)i{j} * is + ")]
            stores += [f"            {store(j, i, 'm')}" for i in I]
            stores.append("          }")
        else:
            stores.append(f"            size_t o = {'(size_t)i' + str(j) + ' * is + ' if batched else ''}"
                          f"{olay.origin} + (size_t)oh{j} * {olay.ld} + w0{j};")
            stores += [f"            {store(j, i, '')}" for i in I]
        stores.append("        }")
    stores = "\n".join(stores)
    slots = "\n".join(
        slot_c(j, nr, "NS", batched) + "\n" +
        (f"        const float *p{j} = scr + (size_t)i{j} * {cin * cs} + (size_t)s{j} * VL;" if compact else
         f"        int oh{j} = s{j} / NVW, w0{j} = s{j} % NVW * VL;\n"
         f"        const float *p{j} = {src} + {'(size_t)i' + str(j) + ' * is + ' if batched else ''}{acc.origin} + "
         f"(size_t)oh{j} * {acc.row_stride} + {'2 * ' if s2 else ''}w0{j};")
        for j in J)
    qs = " ".join(f"const float *q{j} = p{j} + (size_t)ci * {cs};" for j in J)
    ns = f"({Ho * Wo} + VL - 1) / VL" if compact else f"{Ho} * NVW"
    fn, sig_extra = (f"{name}_nb", BATCHED_PARAMS) if batched else (name, "")
    orders = f"{order}-major" + (f"; more images: {'each' if walk[0] else 'pooled'}, {walk[1]}-major"
                                 if batched else "")
    units, close = units_c(ns="NS", per_tile=nr, nct=cout_pad // mr, order=order, batched=batched, walk=walk)
    code = helpers_c(target) + f"""
/* {name}: dense conv {cin}->{cout}, {K}x{K}, stride {s}, padding {P}, {H}x{W} -> {Ho}x{Wo},
   implicit GEMM, tile {mr} channels x {nr} {'plane' if compact else 'row'} vectors, {orders}, {reads}{', batched' if batched else ''} */
static void {fn}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res{sig_extra}) {{
    enum {{ NVW = ({Wo} + VL - 1) / VL, NS = {ns}, LASTW = (NVW - 1) * VL }};
    const vi tm = vtailmask({Wo} - LASTW);
    (void)res; (void)tm;{scratch}
    {{{prep}
{units}
        int co0 = ct * {mr};
{slots}
        const float *wp = w + (size_t)ct * {cin * kk * mr};
{decl}
        #pragma GCC unroll {4 if kk == 1 else 1}
        for (int ci = 0; ci < {cin}; ci++) {{
            {qs}
            const float *wk = wp + (size_t)ci * {kk * mr};
            __builtin_prefetch(wk + {WEIGHT_PREFETCH}, 0, 3);
{body}
        }}
{stores}
{close}
    }}
}}
{single_image_c(name) if batched else ""}"""

    def pack(weight: np.ndarray) -> np.ndarray:
        return pack_tiles(check_weight(weight, (cout, cin, K, K), name), mr)

    return GeneratedKernel(name=name, code=code, target=target, pack=pack, batched=batched,
                           flops=2 * cout * cin * kk * Ho * Wo,
                           schedule={"mr": mr, "nr": nr, "order": order, **({"compact": 1} if compact else {}),
                                     **({"s2": 1} if s2 else {})})
