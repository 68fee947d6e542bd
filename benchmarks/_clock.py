"""Clocks for the kernel benchmarks (dense_kernels.py, pattern_kernel.py): wall, CPU or cycles."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
import time
from typing import Callable

# --clock choices and how a report describes them
CLOCKS = {"wall": "elapsed time",
          "cpu": "process CPU time of one thread; a loaded VM still inflates it",
          "cycles": "user-mode CPU cycles of the calling thread: every GFLOP/s figure below is "
                    "FLOP per cycle"}


def get_clock(name: str) -> Callable[[], float]:
    """The clock ``name`` (a CLOCKS key); cpu and cycles measure one thread's work only."""
    return {"wall": time.perf_counter, "cpu": time.process_time}.get(name) or cycle_clock()


def cycle_clock():
    """A clock reading the calling thread's user-mode CPU cycles (Linux perf_event_open), in
    units of 1e9 cycles, so every "GF/s" figure reads as FLOP per cycle.

    Why: on this shared 2-core VM, process CPU time swings with the machine's load (the same
    stem kernel read 60.6 and 31.8 GF/s of CPU time six minutes apart), its user cycles far less
    (per-call minima 8.4-8.6 M over two hours, medians within ~15%). Counts one thread only, so
    it needs --threads 1, where our kernels, ONNX Runtime and PyTorch all run on the calling thread.
    """
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise SystemExit("--clock cycles: only wired for x86_64 Linux (perf_event_open = 298)")
    attr = bytearray(128)  # struct perf_event_attr: type, size, config; flags word at byte 40
    struct.pack_into("<IIQ", attr, 0, 0, len(attr), 0)  # PERF_TYPE_HARDWARE, CPU_CYCLES
    struct.pack_into("<Q", attr, 40, (1 << 5) | (1 << 6))  # exclude_kernel | exclude_hv
    libc = ctypes.CDLL(None, use_errno=True)
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = libc.syscall(ctypes.c_long(298), buf, 0, -1, -1, ctypes.c_ulong(0))
    if fd < 0:
        err = ctypes.get_errno()
        raise SystemExit(f"--clock cycles: perf_event_open failed ({os.strerror(err)}); "
                         f"see /proc/sys/kernel/perf_event_paranoid or use --clock cpu")
    return lambda: int.from_bytes(os.read(fd, 8), "little") / 1e9
