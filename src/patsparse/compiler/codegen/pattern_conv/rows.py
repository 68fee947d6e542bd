"""The row layout: an output tile of ``rows`` x ``vecs`` vectors in registers, all mask runs of
one filter (optionally channel-blocked)."""

from __future__ import annotations

from ...reorder import FULL_MASK, mask_taps
from ...target import Target
from ..access import input_access
from ..base import act_c
from .shared import ConvShape, LayerEmitter, fkw_prologue, header


class RowEmitter(LayerEmitter):
    """Writes the C for one layer; one method per piece so each stays readable."""

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target):
        super().__init__(name, sp, lay, shape, act, has_residual, target)
        vl = self.vl
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
        parts = header(self.name, self.sh, lay, self.target, f"tile {self.rows}x{self.vecs} order {self.order}"
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
        fn = [*fkw_prologue(self.name, o), *self.acc.scratch.strip("\n").splitlines(),
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
