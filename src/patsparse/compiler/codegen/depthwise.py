"""Depthwise KxK convolution (groups = channels; MobileNet-V2's 3x3, stride 1 and 2).

There is no reduction over channels, so each output vector costs K*K FMAs against K*K input
loads: the kernel is load-bound, and the lever is reuse. A pass computes ROWS output rows of one
vector column together; the input rows they share are loaded once (the generator deduplicates
loads by their compile-time offset), and the channel's K*K weights stay broadcast in registers
for the whole plane. Stride 2 with an adequate halo reads the layout directly with ``ps_load_s2``
(two loads and a shuffle); a thin halo (e.g. the model input) goes through the phase-plane prep.
Work is split over (channel, row block) pairs, so 2 threads stay balanced even on 7x7 planes.

Pattern-pruned depthwise convs (each channel keeps the taps of one pattern, PatDNN) compute only
their taps: the compiler reads the most taps any channel keeps from the weights (``kept_taps``),
and each channel stores that many (tap, weight) pairs, short ones padded with zero weights. The
pass reads the channel's taps at run time (a tap's offset from a compile-time table), so one
branch-free pass serves every mask: 4 loads and FMAs per output vector instead of 9 with the
paper's patterns. (A pass per mask, switched on per unit of work, was slower on 7x7 planes: the
switch mispredicted on most units.)
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout
from ..target import Target
from .access import input_access
from .base import GeneratedKernel, act_c
from .common import (check_act, check_layout_types, check_layouts, check_name, check_positive,
                     check_weight, conv_out_size, helpers_c, VECTOR_LOAD)


def schedules(*, stride: int, out_layout: Layout, vl: int = 16, registers: int = 16,
              taps: int | None = None) -> list[dict]:
    """Candidate output rows per pass; the first is the heuristic default.

    ``taps``: the pattern pass (kept_taps) holds that many weights, not K*K, so more rows fit the
    registers: it takes up to 8 output vectors per pass (rows = 8 // vectors per row, at most 4 at
    stride 2), split evenly over the plane. A pass's setup (the channel's weights, its tap
    offsets) then serves a whole 7x7 or 14x14 plane instead of one vector."""
    # measured (AVX2, one thread, MobileNet-V2 planes): one row wins at stride 1 on most planes
    # (more rows spill: K*K weights + rows of loads exceed 16 registers); at stride 2 two rows
    # (which share one shuffled input row) win from 56x56 down, one row at 112x112. With 32
    # registers (AVX-512, NEON) three rows fit beside the 9 weights and won at stride 1 on planes
    # of one or two vectors a row (AVX-512: 1.2-1.5x on 7x7 to 28x28)
    narrow = stride == 1 and registers >= 32 and -(-out_layout.W // vl) <= 2
    order = (3, 1, 4, 2) if narrow else (1, 3, 4, 2) if stride == 1 else \
        ((1, 2, 3) if out_layout.W > 32 else (2, 1, 3))
    if taps is not None:
        want = max(1, min(8 // -(-out_layout.W // vl), 8 if stride == 1 else 4, out_layout.H))
        rows = -(-out_layout.H // -(-out_layout.H // want))  # the same rows in every pass
        order = (rows, *(r for r in order if r != rows))
    return [{"rows": r} for r in order if r <= out_layout.H] or [{"rows": 1}]


def kept_taps(weight: np.ndarray) -> int | None:
    """The most non-zero taps any channel of a (C, 1, k, k) depthwise weight keeps, or None when
    that is every tap (the dense pass)."""
    w = np.asarray(weight)
    kk = int(np.prod(w.shape[1:]))
    most = int((w.reshape(w.shape[0], kk) != 0).sum(axis=1).max(initial=0))
    return None if most >= kk else max(1, most)


def pack_taps(weight: np.ndarray, taps: int, where: str) -> np.ndarray:
    """A (C, 1, k, k) depthwise weight as ``taps`` weights per channel (its non-zero taps in
    ascending order, zeros after), then each channel's ``taps`` tap indices (int32 bits)."""
    wt = np.asarray(weight, np.float32).reshape(weight.shape[0], -1)
    nz = wt != 0
    over = np.flatnonzero(nz.sum(axis=1) > taps)
    if over.size:
        raise InputError(f"{where}: channel {over[0]} has more than the {taps} non-zero taps it was "
                         f"compiled for; recompile with these weights")
    idx = np.argsort(~nz, axis=1, kind="stable")[:, :taps]  # the non-zero taps first, ascending
    vals = np.take_along_axis(wt, idx, axis=1)
    return np.concatenate([vals.ravel(), idx.astype(np.int32).ravel().view(np.float32)])


def gen_depthwise(name: str, *, channels: int, k: int = 3, stride: int = 1, padding: int = 1,
                  in_layout: Layout, out_layout: Layout, act: str = "none",
                  has_residual: bool = False, schedule: dict | None = None,
                  target: Target, taps: int | None = None) -> GeneratedKernel:
    """Depthwise conv (groups == channels, one filter per channel); weight shape (C, 1, k, k).
    ``taps`` (``kept_taps`` of the weights): compute that many taps per channel, the channel's
    non-zero ones; ``pack`` then refuses a weight with more non-zeros in a channel."""
    where = f"depthwise kernel {name}"
    check_name(name)
    check_positive(where, channels=channels, k=k, stride=stride)
    check_act(act, where)
    if k > 7 or stride > 2:
        raise UnsupportedError(f"{where}: kernel {k}, stride {stride} not supported "
                               f"(kernel 1..7, stride 1 or 2)")
    if not 0 <= padding < k:
        raise InputError(f"{where}: padding {padding} must be in [0, {k - 1}] for a {k}x{k} kernel")
    check_layout_types(where, in_layout, out_layout)
    Ho = conv_out_size(in_layout.H, k, stride, padding, where)
    Wo = conv_out_size(in_layout.W, k, stride, padding, where)
    check_layouts(where, in_layout, out_layout, (channels, in_layout.H, in_layout.W),
                  (channels, Ho, Wo))
    cpu = target.require_cpu(where)
    sched = schedule or schedules(stride=stride, out_layout=out_layout, vl=cpu.lanes,
                                  registers=cpu.vector_registers, taps=taps)[0]
    rows = sched.get("rows") if isinstance(sched, dict) else None
    if not isinstance(rows, int) or not 1 <= rows <= 8:
        raise InputError(f"{where}: schedule must be {{'rows': 1..8}}, got {schedule!r}")
    rows = min(rows, Ho)
    kk = k * k
    acc = input_access(name, channels=channels, k=k, stride=stride, padding=padding,
                       in_layout=in_layout, Ho=Ho, Wo=Wo, allow_strided=True)
    load = VECTOR_LOAD[acc.step]
    O = out_layout

    if taps is not None and not 1 <= taps < kk:
        raise InputError(f"{where}: {taps} taps per channel; expected 1..{kk - 1} (or None: all {kk})")
    offs = [str(o) for o in acc.tap_off] if taps is None else [f"o{j}" for j in range(taps)]

    def block(nrows: int, indent: str) -> str:
        """C for ``nrows`` output rows starting at oh, vector column at w0."""
        names: dict[str, str] = {}
        for r in range(nrows):
            for off in offs:
                names.setdefault(f"{r * acc.row_stride} + {off}", f"x{len(names)}")
        lines = [f"{indent}vf {v} = {load}(ip + {o});" for o, v in names.items()]
        for r in range(nrows):
            terms = " + ".join(f"wt{t} * {names[f'{r * acc.row_stride} + {off}']}" for t, off in enumerate(offs))
            expr = f"bv + {terms}"
            if has_residual:
                expr += f" + vload(rp + {r * O.ld})"
            lines.append(f"{indent}{{ vf v = {act_c(act, expr)}; if (tail) v = vand(v, tm); "
                         f"vstore(op + {r * O.ld}, v); }}")
        return "\n".join(lines)

    def rdecl(row: str, indent: str) -> str:
        if not has_residual:
            return ""
        return f"{indent}const float *rp = res + ob + (size_t){row} * {O.ld} + w0;"

    nw = kk if taps is None else taps  # weights per channel
    wdecl = " ".join(f"const vf wt{t} = vbcast(wc[{t}]);" for t in range(nw))
    if taps is not None:  # the channel's taps: indices after the weights, offsets from a table
        wdecl += (f"\n        static const int32_t tap_off[{kk}] = {{{', '.join(str(o) for o in acc.tap_off)}}};"
                  f"\n        const int32_t *tq = (const int32_t *)w + {channels * taps} + (size_t)c * {taps};\n        "
                  + " ".join(f"const ptrdiff_t o{j} = tap_off[tq[{j}]];" for j in range(taps)))
    nrb = -(-Ho // rows)
    code = helpers_c(target) + f"""
/* {name}: depthwise {k}x{k} conv, {channels} channels, stride {stride}, padding {padding},
   {in_layout.H}x{in_layout.W} -> {Ho}x{Wo}, {rows} output rows per pass,
   {'direct input' if acc.direct else 'phase-plane prep'}{'' if taps is None else f', {taps} taps per channel'} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    enum {{ NVW = ({Wo} + VL - 1) / VL, LASTW = (NVW - 1) * VL }};
    const vi tm = vtailmask({Wo} - LASTW);
    (void)res;{acc.scratch}
    {{{acc.prep}
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {channels * nrb}; u++) {{
        int c = u / {nrb}, oh0 = u % {nrb} * {rows};
        const float *wc = w + (size_t)c * {nw};
        {wdecl}
        const vf bv = vbcast(bias[c]);
        const float *ib = {acc.src} + (size_t)c * {acc.cs} + {acc.origin};
        size_t ob = (size_t)c * {O.ps} + {O.origin};
        for (int w0 = 0; w0 < {Wo}; w0 += VL) {{
            int tail = w0 == LASTW;
            if (oh0 + {rows} <= {Ho}) {{
                const float *ip = ib + (size_t)oh0 * {acc.row_stride} + w0 * {acc.step};
                float *op = out + ob + (size_t)oh0 * {O.ld} + w0;
{rdecl("oh0", " " * 16)}
{block(rows, " " * 16)}
            }} else {{
                for (int oh = oh0; oh < {Ho}; oh++) {{
                    const float *ip = ib + (size_t)oh * {acc.row_stride} + w0 * {acc.step};
                    float *op = out + ob + (size_t)oh * {O.ld} + w0;
{rdecl("oh", " " * 20)}
{block(1, " " * 20)}
                }}
            }}
        }}
    }}
    }}
}}
"""

    def pack(weight: np.ndarray) -> np.ndarray:
        wt = check_weight(weight, (channels, 1, k, k), name)
        return wt.ravel().copy() if taps is None else pack_taps(wt, taps, where)

    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=2 * channels * nw * Ho * Wo,
                           schedule={"rows": rows})
