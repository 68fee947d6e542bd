"""The channel-major layout for tiny planes: input channels outer, the transposed layer's
kernels inner, partial planes per filter."""

from __future__ import annotations

from ...reorder import mask_taps
from ...target import Target
from ..base import act_scalar_c, single_image_c
from .flat import FlatEmitter
from .shared import ConvShape, channel_prefetch, fkw_prologue, header


class ChannelMajorEmitter(FlatEmitter):
    """The channel-major layout for tiny output planes: input channel outer, filters inner.

    Why: in the flat layout every kernel of every filter fetches its channel's tap copies from
    L2 (a 512-channel layer's copies are 256-300 KB), and the cost per kernel stays the same
    whatever its FMA count. Here a thread takes a share of the input channels; for each it
    builds the tap copies once (in L1), keeps a mask's tap vectors in registers for the whole
    mask run, and adds each kernel into its filter's partial sums (a whole output plane per
    filter: F x 16 floats for 4x4, in L1/L2), so the only per-kernel traffic is the filter's
    partials and the weights. After a barrier the partials are summed per filter, with bias,
    residual and activation, into the output layout.

    The channels are split into ``parts`` shares (the team size the model is compiled for),
    each with its partial planes, and thread t takes shares t, t + nt, ...: the sum's order
    is then the same whatever team runs the call, so a call that falls back to one thread
    (base.PRELUDE) returns the same bits as one that ran on the whole team.

    The weights are the transposed layer in FKW1 (``gen_pattern_conv``): runs per (input
    channel, mask), ``cidx`` holding output channels, threads split channels by tap count.
    Tap packing (``pack`` > 1) works as in the flat layout; partials are then one vector per
    filter whose g lane groups are summed at the end.

    Batched (base.GeneratedKernel): each input channel's weights serve every image of the block
    in turn (image inner, from L1), each image with its own partials, so the weight stream these
    layers are bound by is read once per block.

    ``wpf`` > 0 prefetches the weight stream that many floats ahead, one prefetch per kernel:
    these layers stream their weights once per image (megabytes at pattern-only sparsity, from
    L3 or memory) at a few cycles per kernel, faster than the hardware prefetcher keeps up with.
    ``ipf`` prefetches the plane region the copy reads ``ipf`` channels ahead, as in the
    channel-tile layout; it pays most when the host places the two vCPUs apart.
    """

    TRANSPOSED = True
    batched = True

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target,
                 parts: int = 2):
        super().__init__(name, sp, lay, shape, act, has_residual, sched, target)
        self.wpf, self.ipf, self.parts = int(sched["wpf"]), int(sched["ipf"]), max(1, int(parts))

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
        the partial-first form would put an L1/L2 load plus four dependent FMAs on every output
        vector's path.
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
        """Sum the shares' partials ``sc`` of filter f (+ bias, residual ``rb``, activation) into
        the output ``ob``: one image's."""
        out, S, vl = self.sh.out, self._part_floats(), self.vl
        F = self.sh.out.C
        lines = [f"float tmp[{S}] __attribute__((aligned(64)));"]
        for v in range(S // vl):
            lines += [f"{{ vf a = vloada(sc + (ptrdiff_t)f * {S} + {v * vl});",
                      f"  for (int q = 1; q < {self.parts}; q++) a += vloada(sc + ((ptrdiff_t)q * {F} + f) * {S} + {v * vl});",
                      f"  vstore(tmp + {v * vl}, a); }}"]
        val = f"tmp[oh * {out.W} + ow]"
        if self.g > 1:
            val = "(" + " + ".join(f"tmp[{i * self.hw} + oh * {out.W} + ow]" for i in range(self.g)) + ")"
        val += " + bias[f]"
        lines.append(f"float *restrict op = ob + (ptrdiff_t)f * {out.ps} + {out.origin};")
        if self.res:
            lines.append(f"const float *restrict rp = rb + (ptrdiff_t)f * {out.ps} + {out.origin};")
            val += f" + rp[oh * {out.ld} + ow]"
        lines += [f"for (int oh = 0; oh < {out.H}; oh++) for (int ow = 0; ow < {out.W}; ow++)",
                  f"    op[oh * {out.ld} + ow] = {act_scalar_c(self.act, val)};"]
        return lines

    def _input_prefetch(self) -> list[str]:
        """Prefetch the plane region the copy reads (its rows, vector by vector), ``ipf`` ahead."""
        sh, inp, vl = self.sh, self.sh.inp, self.vl
        rows, cols = (sh.out.H - 1) * sh.stride + 3, (sh.out.W - 1) * sh.stride + 3
        starts = [r * inp.ld + c for r in range(rows) for c in range(0, cols, vl)]
        return ["        " + x for x in channel_prefetch(self.ipf, "i1", "src", inp.ps, starts, vl, self.line)]

    def emit(self) -> str:
        lay, sh, out, inp = self.lay, self.sh, self.sh.out, self.sh.inp
        F, C, S, CS = out.C, inp.C, self._part_floats(), self._cs()
        off0 = (inp.pad - sh.pad) * inp.ld + (inp.pad - sh.pad)
        PF = self.parts * F * S  # one image's partials, every share
        body = [*header(self.name, sh, lay, self.target, f"channel-major, pack {self.g}"),
                *fkw_prologue(self.name, lay.offsets, batched=True),
                "    const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
                f"    PS_SCRATCH(scr, (size_t)nb * {PF}, \"{self.name}\");  /* partials, per image and share */",
                f"    PS_PRIVATE(col, {CS}, \"{self.name}\");",
                f"    for (int q = t; q < {self.parts}; q += nt) {{",
                f"    for (int b = 0; b < nb; b++) memset(scr + (size_t)b * {PF} + (size_t)q * {F * S}, 0, "
                f"{F * S} * sizeof(float));",
                f"    const int i0 = ps_split(cost, {C}, q, {self.parts}), i1 = ps_split(cost, {C}, q + 1, {self.parts});",
                "    for (int i = i0; i < i1; i++) for (int b = 0; b < nb; b++) {",
                f"        float *restrict part = scr + (size_t)b * {PF} + (size_t)q * {F * S};",
                f"        const float *restrict src = in + b * is + (ptrdiff_t)perm[i] * {inp.ps} + {off0};",
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
        body += ["    }", "    }", "    ps_barrier();", "    #pragma omp for schedule(static) nowait",
                 f"    for (int bf = 0; bf < nb * {F}; bf++) {{",
                 f"        const int b = bf / {F}, f = bf % {F};",
                 f"        const float *restrict sc = scr + (size_t)b * {PF};",
                 "        float *restrict ob = out + b * is;",
                 "        const float *restrict rb = res ? res + b * is : 0; (void)rb;",
                 *["        " + x for x in self._epilogue()], "    }", "}",
                 single_image_c(self.name)]
        return "\n".join(body) + "\n"
