"""Turn generated C into a shared library: find the compiler, build, cache by content hash.

The cache key covers the source, the flags, the compiler's version and the host's vector ISA
(what ``-march=native`` resolves to), so a library built on an AVX-512 machine is never loaded
on an AVX2 one (that would die with SIGILL, not a Python error). A failed build raises
BuildError and keeps the source and the compiler's output for inspection.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuildError

if TYPE_CHECKING:
    from .target import Target

OPT_FLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
             "-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unused-variable")


def cache_root() -> Path:
    """Where built libraries live: $PATSPARSE_CACHE, else ~/.cache/patsparse."""
    env = os.environ.get("PATSPARSE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "patsparse"


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


@functools.lru_cache(maxsize=None)
def toolchain_fingerprint(target: "Target | None" = None) -> str:
    """Compiler version plus the ISA macros the target's flags turn on (the host's when
    ``target`` is None): part of every cache key and of a compiled model's manifest."""
    from .target import detect

    tc = (target or detect()).toolchain
    cc = tc.compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    isa = sorted(line for line in predefined_macros(cc, tc.cflags).splitlines()
                 if any(k in line for k in ("__AVX", "__FMA", "__SSE", "__ARM_NEON", "__aarch64__")))
    return hashlib.sha256((version + "\n".join(isa)).encode()).hexdigest()[:16]


def compile_c(source: str, *, name: str = "model", target: "Target | None" = None,
              extra_flags: tuple[str, ...] = (), cache_dir: Path | None = None) -> Path:
    """Build ``source`` into a shared library for ``target`` (the host when None) and return
    its path (cached by content hash).

    A cache hit costs one hash and one stat. On failure the source and the compiler log stay in
    the cache directory and the BuildError names both.
    """
    from .target import detect

    target = target or detect()
    cc = target.toolchain.compiler()
    flags = (*OPT_FLAGS, *target.toolchain.cflags, *extra_flags)
    key = hashlib.sha256("\0".join([source, target.name, *flags, toolchain_fingerprint(target)])
                         .encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir else cache_root()
    out_dir = root / "build" / f"{name}-{key}"
    lib = out_dir / f"lib{name}.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / f"{name}.c"
    src.write_text(source)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".lib{name}.", suffix=".so")
    os.close(fd)
    cmd = [cc, *flags, str(src), "-o", tmp, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        log = out_dir / "build.log"
        log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
        first = next((l for l in proc.stderr.splitlines() if "error" in l), proc.stderr[:500])
        raise BuildError(f"building {src} failed ({cc} exit {proc.returncode}): {first}\n"
                         f"full log: {log}; the generated source is kept there")
    os.replace(tmp, lib)
    return lib
