"""The whole model as one C translation unit with one entry point: no Python between layers.

``generate_kernels`` runs every step's generator (kernels.py) on a plan (plan.py), ``emit_model``
writes the source, ``pack_blob`` packs every layer's weights into one float blob.

Entry point (per call, ``batch`` images, NCHW float input and output)::

    void ps_forward(const float *x, float *y, int batch, float *ws, const float *blob, int nthreads,
                    double *prof)

``ws`` must be zeroed once before its first use and used by one call at a time (the runtime
keeps one per Python thread); its last 64 bytes hold the team's state (barrier, scratch arenas,
solo fallback: base.PRELUDE), and ``ps_release(ws)`` frees its arenas when the workspace goes. ``prof`` is NULL, or one double per step to which each step adds
its wall-clock seconds (the per-layer profile: one branch per layer when off).
"""

from __future__ import annotations

import numpy as np

from ..ir import INPUT, c_comment
from ..layout import Layout
from .base import prelude_c
from .kernels import generate
from .pattern_conv import support_c
from .plan import ALIGN
from .step import Plan


def generate_kernels(plan: Plan, schedules: dict[str, dict] | None = None) -> None:
    """Generate every step's kernel (``schedules`` by C name overrides the defaults)."""
    schedules = schedules or {}
    for s in plan.steps:
        s.kernel = generate(s, schedules.get(s.cname), plan.target, plan.threads)
        plan.schedules[s.cname] = dict(s.kernel.schedule)


def _copy_in(lay: Layout) -> str:
    return (f"        #pragma omp for schedule(static) nowait\n"
            f"        for (int c = 0; c < {lay.C}; c++) for (int h = 0; h < {lay.H}; h++)\n"
            f"            memcpy(buf + (ptrdiff_t)c * {lay.ps} + (h + {lay.pad}) * {lay.ld} + {lay.pad}, "
            f"xn + ((ptrdiff_t)c * {lay.H} + h) * {lay.W}, {lay.W} * sizeof(float));")


def _copy_out(lay: Layout) -> str:
    return (f"        #pragma omp for schedule(static) nowait\n"
            f"        for (int c = 0; c < {lay.C}; c++) for (int h = 0; h < {lay.H}; h++)\n"
            f"            memcpy(yn + ((ptrdiff_t)c * {lay.H} + h) * {lay.W}, "
            f"buf + (ptrdiff_t)c * {lay.ps} + (h + {lay.pad}) * {lay.ld} + {lay.pad}, {lay.W} * sizeof(float));")


SYNC_FLOATS = 16  # the team's ps_sync (64 bytes) after the activations in the workspace


def emit_model(plan: Plan) -> str:
    """The whole model's C source (kernels must be generated).

    One OpenMP parallel region per call; inside it every thread runs every layer in turn and a
    ps_barrier (base.PRELUDE) separates the layers, so a forward pass costs one thread wake-up,
    not one per layer.
    """
    g, lay_in, lay_out = plan.graph, plan.layouts[INPUT], plan.layouts[plan.graph.output]
    parts = [prelude_c(plan.target), support_c(plan.target)]
    parts += [s.kernel.code for s in plan.steps]
    body = ["void ps_forward(const float *restrict x, float *restrict y, int batch, float *restrict ws,",
            "                const float *restrict blob, int nthreads, double *restrict prof) {",
            f"    ps_sync *sync = (ps_sync *)(ws + {plan.ws_floats});",
            "    const int team = ps_team_prepare(sync, nthreads > 0 ? nthreads : omp_get_max_threads());",
            "    const double start = omp_get_wtime();",
            "    #pragma omp parallel num_threads(team)",
            "    {",
            "    ps_team_enter(sync);",
            "    const int lead = omp_get_thread_num() == 0;",
            "    for (int n = 0; n < batch; n++) {",
            f"        const float *restrict xn = x + (ptrdiff_t)n * {lay_in.C * lay_in.H * lay_in.W};",
            f"        float *restrict yn = y + (ptrdiff_t)n * {lay_out.C * lay_out.H * lay_out.W};",
            f"        {{ float *restrict buf = ws + {plan.offsets[INPUT]};",
            _copy_in(lay_in), "        }",
            "        ps_barrier_ex(n > 0);  /* the first: the team's wake-up, not contention */",
            "        double t0 = prof && lead ? omp_get_wtime() : 0.0;"]
    for s in plan.steps:
        n = s.node
        second = n.residual or (n.inputs[1] if len(n.inputs) > 1 else None)  # a binary op's b
        res = f"ws + {plan.offsets[second]}" if second else "0"
        body.append(f"        /* {c_comment(n.name)}: {s.kind} */")
        first = "ws" if s.operands is not None else f"ws + {plan.offsets[n.inputs[0]]}"  # concat: the base
        body.append(f"        {s.cname}({first}, ws + {plan.offsets[n.name]}, "
                    f"blob + {s.w_off}, blob + {s.b_off}, {res});")
        body.append("        ps_barrier();")
        body.append(f"        if (prof && lead) {{ const double t1 = omp_get_wtime(); prof[{s.index}] += t1 - t0; "
                    "t0 = t1; }")
    body += [f"        {{ const float *restrict buf = ws + {plan.offsets[g.output]};", _copy_out(lay_out), "        }",
             "        ps_barrier();  /* the next image reuses the workspace */",
             "    }",
             "    ps_team_leave();",
             "    }",
             "    ps_team_adapt(sync, team, omp_get_wtime() - start);",
             "}",
             f"void ps_release(float *ws) {{ ps_team_release((ps_sync *)(ws + {plan.ws_floats})); }}",
             "int ps_vl(void) { return VL; }",
             f"long ps_workspace_floats(void) {{ return {plan.ws_floats + SYNC_FLOATS}L; }}",
             f"long ps_blob_floats(void) {{ return {plan.blob_floats}L; }}"]
    parts.append("\n".join(body))
    return "\n".join(parts) + "\n"


def pack_blob(plan: Plan) -> np.ndarray:
    """Every layer's packed weights and bias in one 64-byte-aligned-section float array;
    sets each step's offsets (call before ``emit_model``)."""
    chunks, at = [], 0
    for s in plan.steps:
        n = s.node
        if "weight" in n.params:
            packed = np.asarray(s.kernel.pack(n.params["weight"]), dtype=np.float32).ravel()
        else:
            packed = np.zeros(0, np.float32)
        bias = np.zeros(s.out_layout.C, np.float32)
        if "bias" in n.params:
            bias[:] = n.params["bias"]
        for arr, attr in ((packed, "w_off"), (bias, "b_off")):
            setattr(s, attr, at)
            size = (arr.size + ALIGN - 1) // ALIGN * ALIGN or ALIGN
            buf = np.zeros(size, np.float32)
            buf[: arr.size] = arr
            chunks.append(buf)
            at += size
    plan.blob_floats = at
    return np.concatenate(chunks) if chunks else np.zeros(ALIGN, np.float32)
