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

from ..errors import BuildError

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
def _predefined_macros() -> str:
    """The compiler's predefined macros under ``arch_flags`` (one compiler run per process)."""
    return subprocess.run([find_compiler(), *arch_flags(), "-dM", "-E", "-x", "c", "-"], input="",
                          capture_output=True, text=True).stdout


@functools.lru_cache(maxsize=None)
def toolchain_fingerprint() -> str:
    """Compiler version plus the ISA macros ``arch_flags`` turn on: part of every cache key."""
    version = subprocess.run([find_compiler(), "--version"], capture_output=True, text=True).stdout
    isa = sorted(line for line in _predefined_macros().splitlines()
                 if any(k in line for k in ("__AVX", "__FMA", "__SSE", "__ARM_NEON", "__aarch64__")))
    return hashlib.sha256((version + "\n".join(isa)).encode()).hexdigest()[:16]


def isa_macros() -> set[str]:
    """The vector-ISA macros defined for generated code (e.g. {'__AVX2__', '__AVX512F__'})."""
    return {line.split()[1] for line in _predefined_macros().splitlines() if line.startswith("#define __AVX")}


def compile_c(source: str, *, name: str = "model", extra_flags: tuple[str, ...] = (),
              cache_dir: Path | None = None) -> Path:
    """Build ``source`` into a shared library and return its path (cached by content hash).

    A cache hit costs one hash and one stat. On failure the source and the compiler log stay in
    the cache directory and the BuildError names both.
    """
    cc = find_compiler()
    flags = (*OPT_FLAGS, *arch_flags(), *extra_flags)
    key = hashlib.sha256("\0".join([source, *flags, toolchain_fingerprint()]).encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir else cache_root()
    out_dir = root / "build" / f"{name}-{key}"
    lib = out_dir / f"lib{name}.so"
    if lib.is_file():
        return lib
    src = out_dir / f"{name}.c"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        src.write_text(source)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".lib{name}.", suffix=".so")
    except OSError as e:
        raise BuildError(f"cannot write the build cache {root} ({e}); set PATSPARSE_CACHE or cache_dir "
                         "to a writable directory") from None
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
