"""``patsparse.compile`` of a QuantizedModel: int8 kernels for every layer, one C translation
unit with the float kernels' entry point (``ps_forward``: float NCHW in and out, so the
compiled model is a ``CompiledModel`` like any other), built without FMA contraction.

The input is quantised and the output dequantised inside the library; every tensor between is
uint8 codes in a ByteLayout of its own (kernels.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import InputError, UnsupportedError
from ..build import compile_c, toolchain_fingerprint
from ..codegen.base import prelude_c
from ..ir import INPUT, c_comment, c_ident
from ..layout import round_up
from ..runtime import FORMAT_VERSION, CompiledModel
from ..target import Target
from ..target.host import required_cpu_features
from .kernels import PRELUDE, Int8Kernel, byte_layout, c_float, gen_conv, gen_gap, gen_linear, gen_maxpool
from .quads import conv_quads

FORMAT = "patsparse-compiled-int8"
BUILD_FLAGS = ("-ffp-contract=off",)  # float32 requantisation exactly as the PyTorch simulation
SYNC_BYTES = 64


class Int8CompiledModel(CompiledModel):
    """A CompiledModel running int8 kernels. Not saved as a compiled-model directory (loading
    regenerates from the stored graph, which is the float compiler's job): save the
    QuantizedModel and compile it again where it runs."""

    def save(self, path: str | os.PathLike) -> Any:
        raise UnsupportedError("saving a compiled int8 model is not supported: save the quantised model "
                               "(patsparse.save(q, dir)) and compile it again where it runs")


@dataclass
class Int8Program:
    """Everything generated for one quantised model on one target."""

    source: str
    blob: bytes
    steps: list[tuple[Any, Int8Kernel]]   # (node, kernel)
    ws_bytes: int                          # activations + scratch (the team's ps_sync follows)
    vl: int


def _kernel(n, name: str, layouts: dict, qp: dict, target: Target, threads: int) -> Int8Kernel:
    lin, lout = layouts[n.inputs[0]], layouts[n.name]
    if n.op == "conv":
        cpu = target.require_cpu("int8 conv")
        return gen_conv(n, name, lin, lout, qp, conv_quads(n.params["w_q"]), vl=cpu.lanes,
                        tile=8 if cpu.vector_registers >= 32 else 4, band_bytes=cpu.l2_bytes // 4, threads=threads)
    return {"linear": gen_linear, "gap": gen_gap, "maxpool": gen_maxpool}[n.op](n, name, lin, lout, qp)


def generate(q: Any, target: Target, threads: int) -> Int8Program:
    """The C source and weight blob of a QuantizedModel for ``target``, run by up to ``threads``
    threads (each needs its own quads scratch)."""
    if q.fallback:
        raise UnsupportedError(f"compile: layers {', '.join(map(repr, q.fallback))} have no int8 kernel "
                               "(they run in float32 in the quantised model); compile the float model, or "
                               "replace those layers")
    g, qp = q.graph, q.qparams
    layouts = {INPUT: byte_layout(g.input_shape), **{n.name: byte_layout(n.shape) for n in g.nodes}}
    offsets, top = {}, 0
    for name, lay in layouts.items():
        offsets[name] = top
        top += round_up(lay.size + 256, 64)  # 256: room for whole-vector reads past the last plane
    steps, blob, blob_at, scratch = [], [], [], 0
    for i, n in enumerate(g.nodes):
        k = _kernel(n, c_ident(n.name, i), layouts, qp, target, threads)
        steps.append((n, k))
        blob_at.append(sum(len(b) for b in blob))
        blob.append(k.blob + bytes(round_up(len(k.blob), 64) - len(k.blob)))
        scratch = max(scratch, k.scratch)
    scr_at = top
    ws_bytes = round_up(top + scratch + 256, 64)
    blob_bytes = b"".join(blob) or bytes(64)
    lin, lout = layouts[INPUT], layouts[g.output]
    (s_in, zp_in), (s_out, zp_out) = ((qp[t]["scale"], qp[t]["zero_point"]) for t in (INPUT, g.output))
    body = [prelude_c(target), target.render(PRELUDE)] + [k.code for _, k in steps]
    calls = []
    for i, ((n, k), at) in enumerate(zip(steps, blob_at)):
        res = f"ws + {offsets[n.residual]}" if n.residual else "0"
        calls += [f"        /* {c_comment(n.name)}: int8 {n.op} */",
                  f"        {k.name}(ws + {offsets[n.inputs[0]]}, ws + {offsets[n.name]}, blob + {at}, {res}, "
                  f"ws + {scr_at});",
                  "        ps_barrier();",
                  f"        if (prof && lead) {{ const double t1 = omp_get_wtime(); prof[{i}] += t1 - t0; t0 = t1; }}"]
    body.append(f"""
void ps_forward(const float *restrict x, float *restrict y, int batch, float *restrict wsf,
                const float *restrict blobf, int nthreads, double *restrict prof) {{
    uint8_t *ws = (uint8_t *)wsf;
    const uint8_t *blob = (const uint8_t *)blobf;
    ps_sync *sync = (ps_sync *)(ws + {ws_bytes});
    double woke;  /* the team's wake-up over: what ps_team_adapt times */
    const int team = ps_forward_team(sync, nthreads, &woke);
    #pragma omp parallel num_threads(team)
    {{
    ps_team_enter(sync);
    const int lead = omp_get_thread_num() == 0;
    for (int n = 0; n < batch; n++) {{
        const float *restrict xn = x + (ptrdiff_t)n * {lin.C * lin.H * lin.W};
        float *restrict yn = y + (ptrdiff_t)n * {lout.C * lout.H * lout.W};
        #pragma omp for schedule(static) nowait
        for (int c = 0; c < {lin.C}; c++) {{
            uint8_t *p = ws + {offsets[INPUT]} + (size_t)c * {lin.ps};
            for (int h = 0; h < {lin.H}; h++) for (int w = 0; w < {lin.W}; w++)
                p[{lin.origin} + h * {lin.ld} + w] = ps_code(xn[(c * {lin.H} + h) * {lin.W} + w] * {c_float(1.0 / s_in)},
                                                             {c_float(-zp_in)}, {c_float(255 - zp_in)}, {zp_in});
            ps_halo(p, {lin.H}, {lin.W}, {lin.P}, {lin.ld}, {zp_in});
        }}
        ps_block_start(n == 0, &woke);
        double t0 = prof && lead ? omp_get_wtime() : 0.0;
{chr(10).join(calls)}
        #pragma omp for schedule(static) nowait
        for (int c = 0; c < {lout.C}; c++) {{
            const uint8_t *p = ws + {offsets[g.output]} + (size_t)c * {lout.ps} + {lout.origin};
            for (int h = 0; h < {lout.H}; h++) for (int w = 0; w < {lout.W}; w++)
                yn[(c * {lout.H} + h) * {lout.W} + w] = (float)((int)p[h * {lout.ld} + w] - {zp_out}) * {c_float(s_out)};
        }}
        ps_barrier();  /* the next image reuses the workspace */
    }}
    ps_team_leave();
    }}
    ps_team_adapt(sync, team, woke, omp_get_wtime(), batch);
}}
void ps_release(float *wsf) {{ ps_team_release((ps_sync *)((uint8_t *)wsf + {ws_bytes})); }}
int ps_vl(void) {{ return VL; }}
long ps_workspace_floats(void) {{ return {(ws_bytes + SYNC_BYTES) // 4}L; }}
long ps_blob_floats(void) {{ return {len(blob_bytes) // 4}L; }}
""")
    return Int8Program("\n".join(body), blob_bytes, steps, ws_bytes, target.require_cpu("int8").lanes)


def compile_quantized(q: Any, example_input: Any = None, *, threads: int | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      target: str | Target | None = None) -> Int8CompiledModel:
    """A QuantizedModel compiled to int8 kernels (see ``patsparse.compile``)."""
    from ..api import default_threads, runnable_here

    if example_input is not None:
        shape = tuple(torch.as_tensor(example_input).shape[1:])
        if shape != tuple(q.graph.input_shape):
            raise InputError(f"compile: example input of per-image shape {shape}; the quantised model takes "
                             f"{tuple(q.graph.input_shape)}")
    t = runnable_here(target)
    threads = int(threads or default_threads())
    prog = generate(q, t, threads)
    lib = compile_c(prog.source, name="model_int8", target=t, cache_dir=cache_dir, extra_flags=BUILD_FLAGS)
    blob = np.frombuffer(prog.blob, dtype="<f4").copy()
    g = q.graph
    layers = [{"name": n.name, "kernel": f"int8_{n.op}", "c_name": k.name, "flops": k.flops,
               "schedule": {}, "act": n.act, "residual": n.residual is not None} for n, k in prog.steps]
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "origin": "QuantizedModel",
                "input_shape": list(g.input_shape), "output_shape": list(g.node(g.output).shape),
                "threads": threads, "vl": prog.vl, "target": t.name, "toolchain": toolchain_fingerprint(t),
                "isa": required_cpu_features(t.toolchain.compiler(), t.toolchain.cflags),
                "workspace_floats": (prog.ws_bytes + SYNC_BYTES) // 4, "blob_floats": blob.size, "tuned": False,
                "layers": layers, "normalization": getattr(q, "patsparse_normalization", None),
                "qparams": q.qparams}
    gj, gt = g.to_json()
    return Int8CompiledModel(lib, blob, manifest, prog.source, gj, gt)
