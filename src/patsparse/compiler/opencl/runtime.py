"""OpenCLModel: the callable an OpenCL compile returns.

The program is built once for the device; the weights blob is uploaded once. Per batch size
the model keeps one workspace buffer (every activation of the batch, zeroed once: kernels never
write a halo), one input and one output buffer, and every kernel's arguments already set, so a
forward pass is: copy the input in, enqueue each layer's kernel in order, copy the output back.
Activations never leave the device between layers.

Thread safety: calls are serialised by a lock (one queue, kernels with their arguments set).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError, InputError, UnsupportedError
from ..build import cache_root
from ..ir import INPUT
from ..runtime import CompiledModel
from .device import OpenCLDevice, check_memory, describe_device, import_pyopencl
from .plan import COPY_IN, COPY_OUT, CLPlan, layer_at_line
from .schedule import group_size

BUILD_OPTIONS = ["-cl-std=CL1.2"]
_LINE = re.compile(r":(\d+):\d+:")


def build_program(context: Any, source: str, plan: CLPlan, device: OpenCLDevice) -> Any:
    """Build ``source`` for the context's device. On failure: BuildError naming the layer whose
    kernel the first error points into, with the source and the build log kept on disk."""
    cl = import_pyopencl()
    try:
        return cl.Program(context, source).build(options=BUILD_OPTIONS)
    except cl.Error as e:  # RuntimeError with the build log in its message
        log = str(e)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    keep = cache_root() / "opencl-failed" / digest
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "model.cl").write_text(source)
    (keep / "build.log").write_text(log)
    errors = [ln.strip() for ln in log.splitlines() if "error" in ln]
    lines = [int(m.group(1)) for ln in errors for m in [_LINE.search(ln)] if m]  # "file:LINE:COL:"
    layer = next(filter(None, (layer_at_line(plan, n) for n in lines)), None)
    first = errors[0] if errors else log.strip()[:200]
    where = f"layer {layer!r}" if layer else "the model's kernels"
    raise BuildError(f"OpenCL build of {where} failed on device {device.describe()}: {first}; "
                     f"source and build log kept in {keep}")


@dataclass
class _Batch:
    """Device buffers and ready launches for one batch size."""

    n: int
    ws: Any
    x: Any
    y: Any
    launches: list


class OpenCLModel:
    """A model compiled to OpenCL kernels: ``y = m(x)`` with x a tensor or an array (N, C, H, W),
    any N; returns the input's type. ``m.save(dir)`` writes a directory ``load`` reopens."""

    is_compiled_patsparse = True

    def __init__(self, plan: CLPlan, source: str, blob: np.ndarray, manifest: dict, cl_device: Any,
                 graph: tuple[dict, dict[str, np.ndarray]]):
        cl = import_pyopencl()
        self._cl = cl
        self.plan, self.source, self.manifest = plan, source, manifest
        self._graph = graph
        self._blob_host = np.ascontiguousarray(blob, dtype=np.float32)
        self.device = describe_device(cl_device)
        self.input_shape = tuple(manifest["input_shape"])
        self.output_shape = tuple(manifest["output_shape"])
        check_memory(self.device, self._buffer_bytes(1), "model at batch 1")
        self._ctx = cl.Context([cl_device])
        self._queue = cl.CommandQueue(self._ctx)
        program = build_program(self._ctx, source, plan, self.device)
        self._kernels = {name: cl.Kernel(program, name) for name in
                         [COPY_IN, COPY_OUT] + [s.cname for s in plan.steps]}
        for s in plan.steps:
            allowed = self._kernels[s.cname].get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE, cl_device)
            wg = group_size(s.kind, s.kernel.schedule)
            if wg[0] * wg[1] * wg[2] > allowed:
                raise UnsupportedError(f"layer {s.node.name!r}: work-group {wg} exceeds the {allowed} work-items "
                                       f"device {self.device.describe()} allows for this kernel; compile with "
                                       "tune=True or smaller tiles")
        mf = cl.mem_flags
        self._blob = cl.Buffer(self._ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=self._blob_host)
        self._batch: _Batch | None = None
        self._lock = threading.Lock()

    # -- memory ---------------------------------------------------------------------------------
    def _buffer_bytes(self, n: int) -> dict[str, int]:
        return {"weights": 4 * max(1, self._blob_host.size), "activations": 4 * n * self.plan.ws_floats,
                "input": 4 * n * int(np.prod(self.input_shape)), "output": 4 * n * int(np.prod(self.output_shape))}

    def _prepare(self, n: int) -> _Batch:
        """Buffers and launches for batch ``n`` (kept until another batch size comes)."""
        if self._batch is not None and self._batch.n == n:
            return self._batch
        self._batch = None  # release the old buffers first
        check_memory(self.device, self._buffer_bytes(n), f"batch of {n}")
        cl, p = self._cl, self.plan
        sizes = self._buffer_bytes(n)
        ws = cl.Buffer(self._ctx, cl.mem_flags.READ_WRITE, sizes["activations"])
        cl.enqueue_fill_buffer(self._queue, ws, np.float32(0), 0, sizes["activations"])
        x = cl.Buffer(self._ctx, cl.mem_flags.READ_ONLY, sizes["input"])
        y = cl.Buffer(self._ctx, cl.mem_flags.WRITE_ONLY, sizes["output"])
        off = {t: np.int64(n * o) for t, o in p.offsets.items()}
        launches = []

        def launch(name, kernel, *args):
            k = self._kernels[name]
            k.set_args(*args)
            launches.append((k, kernel.global_size(n), kernel.local))

        launch(COPY_IN, p.copy_in, x, ws, off[INPUT])
        for s in p.steps:
            nd = s.node
            launch(s.cname, s.kernel, ws, self._blob, np.int64(s.w_off), np.int64(s.b_off), off[nd.inputs[0]],
                   off[nd.name], off[nd.residual] if nd.residual else np.int64(0))
        launch(COPY_OUT, p.copy_out, y, ws, off[p.graph.output])
        self._batch = _Batch(n, ws, x, y, launches)
        return self._batch

    # -- calling --------------------------------------------------------------------------------
    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """Forward pass on a float array (N, *input_shape) -> (N, *output_shape)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"input of shape {tuple(x.shape)}; this model was compiled for "
                             f"(N, {', '.join(map(str, self.input_shape))})")
        y = np.empty((x.shape[0], *self.output_shape), np.float32)
        if not x.shape[0]:
            return y
        cl = self._cl
        with self._lock:
            b = self._prepare(x.shape[0])
            cl.enqueue_copy(self._queue, b.x, x, is_blocking=False)
            for k, gs, ls in b.launches:
                cl.enqueue_nd_range_kernel(self._queue, k, gs, ls)
            cl.enqueue_copy(self._queue, y, b.y, is_blocking=True)
        return y

    # tensor or array in, the same type out, through run_numpy: the CPU model's own
    __call__ = forward = CompiledModel.__call__

    def eval(self) -> "OpenCLModel":
        return self

    def __repr__(self) -> str:
        return (f"OpenCLModel(input={self.input_shape}, output={self.output_shape}, "
                f"{len(self.plan.steps)} kernels, device={self.device.name!r})")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the compiled-model directory (see opencl/files.py)."""
        from .files import save

        return save(self, path)

