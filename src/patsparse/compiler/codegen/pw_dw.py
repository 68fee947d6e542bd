"""A 1x1 conv and the depthwise conv after it in one kernel: MobileNet-V2's expand + depthwise,
and the project 1x1 conv after them: a whole inverted-residual block.

MobileNet-V2's first inverted-residual stages expand a thin tensor 6x with a 1x1 conv and feed
it straight to a 3x3 depthwise conv: at 112x112 the expanded tensor is 96 x 112 x 112 floats
(4.8 MB), written by one kernel and read back by the next, through L3 that other tenants share.
In the model the expand ran at 112 GF/s against 210-350 for the same kernel on smaller planes:
it waits on that traffic. Fused, the expanded tensor never leaves the thread: each depthwise
output row needs k expanded rows, kept in a ring of k rows x all channels (per thread, in L2;
[slot][channel][row]), and a row is expanded only when the first output row needing it comes up,
so each is computed once (a row on the boundary between two threads' output rows, twice).

Threads split the output rows. Per expanded row the 1x1 conv is a small GEMM (channels x row
vectors x input channels) in the implicit GEMM's register tiles (igemm.fma_step, weights packed
by igemm.pack_tiles; the tile from igemm.schedules for a one-row plane), its activation and
bias at the store, lanes past the row zeroed. The depthwise pass then reads the ring's k rows
through one pointer each (a row above or below the image points at a zero row), its taps at
compile-time column offsets, stride 2 with ps_load_s2. Ring rows have a vector of left margin
(zero: the left padding, and aligned stores for the expand) and zero columns past the row for
the right padding and the stride-2 over-read.

With the block's project conv fused too (``Project``: lowering.fuse_project), the depthwise
pass writes its output row into a per-thread band (C rows of the output's vectors, in L1) and
the project turns the band into the block's output row at once, in the same two row forms as
the expand (dense tiles or the grouped reduction), its residual added at the store: the
depthwise output, as big as the expanded tensor at stride 1, never leaves the thread either.

Weights: the expand's packed tiles, then its bias, then the project's and its bias, then the
depthwise weights (C x k*k); the kernel's own bias is the depthwise's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout, round_up
from ..target import Target
from .base import GeneratedKernel, act_c
from .common import (check_act, check_layout_types, check_layouts, check_name, check_positive,
                     check_weight, conv_out_size, helpers_c, ring_rows_c, VECTOR_LOAD)
from .depthwise import pack_taps
from .grouped1x1 import layer_plan, max_nv, pack_grouped, pick, row_c, row_nv
from .igemm import fma_step, pack_tiles, schedules as igemm_schedules
from ..grouped import kept_weights, register_ok
from ..reorder import LayerSparsity


def tiles(cout: int, W: int, cin: int, target: Target, grouped: bool = False, fmas: int = 0) -> list[dict]:
    """The implicit GEMM's row-vector tiles for one expanded row (a 1 x W plane), best first;
    for a pruned expand (``grouped``), the grouped kernel's tile widths, after its
    register-blocked form on one vector where the layer's ``fmas`` (kept weights) allow it
    (grouped.REGISTER_MAX_FMAS)."""
    if grouped:
        nv = row_nv(W, target)
        reg = [{"nv": 1, "reg": 1}] if register_ok(fmas) else []
        lanes = target.require_cpu("pw_dw").lanes
        return reg + [{"nv": n} for n in dict.fromkeys((nv, min(max_nv(target), -(-W // lanes))))]
    return [d for d in igemm_schedules(cout=cout, Ho=1, Wo=W, cin=cin, k=1, target=target) if "mr" in d]


def default_tile(cout: int, W: int, cin: int, target: Target, grouped: bool = False, fmas: int = 0) -> dict:
    return tiles(cout, W, cin, target, grouped, fmas)[0]


@dataclass(frozen=True)
class Project:
    """The project conv of an inverted-residual block, fused after the depthwise conv: a (Cp, C,
    1, 1) ``weight`` (pruned in virtual 3x3 kernels: ``sparsity``, compiler.grouped), its
    ``bias`` and activation ``act``."""
    weight: np.ndarray
    bias: np.ndarray
    act: str = "none"
    sparsity: LayerSparsity | None = None


@dataclass(frozen=True)
class _Row:
    """One row of a 1x1 conv in the fused kernel: its packed weights (then its bias, padded to
    16), the C block, its schedule, a description and its multiply-adds per pixel."""
    packed: np.ndarray
    code: list[str]
    sched: dict
    what: str
    macs: int


def _row_conv(weight: np.ndarray, bias: np.ndarray, act: str, sp: LayerSparsity | None, sched: dict, *,
              at: int, src: str, cs: int, W: int, dst: str, dst_ld: int, tail: str, res: str | None,
              target: Target, where: str, role: str) -> _Row:
    """One ``W``-pixel row of a (cout, cin, 1, 1) conv, dense in the implicit GEMM's register
    tiles (``sched`` {"mr", "nr"}) or pruned (``sp``) in the grouped kernel's reduction ({"nv"}),
    reading ``src`` (channels ``cs`` apart) and writing ``dst`` (``dst_ld``), its weights packed
    at ``w + at``."""
    cout, cin = weight.shape[:2]
    b = np.asarray(bias, np.float32).ravel()
    if b.shape != (cout,) or not np.isfinite(b).all():
        raise InputError(f"{where}: bias must be {cout} finite floats, got shape {b.shape}")
    if sp is not None:
        nv = int(sched.get("nv", 0))
        if not 1 <= nv <= 16:
            raise InputError(f"{where}: tile nv={nv} out of range (1..16)")
        reg = {"reg": 1} if int(sched.get("reg", 0)) else {}
        gp = layer_plan(sp, {"nv": nv, "panel": 0, **reg}, target, where)
        packed = pack_grouped(gp, sp, weight, cs, where)
        code = row_c(where, gp, nv=nv, W=W, cin=cin, cs=cs, src=src, dst=dst, dst_ld=dst_ld,
                     bias_at=at + packed.size, act=act, target=target, tail=tail, res=res, base=f"w + {at}")
        form = ", register-blocked" if reg else ""
        out = {"nv": nv, **reg}, f"grouped sparse {role} ({len(sp.masks)} masks{form}), tile {nv} row vectors", \
            kept_weights(sp)
    else:
        mr, nr = int(sched.get("mr", 0)), int(sched.get("nr", 0))
        if not (1 <= mr <= 32 and 1 <= nr <= 16):
            raise InputError(f"{where}: tile mr={mr}, nr={nr} out of range (1..32, 1..16)")
        packed = pack_tiles(weight, mr)
        code = _dense_row_c(mr=mr, nr=nr, C=cout, cin=cin, W=W, src=src, cs=cs, dst=dst, dst_ld=dst_ld,
                            wq=f"w + {at}", bias_at=at + packed.size, act=act, tail=tail, res=res,
                            vl=target.require_cpu(where).lanes)
        out = {"mr": mr, "nr": nr}, f"{role} tile {mr} channels x {nr} row vectors", cout * cin
    padded = np.zeros(round_up(cout, 16), np.float32)
    padded[:cout] = b
    return _Row(np.concatenate([packed, padded]).astype(np.float32), code, *out)


def gen_pw_dw(name: str, *, expand_weight: np.ndarray, expand_bias: np.ndarray, expand_act: str,
              k: int = 3, stride: int = 1, padding: int = 1, in_layout: Layout, out_layout: Layout,
              act: str, target: Target, schedule: dict | None = None,
              has_residual: bool = False, expand_sparsity: LayerSparsity | None = None,
              taps: int | None = None, project: Project | None = None) -> GeneratedKernel:
    """act(depthwise(expand_act(conv1x1(x, expand_weight) + expand_bias), w) + bias) on one image,
    and with ``project`` the project conv on that: project.act(conv1x1(., project.weight) +
    project.bias [+ residual]) (a residual needs the project).

    ``expand_weight`` (C, Cin, 1, 1); the depthwise weight (C, 1, k, k) is what ``pack`` gets.
    ``schedule``: {"mr", "nr"}, the expand's tile (default_tile). With ``expand_sparsity`` (the
    expand pruned in virtual 3x3 kernels: compiler.grouped) the expand runs the grouped sparse
    kernel's reduction instead (grouped1x1.row_c), schedule {"nv"}. The project's tile: keys
    "pmr", "pnr" (dense) or "pnv" (pruned), default_tile for its row. With ``taps``
    (depthwise.kept_taps) the depthwise pass computes each channel's non-zero taps only, as the
    depthwise kernel does. The code is generated for the ``target``'s vector width (a static
    assert keeps it from being built for another)."""
    where = f"1x1 + depthwise kernel {name}"
    vl = target.require_cpu(where).lanes
    check_name(name)
    check_positive(where, k=k, stride=stride)
    check_act(act, where)
    check_act(expand_act, where)
    if has_residual and project is None:
        raise UnsupportedError(f"{where}: a residual on the fused depthwise output is not supported "
                               f"(only on a fused project conv's)")
    if k > vl or stride > 2 or not 0 <= padding < k:
        raise UnsupportedError(f"{where}: depthwise kernel {k}, stride {stride}, padding {padding} "
                               f"not supported (kernel up to {vl}, stride 1 or 2, padding < kernel)")
    check_layout_types(where, in_layout, out_layout)
    cin = in_layout.C
    C = int(np.shape(expand_weight)[0]) if project is not None and np.ndim(expand_weight) == 4 else out_layout.C
    ew = check_weight(expand_weight, (C, cin, 1, 1), f"{name} (expand)")
    H, W = in_layout.H, in_layout.W
    Ho, Wo = (conv_out_size(n, k, stride, padding, where) for n in (H, W))
    check_layouts(where, in_layout, out_layout, (cin, H, W), (out_layout.C if project else C, Ho, Wo))
    K, S, P, kk = k, stride, padding, k * k
    nvw, nvo = -(-W // vl), -(-Wo // vl)
    lasto = (nvo - 1) * vl
    # ring row: VL of left margin, the expanded row, zeros for the right padding and for what the
    # depthwise loads read past it (ps_load_s2 reads 2 vectors)
    rl = round_up(max(vl + nvw * vl, vl - P + S * lasto + K - 1 + S * vl), vl)
    ring = K * C * rl + rl  # K slots of C rows, then one zero row
    band = C * nvo * vl if project else 0  # the depthwise output row the project reads
    load = VECTOR_LOAD[S]
    sched = pick(tiles(C, W, cin, target, expand_sparsity is not None, kept_weights(expand_sparsity)),
                 {k_: v for k_, v in (schedule or {}).items() if not k_.startswith("p")})
    e = _row_conv(ew, expand_bias, expand_act, expand_sparsity, sched, at=0, src="src", cs=in_layout.ps, W=W,
                  dst="slot", dst_ld=rl, tail="te", res=None, target=target, where=f"{where} (expand)", role="expand")
    what, sched = e.what, dict(e.sched)
    dw = e.packed.size
    O, nl, proj = out_layout, "\n", []
    if project is not None:
        check_act(project.act, f"{where} (project)")
        pw = check_weight(project.weight, (O.C, C, 1, 1), f"{name} (project)")
        ps_ = {k_[1:]: v for k_, v in (schedule or {}).items() if k_.startswith("p")}
        ps_ = pick(tiles(O.C, Wo, C, target, project.sparsity is not None, kept_weights(project.sparsity)), ps_)
        row = f"{O.origin} + (size_t)oh * {O.ld}"
        p = _row_conv(pw, project.bias, project.act, project.sparsity, ps_, at=dw, src="band", cs=nvo * vl, W=Wo,
                      dst=f"(out + {row})", dst_ld=O.ps, tail="to", res=f"(res + {row})" if has_residual else None,
                      target=target, where=f"{where} (project)", role="project")
        sched.update({"p" + k_: v for k_, v in p.sched.items()})
        what += f"; 1x1 conv {C}->{O.C} ({project.act}{', + residual' if has_residual else ''}), {p.what}"
        dw += p.packed.size
        proj = p.code
    if taps is not None and not 1 <= taps < kk:
        raise InputError(f"{where}: {taps} depthwise taps per channel; expected 1..{kk - 1} (or None: all {kk})")
    if taps is None:
        nw, tap_ptrs = kk, ""
        terms = " + ".join(f"wt{kh * K + kw} * {load}(r{kh} + {S} * w0 + {kw})" for kh in range(K) for kw in range(K))
    else:  # the channel's taps: indices after its weights, each a row pointer and a column
        nw = taps
        tap_ptrs = (f"const float *rr[{K}] = {{{', '.join(f'r{kh}' for kh in range(K))}}}; "
                    f"const int32_t *tq = (const int32_t *)wd + {C * taps} + (size_t)c * {taps}; "
                    + " ".join(f"const float *p{j} = rr[tq[{j}] / {K}] + tq[{j}] % {K};" for j in range(taps)))
        terms = " + ".join(f"wt{j} * {load}(p{j} + {S} * w0)" for j in range(taps))
    dst = (f"band + (size_t)c * {nvo * vl}" if project else
           f"out + (size_t)c * {O.ps} + {O.origin} + (size_t)oh * {O.ld}")
    code = helpers_c(target) + f"""
/* {name}: 1x1 conv {cin}->{C} ({expand_act}) + depthwise {K}x{K}/{S} pad {P} ({act}), {H}x{W} -> {Ho}x{Wo};
   a ring of {K} expanded rows per thread, {what}{'' if taps is None else f', {taps} depthwise taps per channel'} */
_Static_assert(VL == {vl}, "{name} was generated for {vl}-float vectors; regenerate it on this machine");
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)res;
    const float *restrict wd = w + {dw};
    const vi te = vtailmask({W - (nvw - 1) * vl}), to = vtailmask({Wo - lasto});
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    PS_PRIVATE(ring, {ring + band}, "{name}");
    float *restrict zrow = ring + {K * C * rl};{f"{nl}    float *restrict band = ring + {ring};" if project else ""}
    for (int s = 0; s < {K * C}; s++) {{  /* left margin and right zeros (other kernels reuse the arena) */
        memset(ring + (size_t)s * {rl}, 0, VL * sizeof(float));
        memset(ring + (size_t)s * {rl} + {vl + nvw * vl}, 0, {rl - vl - nvw * vl} * sizeof(float));
    }}
    memset(zrow, 0, {rl} * sizeof(float));
    const int p0 = {Ho} * t / nt, p1 = {Ho} * (t + 1) / nt;
    int done = 0;  /* expanded rows below it are in the ring already, or not needed */
    for (int oh = p0; oh < p1; oh++) {{
{nl.join("        " + x for x in ring_rows_c("oh", S, P, K, H))} {{
            float *restrict slot = ring + (size_t)(r % {K}) * {C * rl} + VL;
            const float *restrict src = in + {in_layout.origin} + (size_t)r * {in_layout.ld};
{nl.join(" " * 12 + x for x in e.code)}
        }}
        done = r1;
        const float *rb[{K}];
        size_t rs[{K}];
        for (int kh = 0; kh < {K}; kh++) {{  /* the ring row of each tap row, or the zero row */
            const int r = oh * {S} - {P} + kh, in_img = r >= 0 && r < {H};
            rb[kh] = (in_img ? ring + (size_t)(r % {K}) * {C * rl} : zrow) + VL - {P};
            rs[kh] = in_img ? {rl} : 0;
        }}
        for (int c = 0; c < {C}; c++) {{
            {" ".join(f"const vf wt{i} = vbcast(wd[c * {nw} + {i}]);" for i in range(nw))}
            const vf bv = vbcast(bias[c]);
            {" ".join(f"const float *r{kh} = rb[{kh}] + c * rs[{kh}];" for kh in range(K))}
            {tap_ptrs}
            float *op = {dst};
            for (int w0 = 0; w0 < {Wo}; w0 += VL) {{
                vf v = {act_c(act, f"bv + {terms}")};
                if (w0 == {lasto}) v = vand(v, to);
                vstore(op + w0, v);
            }}
        }}
{nl.join("        " + x for x in proj)}
    }}
}}
"""
    packed_rows = np.concatenate([e.packed, p.packed]) if project is not None else e.packed

    def pack(weight: np.ndarray) -> np.ndarray:
        wd = check_weight(weight, (C, 1, K, K), name)
        wd = wd.ravel() if taps is None else pack_taps(wd, taps, where)
        return np.concatenate([packed_rows, wd]).astype(np.float32)

    macs = e.macs * H * W + C * nw * Ho * Wo + (p.macs * Ho * Wo if project is not None else 0)
    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=2 * macs, schedule=sched)


def _dense_row_c(*, mr: int, nr: int, C: int, cin: int, W: int, src: str, cs: int, dst: str, dst_ld: int, wq: str,
                 bias_at: int, act: str, tail: str, res: str | None, vl: int) -> list[str]:
    """C block computing one ``W``-pixel row of a dense 1x1 conv ``cin`` -> ``C`` in the implicit
    GEMM's MR x NR register tiles: it reads ``src`` (input channel 0 of the row, channels ``cs``
    apart) and the weights packed by igemm.pack_tiles at ``wq`` (the bias at ``w + bias_at``), and
    writes channel co's row of act(conv + bias [+ the residual at ``res``]) at ``dst + co *
    dst_ld``, lanes past the row zeroed by the mask ``tail``."""
    cpad, nvw = round_up(C, mr), -(-W // vl)
    I, J = range(mr), range(nr)
    ochk = "" if C == cpad else f"if (co0 + {{i}} < {C}) "
    lines = [f"for (int u = 0; u < {-(-nvw // nr) * (cpad // mr)}; u++) {{",
             f"    const int pt = u / {cpad // mr}, co0 = u % {cpad // mr} * {mr};"]
    lines += [f"    int v{j} = pt * {nr} + {j}, ok{j} = v{j} < {nvw}; if (!ok{j}) v{j} = pt * {nr};" for j in J]
    lines += [f"    const float *wp = {wq} + (size_t)co0 * {cin};",
              "    vf " + ", ".join(f"a{i}_{j} = (vf){{0}}" for i in I for j in J) + ";",
              "    #pragma GCC unroll 4",
              f"    for (int ci = 0; ci < {cin}; ci++) {{",
              "        " + " ".join(f"const float *q{j} = {src} + (size_t)ci * {cs} + v{j} * VL;" for j in J),
              f"        const float *wk = wp + (size_t)ci * {mr};",
              *fma_step((0,), mr, nr, " " * 8),
              "    }"]
    for j in J:
        lines.append(f"    if (ok{j}) {{")
        for i in I:
            at = f"(size_t)(co0 + {i}) * {dst_ld} + v{j} * VL"
            val = f"a{i}_{j} + vbcast(w[{bias_at} + co0 + {i}])" + (f" + vload({res} + {at})" if res else "")
            lines.append(f"        {ochk.format(i=i)}{{ vf v = {act_c(act, val)};"
                         f" if (v{j} == {nvw - 1}) v = vand(v, {tail}); vstore({dst} + {at}, v); }}")
        lines.append("    }")
    lines.append("}")
    return lines
