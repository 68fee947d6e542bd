"""OpenCL kernels for the dense layers: direct convolution (any kernel size and stride:
3x3, 1x1, the 7x7 stem), depthwise 3x3, max / average / global average pooling, linear, and
the two copies between the caller's NCHW arrays and the padded layout.

One work-item computes one output pixel (``tf`` filters of it, for a dense conv: each input
value loaded once feeds ``tf`` accumulators); the work-group is an ``lx`` x ``ly`` tile of the
output plane. Every loop bound, stride and tap offset is a compile-time constant.
"""

from __future__ import annotations

import numpy as np

from ..layout import Layout
from .common import SIGNATURE, CLKernel, prologue, round_up, store


def _window(in_lay: Layout, stride: int, padding: int) -> str:
    """Offset of the top-left input tap of output (gy, gx) inside an input plane."""
    base = in_lay.pad - padding
    return f"(gy * {stride} + {base}) * {in_lay.ld} + gx * {stride} + {base}"


def _bounds(out_lay: Layout) -> str:
    return f"    if (gx >= {out_lay.W} || gy >= {out_lay.H}) return;\n"


def _grid(out_lay: Layout, lx: int, ly: int, gz: int) -> tuple[int, int, int]:
    return (round_up(out_lay.W, lx), round_up(out_lay.H, ly), gz)


def gen_conv(name: str, *, cin: int, cout: int, k: int, stride: int, padding: int, in_layout: Layout,
             out_layout: Layout, act: str, has_residual: bool, schedule: dict) -> CLKernel:
    """Dense direct convolution, groups=1; weights (cout, cin, k, k), cout padded to ``tf``."""
    lx, ly, tf = schedule["lx"], schedule["ly"], schedule["tf"]
    gz = -(-cout // tf)
    ckk = cin * k * k
    taps = [(dy, dx) for dy in range(k) for dx in range(k)]
    body = [SIGNATURE.format(name=name) + " {", prologue(in_layout, out_layout, gz), _bounds(out_layout),
            f"    const int f0 = z * {tf};",
            f"    __global const float *x = in + {_window(in_layout, stride, padding)};",
            f"    __global const float *w = blob + w_off + (long)f0 * {ckk};",
            "    " + " ".join(f"float a{t} = 0.0f;" for t in range(tf)),
            f"    for (int c = 0; c < {cin}; c++, x += {in_layout.ps}, w += {k * k}) {{"]
    for i, (dy, dx) in enumerate(taps):
        body.append(f"        {{ const float v = x[{dy * in_layout.ld + dx}]; "
                    + " ".join(f"a{t} += w[{t * ckk + i}] * v;" for t in range(tf)) + " }")
    body.append("    }")
    for t in range(tf):
        guard = f"if (f0 + {t} < {cout}) " if cout % tf else ""
        body.append(f"    {guard}{store(out_layout, act, has_residual, f'f0 + {t}', f'a{t}', 'gy', 'gx')}")
    body.append("}")

    def pack(w: np.ndarray) -> np.ndarray:
        out = np.zeros((gz * tf, ckk), np.float32)
        out[:cout] = np.asarray(w, np.float32).reshape(cout, ckk)
        return out.ravel()

    return CLKernel(name, "\n".join(body), _grid(out_layout, lx, ly, gz), (lx, ly, 1),
                    2 * out_layout.H * out_layout.W * cout * ckk, dict(schedule), pack)


def gen_depthwise(name: str, *, channels: int, stride: int, padding: int, in_layout: Layout,
                  out_layout: Layout, act: str, has_residual: bool, schedule: dict) -> CLKernel:
    """Depthwise 3x3 convolution; weights (channels, 1, 3, 3)."""
    lx, ly = schedule["lx"], schedule["ly"]
    terms = " + ".join(f"w[{3 * dy + dx}] * x[{dy * in_layout.ld + dx}]" for dy in range(3) for dx in range(3))
    code = "\n".join([
        SIGNATURE.format(name=name) + " {", prologue(in_layout, out_layout, channels), _bounds(out_layout),
        f"    __global const float *x = in + (long)z * {in_layout.ps} + {_window(in_layout, stride, padding)};",
        "    __global const float *w = blob + w_off + z * 9;",
        f"    {store(out_layout, act, has_residual, 'z', terms, 'gy', 'gx')}",
        "}"])
    return CLKernel(name, code, _grid(out_layout, lx, ly, channels), (lx, ly, 1),
                    18 * out_layout.H * out_layout.W * channels, dict(schedule))


def gen_pool(name: str, *, op: str, k: int, stride: int, padding: int, in_layout: Layout,
             out_layout: Layout, act: str, has_residual: bool, schedule: dict) -> CLKernel:
    """Max pooling (padding taps skipped, as PyTorch pads with -inf) or average pooling
    (padding counted as zeros: the halo is zero, so every tap is a plain load)."""
    lx, ly = schedule["lx"], schedule["ly"]
    lines = [SIGNATURE.format(name=name) + " {", prologue(in_layout, out_layout, out_layout.C),
             _bounds(out_layout),
             f"    __global const float *x = in + (long)z * {in_layout.ps} + {_window(in_layout, stride, padding)};"]
    if op == "maxpool":
        lines.append("    float m = -INFINITY;")
        for dy in range(k):
            for dx in range(k):
                cond = (f"gy * {stride} + {dy - padding} >= 0 && gy * {stride} + {dy - padding} < {in_layout.H} && "
                        f"gx * {stride} + {dx - padding} >= 0 && gx * {stride} + {dx - padding} < {in_layout.W}")
                lines.append(f"    if ({cond}) m = fmax(m, x[{dy * in_layout.ld + dx}]);")
        value = "m"
    else:
        taps = " + ".join(f"x[{dy * in_layout.ld + dx}]" for dy in range(k) for dx in range(k))
        value = f"({taps}) * {1.0 / (k * k)!r}f"
    lines += [f"    {store(out_layout, act, has_residual, 'z', value, 'gy', 'gx')}", "}"]
    return CLKernel(name, "\n".join(lines), _grid(out_layout, lx, ly, out_layout.C), (lx, ly, 1),
                    out_layout.H * out_layout.W * out_layout.C * k * k, dict(schedule))


def gen_gap(name: str, *, in_layout: Layout, out_layout: Layout, act: str, has_residual: bool,
            schedule: dict) -> CLKernel:
    """Global average pooling: one work-item per channel sums its plane."""
    L = in_layout
    code = "\n".join([
        SIGNATURE.format(name=name) + " {", prologue(L, out_layout, L.C),
        f"    __global const float *x = in + (long)z * {L.ps} + {L.origin};",
        "    float s = 0.0f;",
        f"    for (int h = 0; h < {L.H}; h++, x += {L.ld}) for (int w = 0; w < {L.W}; w++) s += x[w];",
        f"    {store(out_layout, act, has_residual, 'z', f's * {1.0 / (L.H * L.W)!r}f')}",
        "}"])
    return CLKernel(name, code, (1, 1, L.C), (1, 1, 1), L.C * L.H * L.W, dict(schedule))


def gen_linear(name: str, *, in_features: int, out_features: int, in_layout: Layout, out_layout: Layout,
               act: str, has_residual: bool, schedule: dict) -> CLKernel:
    """y = W x + b, one work-item per output feature; the input is read through its layout
    (a flattened (C, H, W) activation keeps its padded planes)."""
    lx, L = schedule["lx"], in_layout
    code = "\n".join([
        SIGNATURE.format(name=name) + " {", prologue(L, out_layout, 1),
        f"    if (gx >= {out_features}) return;",
        f"    __global const float *w = blob + w_off + (long)gx * {in_features};",
        "    float a = 0.0f;",
        f"    for (int c = 0; c < {L.C}; c++) for (int h = 0; h < {L.H}; h++) {{",
        f"        __global const float *x = in + (long)c * {L.ps} + (h + {L.pad}) * {L.ld} + {L.pad};",
        f"        __global const float *wr = w + (c * {L.H} + h) * {L.W};",
        f"        for (int i = 0; i < {L.W}; i++) a += wr[i] * x[i];",
        "    }",
        f"    {store(out_layout, act, has_residual, 'gx', 'a')}",
        "}"])
    return CLKernel(name, code, (round_up(out_features, lx), 1, 1), (lx, 1, 1),
                    2 * in_features * out_features, dict(schedule))


def gen_copy(name: str, lay: Layout, to_layout: bool) -> CLKernel:
    """Copy between a dense NCHW array ``x`` and a tensor in ``ws`` at ``off`` (both ways:
    ``to_layout`` for the model's input, else for its output). Signature (x, ws, off)."""
    dense = "x[((long)get_global_id(2) * {H} + gy) * {W} + gx]".format(H=lay.H, W=lay.W)
    padded = f"ws[off + (long)n * {lay.size} + (long)c * {lay.ps} + (gy + {lay.pad}) * {lay.ld} + gx + {lay.pad}]"
    dst, src = (padded, dense) if to_layout else (dense, padded)
    qual = "const " if to_layout else ""
    code = "\n".join([
        f"__kernel void {name}(__global {qual}float *x, __global float *ws, const long off) {{",
        "    const int gx = get_global_id(0), gy = get_global_id(1);",
        f"    const int n = get_global_id(2) / {lay.C}, c = get_global_id(2) % {lay.C};",
        f"    if (gx >= {lay.W} || gy >= {lay.H}) return;",
        f"    {dst} = {src};",
        "}"])
    lx = min(16, max(1, lay.W))
    ly = min(max(1, 64 // lx), lay.H)
    return CLKernel(name, code, (round_up(lay.W, lx), round_up(lay.H, ly), lay.C), (lx, ly, 1), 0)
