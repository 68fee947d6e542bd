"""The pattern-specialised 3x3 convolution in OpenCL (PatDNN's GPU kernel, on our FKW storage).

Weights are the CPU path's FKW1 array (storage.py) unchanged: filters in reorder order, each
filter's kernels in one run per mask, a 16-bit input channel per kernel, the taps of a kernel
back to back. One work-item computes one output pixel of one (reordered) filter; it walks the
filter's runs mask after mask, and the taps of every mask sit at compile-time offsets, so the
loop body of a run has no index but the channel and never branches on the pattern.

Work-group: a ``tw`` x ``th`` tile of output pixels times ``fg`` consecutive reordered filters.
All work-items of one filter run exactly the same path (same runs, same trip counts), and the
reorder put filters with the same kernel count and mask histogram next to each other, so the
``fg`` filters of a group run the same code with near-equal trip counts: filters grouped by
pattern, as PatDNN groups them.

With ``local`` on, the group stages ``cc`` input channels of its input tile (the output tile's
receptive field) in local memory, and every filter of the group reads its taps from there:
each input value is fetched from global memory once per group instead of up to 9 * ``fg``
times. A work-item keeps one cursor per mask run and advances it while the run's channels fall
in the staged chunk (channels ascend inside a run). That pays where local memory is on-chip
(GPUs); on a CPU device it is ordinary memory plus barriers, so it is a schedule knob that the
tuner measures.
"""

from __future__ import annotations

from ..layout import Layout
from ..grouped import virtual_weight
from ..reorder import LayerSparsity, mask_taps, reorder
from ..storage import pack as fkw_pack
from ..storage import plan as fkw_plan
from .common import SIGNATURE, CLKernel, prologue, round_up, store


def _tap_products(weights: str, taps, src: str, row: int, plane: int = 0) -> str:
    """One mask run's products: weight i times the input tap at its compile-time offset in a
    plane of ``row`` floats per row (the global input or the local tile); with ``plane``, the
    taps of a virtual 3x3 kernel of a 1x1 conv, channel t at ``t * plane``."""
    return " + ".join(f"{weights}[{i}] * {src}[{t * plane if plane else (t // 3) * row + t % 3}]"
                      for i, t in enumerate(taps))


def tile_shape(schedule: dict, stride: int) -> tuple[int, int]:
    """(rows, cols) of the input tile behind a ``th`` x ``tw`` output tile."""
    return (schedule["th"] - 1) * stride + 3, (schedule["tw"] - 1) * stride + 3


def local_bytes(schedule: dict, stride: int) -> int:
    if not schedule["local"]:
        return 0
    r, c = tile_shape(schedule, stride)
    return 4 * schedule["cc"] * r * c


def gen_pattern_conv(name: str, *, sparsity: LayerSparsity, stride: int, padding: int, in_layout: Layout,
                     out_layout: Layout, act: str, has_residual: bool, schedule: dict,
                     where: str = "conv", grouped: bool = False) -> CLKernel:
    """The kernel for one pattern-sparse 3x3 layer (see the module docstring), or with
    ``grouped`` for a 1x1 conv pruned in virtual 3x3 kernels (compiler/grouped.py: ``cidx`` is
    the group, a kernel's taps are channels 9g + t; read from global memory, no local tile)."""
    sp, ro = sparsity, reorder(sparsity)
    lay = fkw_plan(sp, ro)
    F, C, P = lay.F, lay.C, lay.P
    tw, th, fg, use_local = schedule["tw"], schedule["th"], schedule["fg"], bool(schedule.get("local")) and not grouped
    gz = round_up(F, fg)
    o = lay.offsets
    L = in_layout
    ld = L.ld
    masks = [mask_taps(m) for m in sp.masks]
    lines = [SIGNATURE.format(name=name) + " {", prologue(in_layout, out_layout, gz),
             f"    __global const int *hdr = (__global const int *)(blob + w_off);",
             f"    __global const ushort *cidx = (__global const ushort *)(blob + w_off + {o['cidx']});",
             f"    const int fi = z, valid = fi < {F};",
             f"    const int f = valid ? hdr[{o['perm']} + fi] : 0;",
             f"    __global const int *runs = hdr + {o['runs']} + (valid ? fi : 0) * {P};",
             f"    __global const float *wp = blob + w_off + {o['weights']} + (valid ? hdr[{o['wptr']} + fi] : 0);",
             "    float acc = 0.0f;"]
    if not use_local:
        lines += [f"    if (!valid || gx >= {out_layout.W} || gy >= {out_layout.H}) return;",
                  f"    __global const float *x = in + (gy * {stride} + {L.pad - padding}) * {ld} + "
                  f"gx * {stride} + {L.pad - padding};",
                  "    int k = runs[0];"]
        for p, taps in enumerate(masks):
            terms = _tap_products("wp", taps, "xc", ld, L.ps if grouped else 0)
            lines.append(f"    for (const int e = runs[{p + 1}]; k < e; k++, wp += {len(taps)}) {{ "
                         f"__global const float *xc = x + (long)cidx[k] * {9 * L.ps if grouped else L.ps}; "
                         f"acc += {terms}; }}"
                         f"  /* mask {sp.masks[p]:#05x} */")
    else:
        cc = schedule["cc"]
        tr, tc = tile_shape(schedule, stride)
        plane = tr * tc
        size = cc * plane
        lines += [f"    __local float tile[{size}];",
                  "    const int lx = get_local_id(0), ly = get_local_id(1);",
                  f"    const int lid = (get_local_id(2) * {th} + ly) * {tw} + lx;",
                  f"    const int row0 = get_group_id(1) * {th * stride} + {L.pad - padding};",
                  f"    const int col0 = get_group_id(0) * {tw * stride} + {L.pad - padding};",
                  f"    const int at = ly * {stride * tc} + lx * {stride};"]
        for p, taps in enumerate(masks):  # one cursor and weight pointer per mask run
            prev = f"w{p - 1} + (e{p - 1} - k{p - 1}) * {len(masks[p - 1])}" if p else "wp"
            lines.append(f"    int k{p} = valid ? runs[{p}] : 0; const int e{p} = valid ? runs[{p + 1}] : 0; "
                         f"__global const float *w{p} = {prev};")
        lines += [f"    for (int c0 = 0; c0 < {C}; c0 += {cc}) {{",
                  "        barrier(CLK_LOCAL_MEM_FENCE);",
                  f"        for (int i = lid; i < {size}; i += {tw * th * fg}) {{",
                  f"            const int c = c0 + i / {plane}, r = row0 + i / {tc} % {tr}, q = col0 + i % {tc};",
                  f"            tile[i] = (c < {C} && r < {L.H + 2 * L.pad} && q < {ld}) ? "
                  f"in[(long)c * {L.ps} + r * {ld} + q] : 0.0f;",
                  "        }",
                  "        barrier(CLK_LOCAL_MEM_FENCE);"]
        for p, taps in enumerate(masks):
            terms = _tap_products(f"w{p}", taps, "t", tc)
            lines.append(f"        for (; k{p} < e{p}; k{p}++, w{p} += {len(taps)}) {{ const int c = cidx[k{p}] - c0; "
                         f"if (c >= {cc}) break; __local const float *t = tile + c * {plane} + at; acc += {terms}; }}"
                         f"  /* mask {sp.masks[p]:#05x} */")
        lines += ["    }", f"    if (!valid || gx >= {out_layout.W} || gy >= {out_layout.H}) return;"]
    lines += [f"    {store(out_layout, act, has_residual, 'f', 'acc', 'gy', 'gx')}", "}"]
    flops = 2 * int(sp.taps_per_kernel().sum()) * out_layout.H * out_layout.W
    return CLKernel(name, "\n".join(lines), (round_up(out_layout.W, tw), round_up(out_layout.H, th), gz),
                    (tw, th, fg), flops, dict(schedule),
                    lambda w: fkw_pack(sp, ro, virtual_weight(w, where) if grouped else w, where),
                    0 if grouped else local_bytes(schedule, stride))
