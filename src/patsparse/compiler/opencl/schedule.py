"""Schedule knobs of the OpenCL kernels: their defaults for a device, the candidates the tuner
measures, and the check that a schedule fits the device.

Knobs per kernel family:
  pattern_conv  tw, th (output tile = work-group x, y), fg (filters per work-group),
                local (stage the input tile in local memory), cc (channels staged per step)
  grouped1x1    tw, th, fg (the pattern kernel on virtual 3x3 kernels; no local tile)
  conv2d        lx, ly (work-group tile), tf (filters per work-item)
  depthwise, maxpool, avgpool   lx, ly
  linear        lx
  gap           (none)
"""

from __future__ import annotations

from ...errors import UnsupportedError
from ..layout import Layout
from .common import next_pow2
from .device import OpenCLDevice
from .pattern import local_bytes

TILE_KINDS = ("conv2d", "depthwise", "maxpool", "avgpool")
PATTERN_KINDS = ("pattern_conv", "grouped1x1")  # the FKW1 pattern kernel (opencl/pattern.py)


def _tile(out: Layout, budget: int) -> tuple[int, int]:
    lx = min(16, next_pow2(out.W))
    ly = min(next_pow2(out.H), max(1, budget // lx))
    return lx, ly


def _channels_staged(device: OpenCLDevice, tw: int, th: int, stride: int, cin: int) -> int:
    """As many input channels as fill half the local memory (the rest is the compiler's), <= 32."""
    plane = 4 * ((th - 1) * stride + 3) * ((tw - 1) * stride + 3)
    return max(1, min(cin, 32, device.local_mem_bytes // 2 // plane))


def default_schedule(kind: str, in_lay: Layout, out_lay: Layout, stride: int, device: OpenCLDevice) -> dict:
    """The untuned schedule of a layer on ``device``."""
    budget = device.preferred_group_size
    if kind in PATTERN_KINDS:  # a quarter of the group for pixels, the rest for filters
        tw, th = _tile(out_lay, max(1, budget // 4))
        fg = max(1, min(out_lay.C, budget // (tw * th)))
        if kind == "grouped1x1":
            return {"tw": tw, "th": th, "fg": fg}
        return {"tw": tw, "th": th, "fg": fg, "local": int(device.is_gpu),
                "cc": _channels_staged(device, tw, th, stride, in_lay.C)}
    if kind == "conv2d":
        lx, ly = _tile(out_lay, budget)
        return {"lx": lx, "ly": ly, "tf": 4 if out_lay.C % 4 == 0 else 1}
    if kind in TILE_KINDS:
        lx, ly = _tile(out_lay, budget)
        return {"lx": lx, "ly": ly}
    if kind == "linear":
        return {"lx": min(64, next_pow2(out_lay.C), budget)}
    return {}


def candidates(kind: str, in_lay: Layout, out_lay: Layout, stride: int, device: OpenCLDevice) -> list[dict]:
    """Schedules worth measuring for a layer, the default first; those that do not fit the
    device are left out."""
    base = default_schedule(kind, in_lay, out_lay, stride, device)
    out = [base]
    if kind == "pattern_conv":
        for tw, th in ((base["tw"], base["th"]), (8, 8), (16, 4), (4, 4)):
            for fg in (1, 4, 8):
                for local in (0, 1):
                    out.append({"tw": tw, "th": th, "fg": fg, "local": local,
                                "cc": _channels_staged(device, tw, th, stride, in_lay.C)})
    elif kind == "grouped1x1":
        out += [{"tw": tw, "th": th, "fg": fg} for tw, th in ((base["tw"], base["th"]), (8, 8), (16, 4), (4, 4))
                for fg in (1, 4, 8)]
    elif kind == "conv2d":
        for lx, ly in ((base["lx"], base["ly"]), (8, 8), (16, 4)):
            for tf in (1, 2, 4, 8):
                out.append({"lx": lx, "ly": ly, "tf": tf})
    elif kind in TILE_KINDS:
        out += [{"lx": 8, "ly": 8}, {"lx": 16, "ly": 4}, {"lx": 32, "ly": 2}]
    elif kind == "linear":
        out += [{"lx": lx} for lx in (16, 64, 128)]
    seen, keep = set(), []
    for s in out:
        key = tuple(sorted(s.items()))
        if key not in seen and fits(kind, s, stride, device) is None:
            seen.add(key)
            keep.append(s)
    return keep


def group_size(kind: str, schedule: dict) -> tuple[int, int, int]:
    if kind in PATTERN_KINDS:
        return schedule["tw"], schedule["th"], schedule["fg"]
    if kind in TILE_KINDS:
        return schedule["lx"], schedule["ly"], 1
    if kind == "linear":
        return schedule["lx"], 1, 1
    return 1, 1, 1


def fits(kind: str, schedule: dict, stride: int, device: OpenCLDevice) -> str | None:
    """Why ``schedule`` cannot run on ``device`` (None when it can)."""
    wg = group_size(kind, schedule)
    total = wg[0] * wg[1] * wg[2]
    if total > device.max_work_group_size or any(a > b for a, b in zip(wg, device.max_work_item_sizes)):
        return (f"work-group {wg} ({total} work-items) exceeds the device's limit "
                f"({device.max_work_group_size}, per dimension {device.max_work_item_sizes})")
    if kind == "pattern_conv" and local_bytes(schedule, stride) > device.local_mem_bytes:
        return (f"its input tile needs {local_bytes(schedule, stride)} bytes of local memory, the device "
                f"has {device.local_mem_bytes}")
    return None


def check_fits(kind: str, schedule: dict, stride: int, device: OpenCLDevice, where: str) -> None:
    why = fits(kind, schedule, stride, device)
    if why:
        raise UnsupportedError(f"layer {where!r}: schedule {schedule} does not fit OpenCL device "
                               f"{device.describe()}: {why}")
