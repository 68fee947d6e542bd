"""Spatial data movement: padding (constant / reflect / replicate, and the zeros a transposed
conv spreads its input with), nearest and bilinear resize, pixel shuffle, and the phase mosaic
that turns a dilated k x k conv into an undilated one (``phase_taps``).

Padding and resizing are one kernel, a *remap*: output row h reads input rows ``ry0[h]`` and
``ry1[h]`` with weights ``1 - ly[h]`` and ``ly[h]``, output column w reads columns ``rx0[w]``
and ``rx1[w]`` likewise, and an index of -1 stands for the constant ``value`` (constant
padding). Nearest resize and padding read one tap (``single``): the tables are the whole op.
The tables are computed here, in Python, with PyTorch's float32 arithmetic (``resize_taps``,
``pad_taps``), and emitted as static arrays, so every target gets the same indices and
weights and the C is plain scalar loops (these ops move data; a gather does not vectorise on
the portable dialect).
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError, UnsupportedError
from ..layout import Layout
from ..target import Target
from .activations import _lit
from .base import GeneratedKernel
from .common import check_layout_types, check_name, helpers_c
from .pool import _no_weights

Taps = tuple[np.ndarray, np.ndarray, np.ndarray]  # (index0, index1, weight of index1) per output
PAD_MODES = ("constant", "reflect", "replicate")
RESIZE_MODES = ("nearest", "bilinear")


def _scale(n_in: int, n_out: int, scale: float | None) -> np.float32:
    """PyTorch's compute_scales_value: 1 / the user's scale factor where one was given, else
    in / out, in float32."""
    if scale is not None and scale > 0:
        return np.float32(1.0 / scale)
    return np.float32(n_in) / np.float32(n_out)


def resize_taps(n_in: int, n_out: int, mode: str, align_corners: bool = False,
                scale: float | None = None) -> Taps:
    """Source indices and weights of each of ``n_out`` outputs along one axis of ``n_in``, as
    PyTorch's upsample_nearest2d / upsample_bilinear2d compute them (``scale``: the scale factor
    the user gave for this axis, if any)."""
    dst = np.arange(n_out)
    if mode == "nearest":
        if n_out == n_in:
            i0 = dst
        elif n_out == 2 * n_in:
            i0 = dst >> 1
        else:
            i0 = np.minimum(np.floor(dst.astype(np.float32) * _scale(n_in, n_out, scale)).astype(np.int64), n_in - 1)
        return i0, i0, np.zeros(n_out, np.float32)
    if mode != "bilinear":
        raise UnsupportedError(f"resize mode {mode!r}; only {RESIZE_MODES} are supported")
    if align_corners:
        ratio = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
        src = ratio * dst.astype(np.float32)
    else:
        ratio = _scale(n_in, n_out, scale)
        src = np.maximum(ratio * (dst.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = i0 + (i0 < n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return i0, i1, lam


def pad_taps(n_in: int, before: int, after: int, mode: str, dilation: int = 1) -> Taps:
    """Source index of each output along one axis padded by ``before`` / ``after`` (negative:
    cropped) in ``mode``; -1 where constant padding puts its value. ``dilation`` d (constant
    mode): d - 1 values between input elements too, the input of a transposed conv's
    equivalent conv."""
    n = (n_in - 1) * dilation + 1
    src = np.arange(n + before + after) - before
    if dilation != 1 and mode != "constant":
        raise UnsupportedError(f"{mode} padding of a dilated axis")
    if mode == "constant":
        i = np.where((src >= 0) & (src < n) & (src % dilation == 0), src // dilation, -1)
    elif mode == "reflect":
        if max(before, after) >= n_in:
            raise UnsupportedError(f"reflect padding of {max(before, after)} on a size of {n_in} (must be smaller)")
        i = np.abs(src)
        i = np.where(i >= n_in, 2 * (n_in - 1) - i, i)
    elif mode == "replicate":
        i = np.clip(src, 0, n_in - 1)
    else:
        raise UnsupportedError(f"padding mode {mode!r}; only {PAD_MODES} are supported")
    return i, i, np.zeros(i.size, np.float32)


def phase_taps(n: int, d: int, inverse: bool = False, half: int = 1, packed: bool = False) -> Taps:
    """The phase mosaic of a dilated conv along one axis of ``n``: the d phases (every d-th
    element) laid out one after the other with ``half`` zeros between them and at both ends, so
    a dilation-d k x k conv (k = 2 half + 1) with padding d half is an undilated k x k conv
    without padding over the mosaic (its zero taps are the separators). ``packed``: each phase
    as long as it is (ceil or floor of n / d); else each in a tile of ceil(n / d), the shorter
    ones filled with zeros (the layout of graphs saved before ``packed``), which costs up to 3x
    the positions when d is close to n (DeepLab's ASPP rate 12 on a 14x14 map: 37 against 27).
    ``inverse``: from that conv's output (the mosaic less ``half`` at each end) back to the n
    positions in order."""
    pos = np.arange(n)
    lengths = _phase_lengths(n, d, packed)
    start = half + np.concatenate([[0], np.cumsum(lengths + half)[:-1]])
    at = start[pos % d] + pos // d  # mosaic index of element pos
    if inverse:
        i = at - half
    else:
        i = np.full(mosaic_size(n, d, half, packed), -1)
        i[at] = pos
    return i, i, np.zeros(i.size, np.float32)


def _phase_lengths(n: int, d: int, packed: bool) -> np.ndarray:
    return (n - np.arange(d) + d - 1) // d if packed else np.full(d, -(-n // d))


def mosaic_size(n: int, d: int, half: int = 1, packed: bool = False) -> int:
    """Length of the phase mosaic of ``n`` elements (``phase_taps``)."""
    return int(_phase_lengths(n, d, packed).sum()) + (d + 1) * half


MAX_CACHED_ROW = 4096  # widest output row whose two x-interpolated source rows go on the stack


def _copy_run(idx: np.ndarray) -> tuple[int, int]:
    """The longest run [a, b) of outputs reading consecutive inputs (idx[x] = idx[a] + x - a,
    no constant), copied with one memcpy; (0, 0) when it is shorter than 8."""
    best, start = (0, 0), 0
    for x in range(1, len(idx) + 1):
        if x == len(idx) or idx[x] != idx[x - 1] + 1 or idx[x] < 0 or idx[start] < 0:
            if x - start > best[1] - best[0] and idx[start] >= 0:
                best = (start, x)
            start = x
    return best if best[1] - best[0] >= 8 else (0, 0)


def _table(name: str, ctype: str, values) -> str:
    body = ", ".join(_lit(float(v)) if ctype == "float" else str(int(v)) for v in values)
    return f"static const {ctype} {name}[{len(values)}] = {{{body}}};\n"


def gen_remap(name: str, *, rows: Taps, cols: Taps, value: float = 0.0, in_layout: Layout,
              out_layout: Layout, target: Target) -> GeneratedKernel:
    """out[c, h, w] = sum of the (row tap, column tap) products of in[c] (module docstring)."""
    where = f"remap kernel {name}"
    check_name(name)
    L, O = in_layout, out_layout
    check_layout_types(where, L, O)
    (y0, y1, ly), (x0, x1, lx) = rows, cols
    if L.C != O.C or len(y0) != O.H or len(x0) != O.W:
        raise InputError(f"{where}: {len(y0)}x{len(x0)} taps from {(L.C, L.H, L.W)} into {(O.C, O.H, O.W)}")
    for axis, idx, n in (("row", np.concatenate([y0, y1]), L.H), ("column", np.concatenate([x0, x1]), L.W)):
        if idx.size and (idx.min() < -1 or idx.max() >= n):
            raise InputError(f"{where}: {axis} index {int(idx.min() if idx.min() < -1 else idx.max())} "
                             f"outside the input's {n}")
    single = not (ly.any() or lx.any())
    v = _lit(float(np.float32(value)))
    # bilinear: the two source rows interpolated along x once, kept while the output rows below
    # read the same two (an upscale by s reuses them s times), then blended a row at a time
    cached = not single and O.W <= MAX_CACHED_ROW
    if single:
        pixel = f"o[x] = ix0[x] < 0 ? {v} : r0[ix0[x]];"
    elif cached:
        pixel = f"o[x] = ix0[x] < 0 ? {v} : h0 * hr0[x] + h1 * hr1[x];"
    else:
        pixel = ("const float l1 = lx[x], l0 = 1.0f - l1;\n"
                 f"            o[x] = ix0[x] < 0 ? {v} : h0 * (l0 * r0[ix0[x]] + l1 * r0[ix1[x]])"
                 " + h1 * (l0 * r1[ix0[x]] + l1 * r1[ix1[x]]);")
    along_x = f"""if (iy0[h] != cy0 || iy1[h] != cy1) {{
                for (int x = 0; x < {O.W}; x++) {{
                    const int i0 = ix0[x] < 0 ? 0 : ix0[x], i1 = ix0[x] < 0 ? 0 : ix1[x];
                    const float l1 = lx[x], l0 = 1.0f - l1;
                    hr0[x] = l0 * r0[i0] + l1 * r0[i1];
                    hr1[x] = l0 * r1[i0] + l1 * r1[i1];
                }}
                cy0 = iy0[h], cy1 = iy1[h];
            }}""" if cached else ""
    a, b = _copy_run(x0) if single else (0, 0)  # columns a .. b copy one input run
    # a row whose taps equal the row above's is a copy of it (nearest upscaling, replicate edges)
    dup = np.r_[0, (y0[1:] == y0[:-1]) & (y1[1:] == y1[:-1]) & (ly[1:] == ly[:-1])].astype(int)
    tables = "".join(_table(f"{t}", ct, vals) for t, ct, vals in
                     (("iy0", "int", y0), ("iy1", "int", y1), ("ly", "float", ly), ("dup", "int", dup),
                      ("ix0", "int", x0), ("ix1", "int", x1), ("lx", "float", lx)))
    columns = f"""for (int x = 0; x < {a}; x++) {{
                {pixel}
            }}
            {f"memcpy(o + {a}, r0 + {int(x0[a]) if b > a else 0}, {b - a} * sizeof(float));" if b > a else ""}
            for (int x = {b}; x < {O.W}; x++) {{
                {pixel}
            }}"""
    code = helpers_c(target) + f"""
/* {name}: remap {(L.C, L.H, L.W)} -> {(O.C, O.H, O.W)}, {"one tap" if single else "bilinear"} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
{tables}    (void)w; (void)bias; (void)res; (void)iy1; (void)ly; (void)ix1; (void)lx;
    #pragma omp for schedule(static) nowait
    for (int c = 0; c < {O.C}; c++) {{
        const float *plane = in + (size_t)c * {L.ps} + {L.origin};
        {f"float hr0[{O.W}], hr1[{O.W}]; int cy0 = -1, cy1 = -1;" if cached else ""}
        for (int h = 0; h < {O.H}; h++) {{
            float *o = out + (size_t)c * {O.ps} + {O.origin} + (size_t)h * {O.ld};
            if (dup[h]) {{
                memcpy(o, o - {O.ld}, {O.W} * sizeof(float));
                continue;
            }}
            if (iy0[h] < 0) {{
                for (int x = 0; x < {O.W}; x++) o[x] = {v};
                continue;
            }}
            const float *r0 = plane + (size_t)iy0[h] * {L.ld}, *r1 = plane + (size_t)iy1[h] * {L.ld};
            const float h1 = ly[h], h0 = 1.0f - h1;
            (void)r1; (void)h0; (void)h1;
            {along_x}
            {columns}
        }}
    }}
}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights,
                           flops=0 if single else 6 * O.C * O.H * O.W, schedule={})


def gen_pixel_shuffle(name: str, *, r: int, in_layout: Layout, out_layout: Layout,
                      target: Target) -> GeneratedKernel:
    """PyTorch's pixel_shuffle (ONNX DepthToSpace, CRD): out[c, h, w] =
    in[c * r * r + (h % r) * r + w % r, h / r, w / r]."""
    where = f"pixel shuffle kernel {name}"
    check_name(name)
    L, O = in_layout, out_layout
    check_layout_types(where, L, O)
    if (O.C * r * r, O.H, O.W) != (L.C, L.H * r, L.W * r):
        raise InputError(f"{where}: factor {r} from {(L.C, L.H, L.W)} into {(O.C, O.H, O.W)}")
    code = helpers_c(target) + f"""
/* {name}: pixel shuffle by {r}, {(L.C, L.H, L.W)} -> {(O.C, O.H, O.W)} */
static void {name}(const float *restrict in, float *restrict out, const float *restrict w,
                   const float *restrict bias, const float *restrict res) {{
    (void)w; (void)bias; (void)res;
    #pragma omp for schedule(static) nowait
    for (int u = 0; u < {O.C * O.H}; u++) {{
        const int c = u / {O.H}, h = u % {O.H};
        float *o = out + (size_t)c * {O.ps} + {O.origin} + (size_t)h * {O.ld};
        const float *src = in + (size_t)(c * {r * r} + (h % {r}) * {r}) * {L.ps} + {L.origin}
                           + (size_t)(h / {r}) * {L.ld};
        for (int x = 0; x < {O.W}; x++) o[x] = src[(size_t)(x % {r}) * {L.ps} + x / {r}];
    }}
}}
"""
    return GeneratedKernel(name=name, code=code, target=target, pack=_no_weights, flops=0, schedule={})
