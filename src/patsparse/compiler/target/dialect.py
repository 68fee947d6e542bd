"""CDialect: the pieces of C a CPU target renders into the kernels' shared prelude.

Kernel generators write C against one small vocabulary (``vf`` vectors of ``VL`` floats,
``vload``, ``vmax``, ``vload_lanes``, ``PS_KEEP``, ``ps_load_s2``, ``PC_SPREAD4``...); the
templates that define that vocabulary (codegen/base.py, codegen/common.py,
codegen/pattern_conv.py) leave a marked slot, ``/*@name@*/``, wherever an instruction set can
do better than the portable form, and each dialect fills every slot. So an ISA is a dialect,
never an ``if`` inside a generator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

_SLOT = re.compile(r"/\*@([a-z0-9_]+)@\*/\n?")


@dataclass(frozen=True)
class CDialect:
    """One C text per slot (each ends with a newline, or is empty)."""

    pause: str          # body of ps_pause(): a spin-wait hint
    vector_width: str   # defines VL, the floats per vector
    minmax: str         # vmax, vmin
    masked_io: str      # vload_lanes, vstore_lanes
    keep: str           # PS_KEEP(v): pin a vector in a register; PS_OPAQUE(p): hide a pointer's value
    load_s2: str        # ps_load_s2(p): lanes 0, 2, 4, ... of p[0 .. 2*VL)
    spread4: str        # PC_SPREAD4(p, lanes...): a vector of four floats at p, spread over lanes
    dot4: str           # int8: ps_w4, ps_w4_vec(words), ps_dot4(acc, x, w), PS_XMASK (compiler/int8)

    def render(self, template: str) -> str:
        """``template`` with every ``/*@slot@*/`` marker (and its newline) replaced."""
        names = {f.name for f in fields(self)}

        def fill(m: re.Match) -> str:
            if m.group(1) not in names:
                raise KeyError(f"C template names an unknown dialect slot {m.group(1)!r}")
            return getattr(self, m.group(1))

        return _SLOT.sub(fill, template)
