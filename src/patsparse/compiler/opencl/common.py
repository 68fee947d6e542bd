"""What every generated OpenCL kernel shares: its signature, prologue and epilogue, and the
record the host keeps of it.

Every layer kernel has one signature::

    __kernel void NAME(__global float *ws, __global const float *blob, long w_off, long b_off,
                       long in_off, long out_off, long res_off)

``ws`` holds every activation of the batch (one tensor of N images at ``N * offset``, in the
padded planar layout of compiler/layout.py: interior (c, h, w) at c*ps + (h+pad)*ld + w+pad,
halo zero and never written), ``blob`` every layer's weights and bias. Offsets are arguments,
not constants, so the source depends only on the model and the schedules, never on the batch
size or on where the weights land: the same program serves every batch. Work-item dimension 2
spans ``gz`` work-items per image, image after image, so ``n = get_global_id(2) / gz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..layout import Layout

HEADER = """/* patsparse: generated OpenCL C, one kernel per layer */
#define ACT_none(v) (v)
#define ACT_relu(v) fmax((v), 0.0f)
#define ACT_relu6(v) fmin(fmax((v), 0.0f), 6.0f)
"""

SIGNATURE = ("__kernel void {name}(__global float *ws, __global const float *blob, const long w_off,\n"
             "        const long b_off, const long in_off, const long out_off, const long res_off)")


@dataclass
class CLKernel:
    """One generated layer kernel and how to launch it.

    ``grid`` is the global size for ONE image (dimension 2 is multiplied by the batch) and is a
    multiple of ``local``; ``pack`` turns the layer's weight into what the kernel reads.
    """

    name: str
    code: str
    grid: tuple[int, int, int]
    local: tuple[int, int, int]
    flops: int
    schedule: dict = field(default_factory=dict)
    pack: Callable[[np.ndarray], np.ndarray] = lambda w: np.asarray(w, np.float32).ravel()
    local_bytes: int = 0

    def global_size(self, batch: int) -> tuple[int, int, int]:
        return (self.grid[0], self.grid[1], self.grid[2] * batch)


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def prologue(in_lay: Layout, out_lay: Layout, gz: int) -> str:
    """Work-item ids and the image's input / output / residual pointers."""
    return (f"    const int gx = get_global_id(0), gy = get_global_id(1);\n"
            f"    const int n = get_global_id(2) / {gz}, z = get_global_id(2) % {gz};\n"
            f"    __global const float *in = ws + in_off + (long)n * {in_lay.size};\n"
            f"    __global float *out = ws + out_off + (long)n * {out_lay.size};\n"
            f"    __global const float *res = ws + res_off + (long)n * {out_lay.size};\n")


def store(out_lay: Layout, act: str, has_residual: bool, f: str, v: str, oh: str = "0", ow: str = "0") -> str:
    """out[f, oh, ow] = act(v + bias[f] (+ residual)): the epilogue every layer ends with
    (pack_blob gives every layer a bias, zero where the model has none)."""
    idx = f"(long)({f}) * {out_lay.ps} + ({oh} + {out_lay.pad}) * {out_lay.ld} + ({ow} + {out_lay.pad})"
    res = f" + res[{idx}]" if has_residual else ""
    return f"out[{idx}] = ACT_{act}({v} + blob[b_off + ({f})]{res});"
