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
Stride 2 loads two vectors and keeps the even lanes (a deinterleave), so strided layers stay
vectorised too. The vector length is fixed when the code is generated (``vl``; the host's by
default) and checked by the C compiler, so a library never runs with the wrong width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout
from ..reorder import FULL_MASK, LayerSparsity, analyse, mask_taps, reorder
from ..storage import pack as fkw_pack, plan
from .base import GeneratedKernel, act_c

DEFAULT_SCHEDULE = {"rows": 0, "vecs": 0, "order": "tf"}  # 0 = choose from the shape
# accumulators per tile: the register file minus 4 weight broadcasts and a temporary
# (16 registers with AVX2 and SSE, 32 with AVX-512)


def max_acc(vl: int) -> int:
    return 24 if vl == 16 else 11


def host_vl() -> int:
    """Floats per vector for the host ISA, as the PRELUDE will define VL."""
    from ..build import isa_macros

    macros = isa_macros()
    return 16 if "__AVX512F__" in macros else 8 if "__AVX__" in macros else 4


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


def default_schedule(out: Layout, vl: int) -> dict:
    """A good untuned tile: all vectors of a row when they fit, then as many rows as fit."""
    nv = -(-out.W // vl)
    vecs = min(nv, 4)
    rows = max(1, min(out.H, max_acc(vl) // vecs))
    return {"rows": rows, "vecs": vecs, "order": "tf"}


def candidate_schedules(out: Layout, vl: int) -> list[dict]:
    """The tuning space: tiles of 4..max_acc accumulators that fit the output, both loop orders."""
    nv = -(-out.W // vl)
    top = max_acc(vl)
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
                    cands.append({"rows": rows, "vecs": vecs, "order": order})
    return cands


def gen_pattern_conv(name: str, weight: np.ndarray, *, stride: int, padding: int, in_layout: Layout,
                     out_layout: Layout, act: str = "none", has_residual: bool = False,
                     schedule: dict | None = None, vl: int | None = None,
                     sparsity: LayerSparsity | None = None, where: str | None = None) -> GeneratedKernel:
    """Generate the pattern-specialised kernel ``name`` for a (F, C, 3, 3) ``weight``.

    The code depends on which masks the weights use (read from the weights, or ``sparsity``);
    ``pack`` of the result turns a weight with that sparsity into the compact FKW array the
    kernel reads. ``where`` names the layer in errors (defaults to ``name``).
    """
    where = where or name
    weight = np.asarray(weight, dtype=np.float32)
    shape = ConvShape.check(weight.shape, stride, padding, in_layout, out_layout, where)
    vl = vl or host_vl()
    sp = sparsity or analyse(weight, where)
    ro = reorder(sp)
    lay = plan(sp, ro)
    sched = dict(default_schedule(out_layout, vl))
    sched.update({k: v for k, v in (schedule or {}).items() if v})
    if sched["order"] not in ("tf", "ft"):
        raise InputError(f"{where}: schedule order must be 'tf' or 'ft', got {sched['order']!r}")
    code = _Emitter(name, sp, lay, shape, act, has_residual, sched, vl).emit()
    taps = sp.taps_per_kernel().sum()
    flops = 2 * int(taps) * out_layout.H * out_layout.W

    def pack(w: np.ndarray) -> np.ndarray:
        return fkw_pack(sp, ro, np.asarray(w, dtype=np.float32), where)

    sched["vl"] = vl
    return GeneratedKernel(name=name, code=code, pack=pack, flops=flops, schedule=sched)


class _Emitter:
    """Writes the C for one layer; one method per piece so each stays readable."""

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, vl):
        self.name, self.sp, self.lay, self.sh = name, sp, lay, shape
        self.act, self.res, self.vl = act, has_residual, vl
        self.rows, self.vecs, self.order = int(sched["rows"]), int(sched["vecs"]), sched["order"]
        out = shape.out
        self.nv = -(-out.W // vl)
        self.vecs = max(1, min(self.vecs, self.nv))
        self.rows = max(1, min(self.rows, out.H))
        self.tail_lanes = out.W - (self.nv - 1) * vl  # valid lanes of a row's last vector

    # ---- the tile: R x V accumulators, all mask runs of one filter ------------------------
    def _load(self, rr: int, dx: int, v: int) -> str:
        s, ild, vl = self.sh.stride, self.sh.inp.ld, self.vl
        off = f"{rr * ild + dx + s * v * vl}"
        if s == 1:
            return f"vload(ip + {off})"
        return f"vdeint_even(ip + {off})"

    def _mask_body(self, p: int, R: int, V: int) -> list[str]:
        m = self.sp.masks[p]
        taps = mask_taps(m)
        s = self.sh.stride
        lines = [f"    /* mask {p}: taps {list(taps)}{' (dense kernel)' if m == FULL_MASK else ''} */",
                 f"    for (int k = runs[{p}]; k < runs[{p + 1}]; k++, wk += {len(taps)}) {{",
                 f"        const float *restrict ip = ib + (ptrdiff_t)cidx[k] * {self.sh.inp.ps};"]
        for j in range(len(taps)):
            lines.append(f"        const vf w{j} = pc_splat(wk[{j}]);")
        # stream input rows: each (row, dx, vector) is loaded once and feeds every tap that uses it
        uses: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for j, t in enumerate(taps):
            dy, dx = divmod(t, 3)
            for r in range(R):
                uses.setdefault((s * r + dy, dx), []).append((j, r))
        for (rr, dx) in sorted(uses):
            for v in range(V):
                lines.append(f"        {{ const vf x = {self._load(rr, dx, v)};")
                for j, r in uses[(rr, dx)]:
                    lines.append(f"          a{r}_{v} += w{j} * x;")
                lines.append("        }")
        lines.append("    }")
        return lines

    def _tile(self, R: int, V: int) -> str:
        out, P = self.sh.out, len(self.sp.masks)
        fn = f"{self.name}_t{R}x{V}"
        lines = [f"static inline __attribute__((always_inline)) void {fn}(",
                 "    const float *restrict ib, float *restrict op, const float *restrict rp,",
                 "    const int32_t *restrict runs, const int32_t *restrict cidx,",
                 "    const float *restrict wk, float b, int lastmask) {"]
        for r in range(R):
            lines.append("    vf " + ", ".join(f"a{r}_{v} = {{0}}" for v in range(V)) + ";")
        for p in range(P):
            lines += self._mask_body(p, R, V)
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
        sh, vl = self.sh, self.vl
        inp, out = sh.inp, sh.out
        ib = (f"in + (ptrdiff_t)(oh * {sh.stride} + {inp.pad - sh.pad}) * {inp.ld} + "
              f"{inp.pad - sh.pad + sh.stride * v0 * vl}")
        ob = f"oplane + oh * {out.ld} + {v0 * vl}"
        rb = f"rplane + oh * {out.ld} + {v0 * vl}" if self.res else "0"
        last = 1 if (v0 + V == self.nv and self.tail_lanes != vl) else 0
        P = len(self.sp.masks)
        return (f"{self.name}_t{R}x{V}({ib}, {ob}, {rb}, runs + (ptrdiff_t)f * {P}, cidx, "
                f"wts + wptr[f], bias[oc], {last});")

    def emit(self) -> str:
        lay, out = self.lay, self.sh.out
        o = lay.offsets
        shapes = sorted({(R, V) for _, R, cols in self._row_loops() for _, V in cols})
        parts = [f"/* ---- {self.name}: pattern conv 3x3/{self.sh.stride} pad {self.sh.pad}, "
                 f"{lay.C}->{lay.F} ch, {self.sh.inp.H}x{self.sh.inp.W} -> {out.H}x{out.W}, "
                 f"{lay.P} masks, {lay.K} kernels, tile {self.rows}x{self.vecs} order {self.order} */",
                 f'_Static_assert(VL == {self.vl}, "{self.name} was generated for {self.vl}-float '
                 f'vectors; regenerate it on this machine");']
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
            else:  # tiles outer, filters inner: a tile's input rows stay in cache across filters
                loops += [head + " {", "    " + floop] + ["        " + x for x in filt + calls]
                loops += ["    }", "}"]
        if self.order == "ft":
            loops = [floop] + ["    " + x for x in filt + loops] + ["}"]
        fn = [f"static void {self.name}(const float *restrict in, float *restrict out,",
              "    const float *restrict w, const float *restrict bias, const float *restrict res) {",
              "    const int32_t *restrict wi = (const int32_t *)w;",
              f"    const int32_t *restrict perm = wi + {o['perm']};",
              f"    const int32_t *restrict runs = wi + {o['runs']};",
              f"    const int32_t *restrict cidx = wi + {o['cidx']};",
              f"    const int32_t *restrict cost = wi + {o['cost']};",
              f"    const int32_t *restrict wptr = wi + {o['wptr']};",
              f"    const float *restrict wts = w + {o['weights']};",
              "    (void)res;",
              "    #pragma omp parallel",
              "    {",
              "        const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
              f"        const int f0 = ps_split(cost, {lay.F}, t, nt), f1 = ps_split(cost, {lay.F}, t + 1, nt);"]
        fn += ["        " + x for x in loops]
        fn += ["    }", "}"]
        parts.append("\n".join(fn))
        return "\n\n".join(parts) + "\n"


# Shared by every pattern layer (the graph emits it once): first filter of thread t's share,
# the reordered filters split by cumulative tap count.
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
/* broadcast; unlike (vf){0} + x, x - 0 is exact for every x, so GCC folds the add away */
static inline vf pc_splat(float x) { return x - (vf){0}; }
/* even lanes of the 2*VL floats at p: one output vector of a stride-2 row */
static inline vf vdeint_even(const float *p) {
#if VL == 16
    return __builtin_shufflevector(vload(p), vload(p + VL), 0, 2, 4, 6, 8, 10, 12, 14,
                                   16, 18, 20, 22, 24, 26, 28, 30);
#elif VL == 8
    return __builtin_shufflevector(vload(p), vload(p + VL), 0, 2, 4, 6, 8, 10, 12, 14);
#else
    return __builtin_shufflevector(vload(p), vload(p + VL), 0, 2, 4, 6);
#endif
}
#endif
"""
