"""Pattern-specialised 3x3 convolution (PatDNN / PCONV), stride 1 or 2, groups = 1.

Why it is fast: the sparsity is compiled in.
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
Stride 2 first copies the input into four phase planes (space-to-depth, access.py), so its
loads are unit-stride at compile-time offsets like stride 1's. The vector length is the
target's, fixed when the code is generated and checked by the C compiler, so a library never
runs with the wrong width.

Modules: schedule.py (the policy), shared.py (geometry, source head, support C), one per layout:
rows.py, flat.py, cm.py (channel-major), ct.py (channel tiles).
"""


from __future__ import annotations

import numpy as np

from ...layout import Layout
from ...reorder import LayerSparsity, analyse, reorder
from ...storage import pack as fkw_pack, plan
from ...target import Target
from ..base import GeneratedKernel
from ..common import WEIGHT_PREFETCH
from .cm import ChannelMajorEmitter
from .ct import ChannelTileEmitter
from .flat import FlatEmitter
from .rows import RowEmitter
from .schedule import (FLAT_MAX_SCRATCH, candidate_schedules, cm_fits, cost, ct_rows, default_schedule, flat_fits,
                       resolve_schedule, tap_pack)
from .shared import ConvShape, support_c

__all__ = ["WEIGHT_PREFETCH", "candidate_schedules", "cm_fits", "cost", "ct_rows", "default_schedule", "flat_fits",
           "gen_pattern_conv", "support_c", "tap_pack"]


def gen_pattern_conv(name: str, weight: np.ndarray, *, stride: int, padding: int, in_layout: Layout,
                     out_layout: Layout, act: str = "none", has_residual: bool = False,
                     schedule: dict | None = None, target: Target,
                     sparsity: LayerSparsity | None = None, where: str | None = None,
                     threads: int | None = None) -> GeneratedKernel:
    """Generate the pattern-specialised kernel ``name`` for a (F, C, 3, 3) ``weight``.

    The code depends on which masks the weights use (read from the weights, or ``sparsity``);
    ``pack`` of the result turns a weight with that sparsity into the compact FKW array the
    kernel reads. ``where`` names the layer in errors (defaults to ``name``). ``threads``: the
    team that will run it, if known (the default schedule balances its work over them). The code
    is generated for ``target``'s vector width and registers.
    """
    where = where or name
    weight = np.asarray(weight, dtype=np.float32)
    shape = ConvShape.check(weight.shape, stride, padding, in_layout, out_layout, where)
    vl = target.require_cpu(where).lanes
    sp = sparsity or analyse(weight, where)
    sched = resolve_schedule(schedule, in_layout, out_layout, target, where, sp, threads)
    if sched["layout"] == "flat" and sched["pack"] > 1 and \
            FlatEmitter.scratch_floats(sp, in_layout.C, out_layout, sched["pack"]) * 4 > FLAT_MAX_SCRATCH:
        sched["pack"] = 1  # too many masks: the packed copies would not stay in L2
    # the channel-major layout stores the transposed layer: input channels play the filters'
    # part in FKW1 (perm, runs, cost per input channel; cidx holds output channels)
    emitter = {"flat": FlatEmitter, "cm": ChannelMajorEmitter, "ct": ChannelTileEmitter}.get(
        sched["layout"], RowEmitter)
    transposed = emitter.TRANSPOSED
    sp_st = LayerSparsity(sp.masks, np.ascontiguousarray(sp.kernel_mask.T)) if transposed else sp
    ro = reorder(sp_st)
    lay = plan(sp_st, ro)
    extra = {"parts": threads or 2} if emitter is ChannelMajorEmitter else {}
    em = emitter(name, sp, lay, shape, act, has_residual, sched, target, **extra)
    code = em.emit()
    taps = sp.taps_per_kernel().sum()
    flops = 2 * int(taps) * out_layout.H * out_layout.W

    def pack(w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float32)
        return fkw_pack(sp_st, ro, w.transpose(1, 0, 2, 3) if transposed else w, where)

    sched["vl"] = vl
    return GeneratedKernel(name=name, code=code, target=target, pack=pack, flops=flops, schedule=sched,
                           batched=em.batched)
