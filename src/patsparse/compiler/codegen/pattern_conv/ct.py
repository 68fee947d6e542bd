"""The channel-tile layout: output tiles outer, input channels, then filters (stride 2 and
small stride-1 layers)."""

from __future__ import annotations

from ...reorder import mask_taps
from ...target import Target
from ..access import input_access
from ..base import act_c, single_image_c
from ..common import VECTOR_LOAD
from .shared import ConvShape, LayerEmitter, channel_prefetch, fkw_prologue, header


class ChannelTileEmitter(LayerEmitter):
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
    loads are a large share of its work. It pays at stride 2 and costs a little at stride 1 (in
    the model and alone), so it is on by default for stride 2 only; both are in the tuning space.

    ``s2`` 1 (stride 2, the default) reads the input in place through its halo with
    ``ps_load_s2`` (two loads and a shuffle per vector, loaded once per channel and tile)
    instead of through phase planes: the planes' copy (the prep, the whole input written
    again) cost as much as a third of these layers.

    Batched (base.GeneratedKernel) where it reads the input in place: the block's images are an
    outer dimension of the tiles, so the team splits the tiles of all images (a 4x4 plane's few
    tiles kept one of two threads idle) and the layer's weights stay in cache between images.

    ``ipf`` > 0 prefetches, at the start of each channel, the tile's input lines of the channel
    ``ipf`` ahead. ResNet-18's activations (0.8 MB a tensor at 56x56) do not stay in L2, and a
    tile's rows of one channel are a few scattered lines the hardware prefetcher does not
    predict; two channels ahead is the default, and it pays most when the vCPUs sit apart.
    """

    TRANSPOSED = True

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target):
        super().__init__(name, sp, lay, shape, act, has_residual, target)
        vl = self.vl
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
        partial added after its products, as in ChannelMajorEmitter._kernel)."""
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
                 "    const float *restrict src, float *restrict out, const float *restrict res,",
                 "    const int32_t *restrict perm, const int32_t *restrict runs, const uint16_t *restrict cidx,",
                 "    const int32_t *restrict wptr, const float *restrict wts, const float *restrict bias,",
                 "    float *restrict part, int oh, int v0) {",
                 f"    memset(part, 0, {F * T} * sizeof(float));",
                 f"    for (int i = 0; i < {C}; i++) {{",
                 f"        const float *restrict ib = src + (ptrdiff_t)perm[i] * {acc.cs} + {acc.origin}"
                 f" + (ptrdiff_t)oh * {acc.row_stride} + v0 * {vl * acc.step};",
                 "        const float *restrict wk = wts + wptr[i];",
                 f"        const int32_t *restrict ri = runs + (ptrdiff_t)i * {lay.P};"]
        inputs = self._inputs(R, V)
        lines += ["        " + x for x in channel_prefetch(self.ipf, str(C), "ib", acc.cs, inputs, vl * acc.step, self.line)]
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

    @property
    def batched(self) -> bool:
        """Whether the code defines NAME_nb: where the input is read in place (no prep)."""
        return self.acc.direct

    def emit(self) -> str:
        lay, sh, out, acc, vl = self.lay, self.sh, self.sh.out, self.acc, self.vl
        F, R, V, nv, T = out.C, self.R, self.V, self.nv, self.T
        nb = self.batched
        rows = sorted({R} | ({out.H % R} if out.H % R else set()), reverse=True)
        cols = sorted({V} | ({nv % V} if nv % V else set()), reverse=True)
        ntile_cols, ntile_rows = -(-nv // V), -(-out.H // R)

        def call(r: int, w: int) -> str:
            args = "ib, ob, rb" if nb else f"{acc.src}, out, res"
            return f"{self.name}_ct{r}x{w}({args}, perm, runs, cidx, wptr, wts, bias, part, oh, v0);"

        body = [*header(self.name, sh, lay, self.target, f"channel-tile layout, {R} rows x {V} vectors per tile"),
                *[self._tile(r, w) for r in rows for w in cols],
                *fkw_prologue(self.name, lay.offsets, nb),
                *acc.scratch.strip("\n").splitlines(),  # phase planes (shared), if any
                f"    PS_PRIVATE(part, {F * T}, \"{self.name}\");",
                "    (void)cost;",
                "    {",
                *acc.prep.strip("\n").splitlines(),
                "    }",
                "    #pragma omp for schedule(static) nowait",
                f"    for (int q = 0; q < {'nb * ' if nb else ''}{ntile_rows * ntile_cols}; q++) {{"]
        if nb:  # tile q of the pool: tile q % tiles of image q / tiles
            body += [f"        const int b = q / {ntile_rows * ntile_cols}, qt = q % {ntile_rows * ntile_cols};",
                     "        const float *restrict ib = in + b * is, *restrict rb = res ? res + b * is : 0;",
                     "        float *restrict ob = out + b * is;"]
        body.append(f"        const int oh = {'qt' if nb else 'q'} / {ntile_cols} * {R}, "
                    f"v0 = {'qt' if nb else 'q'} % {ntile_cols} * {V};")
        def by_cols(r: int) -> str:  # full-width tiles, or the right-hand remainder
            if len(cols) == 1:
                return call(r, cols[0])
            return f"{{ if (v0 + {V} <= {nv}) {call(r, cols[0])} else {call(r, cols[1])} }}"

        if len(rows) == 1:
            body.append("        " + by_cols(R))
        else:  # full-height tiles, or the bottom remainder
            body += [f"        if (oh + {R} <= {out.H}) {by_cols(R)}", f"        else {by_cols(rows[1])}"]
        body += ["    }", "}"]
        if nb:
            body.append(single_image_c(self.name))
        return "\n".join(body) + "\n"
