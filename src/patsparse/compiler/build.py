"""Turn generated C into a shared library for a target, cached by content hash.

The cache key covers the source, the target, the flags, the compiler's version and the vector
ISA its flags enable (what ``-march=native`` resolves to on this host), so a library built on an
AVX-512 machine is never loaded on an AVX2 one (that would die with SIGILL, not a Python error). A failed build raises
BuildError and keeps the source and the compiler's output for inspection.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from ..errors import BuildError
from .target import Target, detect
from .target.host import isa_macro_lines

OPT_FLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
             "-std=gnu11", "-Wall", "-Wno-unused-function", "-Wno-unused-variable")


def cache_root() -> Path:
    """Where built libraries live: $PATSPARSE_CACHE, else ~/.cache/patsparse."""
    env = os.environ.get("PATSPARSE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "patsparse"


@functools.lru_cache(maxsize=None)
def toolchain_fingerprint(target: Target | None = None) -> str:
    """Compiler version plus the ISA macros the target's flags turn on (the host's when
    ``target`` is None): part of every cache key and of a compiled model's manifest."""
    tc = (target or detect()).toolchain
    cc = tc.compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    isa = sorted(isa_macro_lines(cc, tc.cflags))
    return hashlib.sha256((version + "\n".join(isa)).encode()).hexdigest()[:16]


def compile_c(source: str, *, name: str = "model", target: Target | None = None,
              extra_flags: tuple[str, ...] = (), cache_dir: Path | None = None) -> Path:
    """Build ``source`` into a shared library for ``target`` (the host when None) and return
    its path (cached by content hash).

    A cache hit costs one hash and one stat. On failure the source and the compiler log stay in
    the cache directory and the BuildError names both.
    """
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
