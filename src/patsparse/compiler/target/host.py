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
