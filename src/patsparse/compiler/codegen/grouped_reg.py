"""The register-blocked grouped 1x1 reduction (compiler/regblock.py), unrolled: per filter
block, for every tile of NV pixel vectors, per virtual kernel group, the group's input vectors
are loaded once into registers and every filter of the block that keeps a kernel there
multiplies its weights (broadcast from the weight array, at compile-time offsets) by the
registers its mask names. It replaces the gather lists' index load, address and loop exit per
weight by nothing, and the input load per weight by at most nine per group for the whole block.

The price is code: one FMA statement per kept weight and tile vector, so the compiler runs it on
layers with at most ``grouped.REGISTER_MAX_FMAS`` kept weights (gcc's time grows with it).

Registers: NV x (positions loaded, at most nine) inputs + NV x ``fb`` accumulators, and the
weight broadcast where an FMA cannot take it from memory: ``reg_fb``.
"""

from __future__ import annotations

from ..regblock import GroupStep, RegPlan
from ..target import Target


def reg_fb(nv: int, target: Target) -> int:
    """Filters per block whose accumulators fit the registers beside a group's nine input
    vectors (NV of each) and a broadcast weight or two: 22 with 32 registers at NV=1, 5 with 16."""
    cpu = target.require_cpu("grouped 1x1")
    spare = 1 if cpu.fma_broadcast_operand else 2
    return max(1, (cpu.vector_registers - 9 * nv - spare) // nv)


class RegisterEmitter:
    """The C of one grouped layer's reduction over a tile of NV pixel vectors, unrolled over its
    RegPlan. Inputs are read in place. Unlike GroupedEmitter.tile, a filter block's code wraps the
    tile loop (``blocks_outer``): unrolled per weight, a layer's code outgrows the instruction
    cache, and run whole per tile it is fetched from L2 every tile: front-end bound."""

    def __init__(self, plan: RegPlan, *, nv: int):
        self.plan, self.nv = plan, nv
        self.nb, self.fb = plan.nb, plan.fb

    def describe(self) -> str:
        return f"register-blocked, {self.plan.size} weights in blocks of {self.fb} filters"

    def ld(self, src_cs: int) -> int:
        return src_cs

    def pointers(self, indent: str, base: str) -> list[str]:
        """C naming the layer's weights (``rw``) at ``base`` and its filter blocks' ``cost``."""
        cost = self.plan.cost()
        return [indent + f"static const int32_t cost[{len(cost)}] = {{{', '.join(map(str, cost))}}};",
                indent + f"const float *restrict rw0 = {base};"]

    def decls(self, indent: str, at: str | None = None) -> list[str]:
        """No scratch (GroupedEmitter's panel and partial sums): a block's groups all run
        inside the tile loop."""
        return []

    def _group_c(self, st: GroupStep, n: int, src: list[str], src_cs: int) -> list[str]:
        """One group's loads into registers and FMAs (the block's ``n`` accumulators pinned after,
        so gcc neither spills them nor regroups the products by filter)."""
        V = range(self.nv)
        lines = ["    { const vf " + ", ".join(f"u{q}_{v} = vload({src[v]} + (size_t){9 * st.group + q} * {src_cs})"
                                             for q in st.positions for v in V) + ";"]
        rank: dict[int, int] = {}
        order = []
        for i, q, s in st.fmas:  # interleave the filters: first taps, then second...
            order.append((rank.get(i, 0), i, q, s))
            rank[i] = rank.get(i, 0) + 1
        lines += [f"      a{i}_{v} += u{q}_{v} * vbcast(rw[{s}]);" for _, i, q, s in sorted(order) for v in V]
        lines += ["      " + " ".join(f"PS_KEEP(a{i}_{v});" for i in range(n) for v in V), "    }"]
        return lines

    def blocks_outer(self, loop: list[str], src: list[str], src_cs: int, k0: str, k1: str, store: list[str],
                     indent: str) -> list[str]:
        """C for filter blocks [k0, k1) outside the tile loop ``loop`` (its opening lines, which
        set ``src``): a block's code runs for every tile while it sits in the instruction cache,
        all its groups at once (no channel blocks)."""
        V, p = range(self.nv), self.plan
        lines = []
        for k, blk in enumerate(p.filters):
            I = range(len(blk))
            lines += [f"if ({k} >= {k0} && {k} < {k1}) {{", *("    " + x for x in loop),
                      # rw opaque per tile: else gcc hoists every weight broadcast out of the
                      # tile loop and keeps a vector per weight on the stack
                      "    const float *restrict rw = rw0; PS_OPAQUE(rw);",
                      "    vf " + ", ".join(f"a{i}_{v} = (vf){{0}}" for i in I for v in V) + ";"]
            for b in range(p.nb):
                for st in p.steps[k][b]:
                    lines += self._group_c(st, len(blk), src, src_cs)
            for i, f in enumerate(blk):
                lines += [f"    {{ const int oc = {f};",
                          "      " + " ".join(f"const vf sum{v} = a{i}_{v};" for v in V),
                          *("      " + x for x in store), "    }"]
            lines += ["    }", "}"]
        return [indent + x for x in lines]
