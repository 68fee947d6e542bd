"""Schedule search on the OpenCL device at hand: work-group sizes and tile shapes per layer.

For every layer with more than one candidate (schedule.candidates: the default first, then
the variants that fit the device), each candidate is generated under its own kernel name and
all of them go into ONE program (one build). Each is timed on one image with the device's own
clock (profiling events), round after round interleaved, after a warm-up launch (which also
absorbs a JIT compile on the first launch); the best minimum wins. The chosen schedules are
stored in the manifest of the compiled model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Graph
from .common import HEADER, round_up
from .device import describe_device, import_pyopencl
from .plan import CLStep, generate, plan_graph
from .schedule import candidates

MAX_CANDIDATES = 8
ALIGN = 16


def _packed(step: CLStep, kernel) -> tuple[np.ndarray, int]:
    """The candidate's weights followed by a zero bias, and the bias offset."""
    w = kernel.pack(step.node.params["weight"]) if "weight" in step.node.params else np.zeros(0, np.float32)
    b_off = round_up(max(1, w.size), ALIGN)
    buf = np.zeros(b_off + round_up(step.out_layout.C, ALIGN), np.float32)
    buf[: w.size] = w
    return buf, b_off


def tune_graph(g: Graph, cl_device: Any, *, rounds: int = 3) -> dict[str, dict]:
    """Measure the candidates of every tunable layer of ``g``; {kernel name: best schedule}."""
    cl = import_pyopencl()
    dev = describe_device(cl_device)
    plan = plan_graph(g)
    jobs = []  # (step, schedule, kernel)
    for s in plan.steps:
        cands = candidates(s.kind, s.in_layout, s.out_layout, s.stride, dev)[:MAX_CANDIDATES]
        if len(cands) > 1:
            for j, c in enumerate(cands):
                named = CLStep(s.node, s.index, s.kind, f"{s.cname}_c{j}", s.in_layout, s.out_layout, s.sparsity)
                jobs.append((s, c, generate(named, c)))
    if not jobs:
        return {}
    ctx = cl.Context([cl_device])
    queue = cl.CommandQueue(ctx, properties=cl.command_queue_properties.PROFILING_ENABLE)
    program = cl.Program(ctx, "\n".join([HEADER] + [k.code for _, _, k in jobs])).build()
    rng = np.random.default_rng(0)
    mf = cl.mem_flags
    ws = cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR,
                   hostbuf=rng.standard_normal(max(ALIGN, plan.ws_floats)).astype(np.float32))
    runs = []
    for s, c, k in jobs:
        blob, b_off = _packed(s, k)
        kern = cl.Kernel(program, k.name)
        n = s.node
        weights = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=blob)  # kept alive in runs
        kern.set_args(ws, weights, np.int64(0),
                      np.int64(b_off), np.int64(plan.offsets[n.inputs[0]]), np.int64(plan.offsets[n.name]),
                      np.int64(plan.offsets[n.residual] if n.residual else 0))
        if np.prod(k.local) > kern.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, cl_device):
            continue  # this kernel needs too many registers for a group that large
        cl.enqueue_nd_range_kernel(queue, kern, k.global_size(1), k.local).wait()  # warm-up
        runs.append((s.cname, c, kern, k, weights))
    best: dict[str, tuple[float, dict]] = {}
    for _ in range(rounds):
        for cname, c, kern, k, _ in runs:
            ev = cl.enqueue_nd_range_kernel(queue, kern, k.global_size(1), k.local)
            ev.wait()
            t = (ev.profile.end - ev.profile.start) * 1e-9
            if cname not in best or t < best[cname][0]:
                best[cname] = (t, c)
    return {name: sched for name, (_, sched) in best.items()}
