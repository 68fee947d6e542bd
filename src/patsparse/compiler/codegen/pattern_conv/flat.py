"""The flat layout for tiny planes: per-tap copies of the input, the whole output plane in a few
vectors, filter-major."""

from __future__ import annotations

import numpy as np

from ...reorder import mask_taps
from ...target import Target
from ..base import act_scalar_c
from .shared import ConvShape, LayerEmitter, fkw_prologue, header

UNROLL_COPY_MAX = 512     # floats per channel up to which the copy is straight-line code


class FlatEmitter(LayerEmitter):
    """The flat layout for tiny output planes (4x4, 2x2...): vectorise over the whole plane.

    A row of 4 outputs fills half an 8-float vector; here each input channel is first copied
    into 9 per-tap planes (im2col per channel, the output plane flattened and padded to whole
    vectors), so every tap of every kernel is an aligned vector load and no lane is wasted.
    Few output vectors mean few accumulators, so the kernel loop is unrolled ``unroll`` times
    into separate accumulator sets (independent FMA chains), summed at the end. The copies
    live in the calling thread's scratch arena, shared with its team (PS_SCRATCH).

    Tap packing (``pack`` = g > 1, see ``tap_pack``): a plane of VL/g outputs fills a vector
    with g taps. The copies are then per mask: for every channel and every mask the layer uses,
    the mask's taps one after the other (padded with zero taps to a multiple of g), so a kernel
    reads 4/g aligned vectors and does 4/g full-width FMAs instead of 4 with idle lanes; its
    weight vector is [w0 x hw, w1 x hw, ...] shuffled from its four stored weights. The g lane
    groups are summed at the store.
    """

    def __init__(self, name, sp, lay, shape: ConvShape, act, has_residual, sched, target: Target):
        super().__init__(name, sp, lay, shape, act, has_residual, target)
        vl = self.vl
        self.unroll = max(1, int(sched.get("unroll", 1)))  # the flat layout's knobs (cm: unused)
        self.prefetch = int(sched.get("prefetch", 0))
        out = shape.out
        self.nvt = -(-(out.H * out.W) // vl)
        self.hwp = self.nvt * vl
        self.g = int(sched.get("pack", 1))
        if self.g > 1:  # packed copies: per channel, every mask's taps in slots of hw floats
            self.hw = out.H * out.W
            self.slots = [self._slots(len(mask_taps(m)), self.g) for m in sp.masks]
            self.moff = np.concatenate([[0], np.cumsum(self.slots)]).astype(int) * self.hw
            self.cs = int(self.moff[-1])  # floats per channel: a multiple of VL

    @staticmethod
    def _slots(ntaps: int, g: int) -> int:
        return -(-ntaps // g) * g

    @staticmethod
    def scratch_floats(sp: LayerSparsity, C: int, out: Layout, g: int) -> int:
        """Floats of per-thread copies the packed flat layout needs for this layer."""
        return C * out.H * out.W * sum(FlatEmitter._slots(len(mask_taps(m)), g) for m in sp.masks)

    def _weight_vec(self, p: int, u: int, i: int) -> str:
        """Packed layout: vector ``i`` of kernel ``u``'s weights, lane l = weight i*g + l // hw."""
        nt, g, hw = len(mask_taps(self.sp.masks[p])), self.g, self.hw
        idx = [i * g + lane // hw for lane in range(self.vl)]
        if nt == 4:  # the kernel's four weights in one load, spread by one shuffle
            return f"PC_SPREAD4(wk + {u * nt}, {', '.join(map(str, idx))})"
        return "(vf){" + ", ".join(f"wk[{u * nt + j}]" if j < nt else "0.0f" for j in idx) + "}"

    def _kernels(self, p: int, us: list[int]) -> list[str]:
        """FMAs of kernels ``k + u`` (u in ``us``) of mask ``p``, kernel u into accumulator set u."""
        taps = mask_taps(self.sp.masks[p])
        nt, vl = len(taps), self.vl
        if self.g > 1:
            lines = [f"const float *restrict ip{u} = col + (ptrdiff_t)cidx[k + {u}] * {self.cs} + {self.moff[p]};"
                     for u in us]
            for u in us:
                for i in range(self.slots[p] // self.g):
                    lines.append(f"a{u}_0 += {self._weight_vec(p, u, i)} * vloada(ip{u} + {i * vl});")
            return lines
        hwp = self.hwp
        lines = [f"const float *restrict ip{u} = col + (ptrdiff_t)cidx[k + {u}] * {9 * hwp};" for u in us]
        for j, t in enumerate(taps):
            for u in us:
                lines.append(f"{{ const vf wv = vbcast(wk[{u * nt + j}]);")
                for v in range(self.nvt):
                    lines.append(f"  a{u}_{v} += wv * vloada(ip{u} + {t * hwp + v * vl});")
                lines.append("}")
        return lines

    def _run(self, p: int, U: int) -> list[str]:
        """The main loop over mask ``p``'s run: ``U`` kernels per iteration."""
        nt = len(mask_taps(self.sp.masks[p]))
        lines = [f"for (; k + {U} <= e; k += {U}, wk += {U * nt}) {{"]
        if self.prefetch:  # this mask's copies of the kernels a few iterations ahead
            if self.g > 1:
                base, offs = f"{self.cs} + {self.moff[p]}", range(0, self.slots[p] * self.hw, self.line)
            else:
                base = f"{9 * self.hwp}"
                offs = [t * self.hwp + c0 for t in mask_taps(self.sp.masks[p]) for c0 in range(0, self.hwp, self.line)]
            lines.append(f"    const float *pf = col + (ptrdiff_t)cidx[k + {U * self.prefetch}] * {base};")
            lines += [f"    __builtin_prefetch(pf + {o}, 0, 3);" for o in offs]
        lines += ["    " + x for x in self._kernels(p, list(range(U)))]
        lines.append("}")
        return lines

    def _cs(self) -> int:
        """Floats of copies per input channel."""
        return self.cs if self.g > 1 else 9 * self.hwp

    def _copy(self) -> list[str]:
        """Body of the per-channel copy loop: ``src`` (the channel's padded plane) -> ``dst``.

        Unpacked: 9 tap planes of hwp floats. Packed: each mask's taps in order, a zero slot
        where a mask's taps do not fill a multiple of g.
        """
        sh, out, inp = self.sh, self.sh.out, self.sh.inp
        if self.g > 1:
            tab = [t for m, n in zip(self.sp.masks, self.slots) for t in
                   list(mask_taps(m)) + [-1] * (n - len(mask_taps(m)))]
            nslot, size = len(tab), self.hw
            head = [f"static const int8_t tap[{nslot}] = {{{', '.join(map(str, tab))}}};",
                    f"for (int q = 0; q < {nslot}; q++) {{", "    const int t = tap[q];"]
        else:
            nslot, size = 9, self.hwp
            head = ["for (int q = 0; q < 9; q++) {", "    const int t = q;"]
        if nslot * size <= UNROLL_COPY_MAX:  # straight-line: per-slot loop overhead dominated the copy
            taps = tab if self.g > 1 else list(range(9))
            lines = []
            for q, t in enumerate(taps):
                for i in range(size):
                    oh, ow = divmod(i, out.W)
                    src = (f"src[{(t // 3) * inp.ld + t % 3 + oh * sh.stride * inp.ld + ow * sh.stride}]"
                           if t >= 0 and i < out.H * out.W else "0.0f")
                    lines.append(f"dst[{q * size + i}] = {src};")
            return lines
        return head + [
            f"    float *restrict d = dst + q * {size};",
            f"    if (t < 0) {{ for (int i = 0; i < {size}; i++) d[i] = 0.0f; continue; }}",
            f"    const float *restrict s0 = src + (t / 3) * {inp.ld} + t % 3;",
            f"    for (int oh = 0; oh < {out.H}; oh++) for (int ow = 0; ow < {out.W}; ow++)",
            f"        d[oh * {out.W} + ow] = s0[oh * {sh.stride * inp.ld} + ow * {sh.stride}];",
            f"    for (int i = {out.H * out.W}; i < {size}; i++) d[i] = 0.0f;",
            "}"]

    def emit(self) -> str:
        lay, sh, out, inp = self.lay, self.sh, self.sh.out, self.sh.inp
        o, hwp, U = lay.offsets, self.hwp, self.unroll
        off0 = (inp.pad - sh.pad) * inp.ld + (inp.pad - sh.pad)
        body = [*header(self.name, sh, lay, self.target, f"flat layout, unroll {U}"),
                *fkw_prologue(self.name, o),
                f"    PS_SCRATCH(col, {lay.C * self._cs()}, \"{self.name}\");",
                "    {",
                "        #pragma omp for schedule(static) nowait",
                f"        for (int c = 0; c < {lay.C}; c++) {{",
                f"            const float *restrict src = in + (ptrdiff_t)c * {inp.ps} + {off0};",
                f"            float *restrict dst = col + (ptrdiff_t)c * {self._cs()};",
                *["            " + x for x in self._copy()],
                "        }",
                "        ps_barrier();",
                "        const int nt = omp_get_num_threads(), t = omp_get_thread_num();",
                f"        const int f0 = ps_split(cost, {lay.F}, t, nt), f1 = ps_split(cost, {lay.F}, t + 1, nt);",
                "        for (int f = f0; f < f1; f++) {",
                "            const int oc = perm[f];",
                f"            const int32_t *restrict rf = runs + (ptrdiff_t)f * {lay.P};",
                "            const float *restrict wk = wts + wptr[f];"]
        nacc = 1 if self.g > 1 else self.nvt
        for u in range(U):
            body.append("            vf " + ", ".join(f"a{u}_{v} = {{0}}" for v in range(nacc)) + ";")
        for p in range(lay.P):
            body.append(f"            {{ int k = rf[{p}]; const int e = rf[{p + 1}];  /* mask {p} */")
            body += ["                " + x for x in self._run(p, U)]
            if U > 1:
                body += ["                " + x for x in self._run(p, 1)]
            body.append("            }")
        body.append(f"            float tmp[{hwp}] __attribute__((aligned(64)));")
        body.append("            const vf bv = vbcast(bias[oc]);")
        for v in range(nacc):
            total = " + ".join(f"a{u}_{v}" for u in range(U))
            body.append(f"            vstore(tmp + {v * self.vl}, {total}{'' if self.g > 1 else ' + bv'});")
        body.append(f"            float *restrict op = out + (ptrdiff_t)oc * {out.ps} + {out.origin};")
        val = f"tmp[oh * {out.W} + ow]"
        if self.g > 1:  # sum the g lane groups (one tap group each), then the bias
            val = "(" + " + ".join(f"tmp[{i * self.hw} + oh * {out.W} + ow]" for i in range(self.g)) + \
                  " + bias[oc])"
        if self.res:
            body.append(f"            const float *restrict rp = res + (ptrdiff_t)oc * {out.ps} + {out.origin};")
            val += f" + rp[oh * {out.ld} + ow]"
        body += [f"            for (int oh = 0; oh < {out.H}; oh++) for (int ow = 0; ow < {out.W}; ow++)",
                 f"                op[oh * {out.ld} + ow] = {act_scalar_c(self.act, val)};",
                 "        }", "    }", "}"]
        return "\n".join(body) + "\n"
