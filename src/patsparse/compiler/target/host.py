"""This host's C compiler and what it targets: the probes ``detect`` and the build use."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from ...errors import BuildError


@functools.lru_cache(maxsize=None)
def find_compiler() -> str:
    """The C compiler: $CC if set, else gcc, else cc. BuildError if none is on PATH."""
    for name in filter(None, (os.environ.get("CC"), "gcc", "cc")):
        path = shutil.which(name)
        if path:
            return path
    raise BuildError("no C compiler found: set CC or install gcc "
                     "(Debian: apt-get install gcc); patsparse generates C and needs one to build it")


@functools.lru_cache(maxsize=None)
def arch_flags() -> tuple[str, ...]:
    """``-march=native`` where the compiler accepts it, else a portable baseline."""
    cc = find_compiler()
    probe = subprocess.run([cc, "-march=native", "-x", "c", "-E", "-", "-o", os.devnull],
                           input="", capture_output=True, text=True)
    return ("-march=native",) if probe.returncode == 0 else ()


@functools.lru_cache(maxsize=None)
def predefined_macros(cc: str, flags: tuple[str, ...]) -> str:
    """``cc``'s predefined macros under ``flags`` (one compiler run per pair and process)."""
    return subprocess.run([cc, *flags, "-dM", "-E", "-x", "c", "-"], input="",
                          capture_output=True, text=True).stdout


ISA_MARKERS = ("__AVX", "__FMA", "__SSE", "__ARM_NEON", "__aarch64__")


def isa_macro_lines(cc: str, flags: tuple[str, ...]) -> set[str]:
    """The ``#define`` lines of the vector-ISA macros ``cc`` predefines under ``flags``."""
    return {line for line in predefined_macros(cc, flags).splitlines() if any(k in line for k in ISA_MARKERS)}


def required_cpu_features(cc: str, flags: tuple[str, ...]) -> list[str]:
    """The vector extensions code built under ``flags`` needs from the CPU, as the compiler's
    macros (``__AVX2__``, ``__AVX512F__``): the ones /proc/cpuinfo names the same way, which a
    compiled model's manifest lists so a trusted library is never loaded on a CPU without them
    (baseline SSE and NEON are part of their architecture and not listed)."""
    return sorted(line.split()[1] for line in isa_macro_lines(cc, flags) if line.split()[1].startswith("__AVX"))
