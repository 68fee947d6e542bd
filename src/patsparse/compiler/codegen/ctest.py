"""Run one generated kernel on numpy data through ctypes: the harness kernel tests and benchmarks share.

Why it exists: every generator is checked against PyTorch on buffers in the real activation
layout (halo, row tails, SLACK included), so the same memory rules the compiled model relies on
are exercised here. ``to_layout``/``from_layout`` convert between NCHW numpy arrays and padded
layout buffers; ``KernelRunner`` builds a kernel alone into a shared library and calls it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..build import compile_c
from ..layout import Layout
from ..runtime import aligned_empty
from ..target import TARGETS, Target, detect, generic_vectors
from .base import SLACK, GeneratedKernel, prelude_c
from .pattern_conv.shared import support_c


def layout_buffer(layout: Layout) -> np.ndarray:
    """A zeroed activation buffer for one image: ``layout.size`` floats plus SLACK."""
    return aligned_empty(layout.size + SLACK)


def interior_mask(layout: Layout) -> np.ndarray:
    """Boolean mask over a layout buffer: True on interior elements, False on halo/tail/SLACK."""
    mask = np.zeros(layout.size + SLACK, dtype=bool)
    planes = mask[:layout.size].reshape(layout.C, -1)[:, :(layout.H + 2 * layout.pad) * layout.ld]
    grid = planes.reshape(layout.C, layout.H + 2 * layout.pad, layout.ld)
    grid[:, layout.pad:layout.pad + layout.H, layout.pad:layout.pad + layout.W] = True
    return mask


def _interior_view(buf: np.ndarray, layout: Layout) -> np.ndarray:
    planes = buf[:layout.size].reshape(layout.C, layout.ps)
    grid = planes[:, :(layout.H + 2 * layout.pad) * layout.ld].reshape(
        layout.C, layout.H + 2 * layout.pad, layout.ld)
    return grid[:, layout.pad:layout.pad + layout.H, layout.pad:layout.pad + layout.W]


def to_layout(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Copy a (C, H, W) array into a fresh zero-halo buffer in ``layout``."""
    if x.shape != (layout.C, layout.H, layout.W):
        raise InputError(f"array of shape {x.shape} does not match layout "
                         f"(C, H, W) = ({layout.C}, {layout.H}, {layout.W})")
    buf = layout_buffer(layout)
    _interior_view(buf, layout)[...] = x
    return buf


def from_layout(buf: np.ndarray, layout: Layout) -> np.ndarray:
    """The (C, H, W) interior of a layout buffer, as a new array."""
    return _interior_view(buf, layout).copy()


def width_target(vl: int) -> Target:
    """A target whose ``vl``-float code builds and runs on this host.

    Why: tests check every vector width on whatever machine runs them. The host's own width is
    the host target; 8 lanes on an AVX-512 host the AVX2 target; any other width the portable
    generic-vector target, scheduled for the registers of the ISA that has that width (32 for
    16 lanes, else 16), so the same schedule paths run as on that ISA.
    """
    host = detect()
    if vl == host.require_cpu("host").lanes:
        return host
    if vl == 8 and host.name == "x86-64-avx512":
        return TARGETS["x86-64-avx2"]
    if vl not in (4, 8, 16):
        raise InputError(f"no target has {vl}-float vectors (4, 8 or 16)")
    return generic_vectors(vl, 32 if vl == 16 else 16)


def _ptr(a: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if a is None else a.ctypes.data)


class KernelRunner:
    """One generated kernel built alone into a shared library, callable on numpy buffers.

    The library exports ``run`` (the kernel itself, called by a thread team as in a compiled
    model), ``bench(iters)`` (a tight loop around it in one team, so timings carry no ctypes
    or thread start-up overhead) and, for a batched kernel, ``run_nb`` (``run_images``).
    """

    def __init__(self, kernel: GeneratedKernel, *, cache_dir: Path | None = None,
                 extra_flags: tuple[str, ...] = ()):
        self.kernel = kernel
        if kernel.target is None:
            raise InputError(f"kernel {kernel.name}: no target recorded, so it cannot be built")
        source = prelude_c(kernel.target) + support_c(kernel.target) + kernel.code + f"""
void run(const float *in, float *out, const float *w, const float *b, const float *r) {{
    PS_TEAM_LOOP(1, {kernel.name}(in, out, w, b, r));
}}
double bench(const float *in, float *out, const float *w, const float *b, const float *r,
             int iters) {{
    double t0 = omp_get_wtime();
    PS_TEAM_LOOP(iters, {kernel.name}(in, out, w, b, r));
    return omp_get_wtime() - t0;
}}
""" + (f"""
void run_nb(const float *in, float *out, const float *w, const float *b, const float *r, int nb, long is) {{
    PS_TEAM_LOOP(1, {kernel.name}_nb(in, out, w, b, r, nb, (ptrdiff_t)is));
}}
""" if kernel.batched else "")
        self.lib = ctypes.CDLL(str(compile_c(source, name=f"k_{kernel.name}", target=kernel.target,
                                             cache_dir=cache_dir, extra_flags=extra_flags)))
        self.lib.bench.restype = ctypes.c_double

    def pack(self, weight: np.ndarray) -> np.ndarray:
        packed = np.asarray(self.kernel.pack(np.asarray(weight, dtype=np.float32)), np.float32)
        out = aligned_empty(packed.size + SLACK)
        out[:packed.size] = packed.ravel()
        return out

    def __call__(self, inp: np.ndarray, out: np.ndarray, packed_w: np.ndarray,
                 bias: np.ndarray, res: np.ndarray | None = None) -> None:
        self.lib.run(_ptr(inp), _ptr(out), _ptr(packed_w), _ptr(bias), _ptr(res))

    def run_images(self, inp: np.ndarray, out: np.ndarray, packed_w: np.ndarray, bias: np.ndarray,
                   res: np.ndarray | None, images: int, stride: int) -> None:
        """A batched kernel on ``images`` images, image b's buffers ``b * stride`` floats into
        ``inp``, ``out`` and ``res`` (as image slots in a model's workspace)."""
        if not self.kernel.batched:
            raise InputError(f"kernel {self.kernel.name} is not batched")
        self.lib.run_nb(_ptr(inp), _ptr(out), _ptr(packed_w), _ptr(bias), _ptr(res), ctypes.c_int(images),
                        ctypes.c_long(stride))

    def time(self, inp: np.ndarray, out: np.ndarray, packed_w: np.ndarray, bias: np.ndarray,
             res: np.ndarray | None = None, *, iters: int = 10) -> float:
        """Seconds per call, averaged over ``iters`` back-to-back calls inside C."""
        return self.lib.bench(_ptr(inp), _ptr(out), _ptr(packed_w), _ptr(bias), _ptr(res),
                              ctypes.c_int(iters)) / iters
