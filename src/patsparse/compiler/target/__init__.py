"""Targets: everything code generation and the build need to know about the machine that will
run the code, as data.

A ``Target`` names a machine (``name``, ``triple``) and has a ``kind``, on which
``compiler.api.compile`` dispatches once:

- ``"cpu"``: native C. ``toolchain`` says how to build it, ``cpu`` what the kernel generators
  and schedule heuristics may assume (vector lanes and registers, cache sizes, and the C
  dialect that renders the kernels' vector helpers). Generators and schedules take a Target and
  read ``target.cpu``; no generator names an instruction set.
- ``"opencl"``: OpenCL C kernels (compiler/opencl), built by the device's driver when the model
  is opened, so there is no ``toolchain``. Its capability group is ``opencl``, the device's
  facts (``opencl.device.OpenCLDevice``: work-group and memory limits, GPU or not), filled in
  when a device is opened (``opencl.opencl_target``); the registry entry has none and stands
  for the default device, chosen at compile time.

``require_cpu`` turns handing a non-CPU target to a CPU generator into a clear error.

Adding a CPU target: a dialect module (see dialect.py: one C text per slot, reuse generic.py's
forms where the ISA has nothing better), then one ``Target`` in ``TARGETS``. Adding a kind: its
compiler package, its capability group here, and its branch of ``compiler.api.compile``.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ...errors import BuildError, InputError, UnsupportedError
from . import generic, neon, x86
from .dialect import CDialect
from .host import arch_flags, find_compiler, predefined_macros

if TYPE_CHECKING:  # the opencl package imports the code generators, which import this module
    from ..opencl.device import OpenCLDevice


@dataclass(frozen=True)
class Toolchain:
    """How to build for a target, and how to run what was built on this host."""

    cc: str                          # the C compiler command (looked up on PATH)
    cflags: tuple[str, ...]          # ISA and tuning flags, after the build's optimisation flags
    package: str                     # the Debian package that provides ``cc`` (named in errors)
    runner: tuple[str, ...] = ()     # prefix that runs a program for the target here (qemu); () = natively
    runner_package: str = ""         # the Debian package that provides the runner

    def compiler(self) -> str:
        """The compiler's path; BuildError naming the package when it is not installed."""
        path = shutil.which(self.cc)
        if not path:
            raise BuildError(f"C compiler {self.cc!r} not found on PATH (Debian: apt-get install "
                             f"{self.package})")
        return path

    def run_prefix(self) -> tuple[str, ...]:
        """The runner command with its path resolved; BuildError naming the package when missing."""
        if not self.runner:
            return ()
        path = shutil.which(self.runner[0])
        if not path:
            raise BuildError(f"{self.runner[0]!r} not found on PATH: it runs programs built for this "
                             f"target here (Debian: apt-get install {self.runner_package})")
        return (path, *self.runner[1:])


@dataclass(frozen=True)
class CpuCaps:
    """What CPU code generation may assume."""

    lanes: int               # floats per vector (VL in the C)
    vector_registers: int    # architectural vector registers (tile sizes must fit them)
    cache_line: int          # bytes
    l1_bytes: int            # data L1 per core
    l2_bytes: int            # L2 per core
    vreg_constraint: str     # inline-asm constraint of a vector register ("" when PS_KEEP is a no-op)
    fma_broadcast_operand: bool  # an FMA can read a broadcast scalar from memory (weights take no register)
    dialect: CDialect = field(repr=False)  # renders the vector helpers the generated C uses


@dataclass(frozen=True)
class Target:
    """A machine to generate code for (see the module docstring)."""

    name: str
    kind: str                # "cpu" or "opencl"
    triple: str              # GNU triple of the machine ("" when any)
    toolchain: Toolchain | None  # None: the code is not built by a C compiler here (OpenCL)
    cpu: CpuCaps | None = None
    description: str = ""
    opencl: OpenCLDevice | None = None  # an OpenCL target's device, once one is opened

    def require_cpu(self, where: str) -> CpuCaps:
        """The CPU capabilities; UnsupportedError when this target is not a CPU."""
        if self.cpu is None:
            raise UnsupportedError(f"{where}: target {self.name!r} ({self.kind}) has no CPU code generator")
        return self.cpu

    def render(self, template: str) -> str:
        """A C template with this target's dialect filled into its slots."""
        return self.require_cpu("C template").dialect.render(template)


_HOST_GCC = Toolchain("gcc", (), "gcc")
_X86_CACHES = dict(cache_line=64, l1_bytes=32 << 10, l2_bytes=512 << 10)


def generic_vectors(lanes: int = 4, registers: int = 16) -> Target:
    """The portable target at ``lanes`` floats per vector, scheduled for ``registers`` registers:
    GCC vector extensions only, so it builds and runs on any host (tests use it to build code of
    every width here)."""
    if lanes not in (4, 8, 16) or registers not in (16, 32):
        raise InputError(f"generic vectors: lanes must be 4, 8 or 16 and registers 16 or 32, "
                         f"got {lanes} and {registers}")
    name = "generic" if (lanes, registers) == (4, 16) else f"generic-{lanes}x{registers}"
    return Target(name, "cpu", "", _HOST_GCC,
                  CpuCaps(lanes, registers, vreg_constraint="", fma_broadcast_operand=True,
                          dialect=generic.dialect(lanes), **_X86_CACHES),
                  "portable C with GCC vector extensions, for any CPU")


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("x86-64-avx512", "cpu", "x86_64-linux-gnu", replace(_HOST_GCC, cflags=("-march=x86-64-v4",)),
           CpuCaps(16, 32, vreg_constraint=x86.VREG_CONSTRAINT, fma_broadcast_operand=True, dialect=x86.DIALECT,
                   **_X86_CACHES),
           "x86-64 with AVX-512 (x86-64-v4)"),
    Target("x86-64-avx2", "cpu", "x86_64-linux-gnu", replace(_HOST_GCC, cflags=("-march=x86-64-v3",)),
           CpuCaps(8, 16, vreg_constraint=x86.VREG_CONSTRAINT, fma_broadcast_operand=True, dialect=x86.DIALECT,
                   **_X86_CACHES),
           "x86-64 with AVX2 and FMA (x86-64-v3)"),
    Target("aarch64-neon", "cpu", "aarch64-linux-gnu",
           Toolchain("aarch64-linux-gnu-gcc", ("-march=armv8.2-a+dotprod", "-mtune=cortex-a76"), "gcc-aarch64-linux-gnu",
                     ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"), "qemu-user"),
           CpuCaps(neon.LANES, 32, cache_line=64, l1_bytes=64 << 10, l2_bytes=256 << 10,
                   vreg_constraint=neon.VREG_CONSTRAINT, fma_broadcast_operand=False, dialect=neon.DIALECT),
           "64-bit ARM with NEON (Cortex-A76 class: phones, Raspberry Pi 5), Linux"),
    generic_vectors(),
    Target("opencl", "opencl", "", None,
           description="OpenCL C kernels on an OpenCL device: the first GPU, else the first device "
                       "($PATSPARSE_OPENCL_DEVICE picks another), built by its driver"),
)}
ALIASES = {"aarch64-linux-gnu": "aarch64-neon", "aarch64": "aarch64-neon", "arm64": "aarch64-neon",
           "x86_64": "x86-64-avx2"}


def known_targets() -> list[str]:
    """Every name ``get_target`` accepts."""
    return sorted(TARGETS) + sorted(ALIASES) + ["native"]


def get_target(target: "str | Target | None" = None) -> Target:
    """A Target by name (or alias, or "native"/None for the host), or ``target`` itself."""
    if isinstance(target, Target):
        return target
    if target is None or target == "native":
        return detect()
    if not isinstance(target, str):
        raise InputError(f"target must be a name or a Target, got {type(target).__name__}")
    t = TARGETS.get(ALIASES.get(target, target))
    if t is None:
        raise InputError(f"unknown target {target!r}; known targets: {', '.join(known_targets())}")
    return t


@functools.lru_cache(maxsize=None)
def detect() -> Target:
    """The host as a Target, built with ``-march=native`` where the compiler accepts it.

    The ISA is read from the compiler's predefined macros under those flags (what the code will
    be built with), not from /proc/cpuinfo."""
    cc, flags = find_compiler(), arch_flags()
    macros = predefined_macros(cc, flags)
    if "__AVX512F__" in macros:
        base = TARGETS["x86-64-avx512"]
    elif "__AVX2__" in macros and "__FMA__" in macros:
        base = TARGETS["x86-64-avx2"]
    elif "__aarch64__" in macros:
        base = TARGETS["aarch64-neon"]
    else:
        base = TARGETS["generic"]
    return replace(base, toolchain=Toolchain(cc, flags, "gcc"))
