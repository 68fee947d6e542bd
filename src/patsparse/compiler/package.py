"""Load a compiled-model directory as data: regenerate, build or take from the user's cache.

Why not open the library inside the directory: a directory someone sent you is data, and a
``.so`` or ``.c`` file in it is code; hashes stored beside the files they cover stop accidents,
not someone who edits both. So loading reads only the manifest and the graph (JSON and
safetensors, never a pickle), checks both against the hashes in the manifest, checks every
graph field that reaches generated code (compiler/validate.py), cross-checks the manifest's
input and output shapes and layers against the graph, regenerates the C source and builds it,
or takes it from the user's own build cache keyed by the hash of that regenerated source.
The workspace and blob sizes the native code relies on are the regenerated ones.

``trust_native_code=True`` (for a machine without a C compiler) uses the directory's
``libmodel.so`` and ``weights.bin`` instead; their hashes, the graph checks and the library's
own report of its sizes still catch accidents (a truncated or swapped file), and the CPU must
have every vector extension the library was built for.

Loading never writes into the directory (it may be read-only), and picks up the previous
version after a save that was killed halfway through its swap (checkpoint.saved_dir).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import read_json, saved_dir, sha256
from ..errors import BuildError, FormatError, InputError
from ..serialize import stored_normalization
from .api import build_plan, runnable_here
from .codegen.graph import generate_kernels
from .codegen.kernels import candidates, generate
from .codegen.plan import plan_graph
from .codegen.step import Plan
from .runtime import (FORMAT, FORMAT_VERSION, GRAPH_JSON, GRAPH_TENSORS, LIBRARY, MANIFEST, SOURCE, WEIGHTS,
                      CompiledModel)
from .target import Target, detect
from .validate import graph_from_file

MAX_THREADS = 1024


def load_compiled(path: str | os.PathLike, *, threads: int | None = None, trust_native_code: bool = False,
                  cache_dir: str | os.PathLike | None = None) -> CompiledModel:
    """Open the compiled model saved at ``path`` (see the module docstring for what is checked).

    ``threads``: run with this many OpenMP threads instead of the saved count.
    ``trust_native_code``: use the library that came inside the directory rather than building
    one from the regenerated source; only for a directory you made or trust.
    ``cache_dir``: the build cache (default $PATSPARSE_CACHE or ~/.cache/patsparse).
    """
    d = saved_dir(path)
    if not d.is_dir():
        raise FormatError(f"{d}: no compiled model directory here")
    man = read_json(d / MANIFEST, "compiled-model manifest")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise FormatError(f"{d}: manifest.json is not a patsparse compiled model")
    version = man.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise FormatError(f"{d}: compiled-model format {version!r}, this patsparse reads 1 to {FORMAT_VERSION}")
    files = man.get("files") if version >= 4 else None  # older formats hashed model.c and weights.bin only
    if files is not None and not isinstance(files, dict):
        raise FormatError(f"{d}/manifest.json: 'files' must map file names to SHA-256 hashes")
    if threads is not None and (not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS):
        raise InputError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    saved_threads = _field(man, "threads", int, d)
    if not 1 <= saved_threads <= MAX_THREADS:
        raise FormatError(f"{d}/manifest.json: threads {saved_threads!r} is not in [1, {MAX_THREADS}]")
    gj = _json(_read(d, GRAPH_JSON, files), d / GRAPH_JSON)
    gt = _tensors(_read(d, GRAPH_TENSORS, files), d / GRAPH_TENSORS)
    g = graph_from_file(gj, gt, str(d / GRAPH_JSON))
    _cross_check(man, g, d)
    norm = stored_normalization(man.get("normalization"), f"{d}/manifest.json: normalization", g.input_shape[0])
    threads = threads or saved_threads
    if trust_native_code:
        if files is None:
            raise FormatError(f"{d}: format {version} has no hashes for its library; load it without "
                              "trust_native_code (it is rebuilt from its graph)")
        return _trusted(d, man, files, gj, gt, threads, norm)
    return _rebuilt(g, man, d, threads, norm, cache_dir)


def _read(d: Path, name: str, files: dict | None) -> bytes:
    """The bytes of ``d/name``, checked against its hash in ``files`` (None: a format without)."""
    try:
        data = (d / name).read_bytes()
    except OSError as e:
        raise FormatError(f"{d}: compiled model is incomplete ({e})") from None
    if files is not None and (not isinstance(files.get(name), str) or sha256(data) != files[name]):
        raise FormatError(f"{d / name} does not match the hash in its manifest (corrupt, edited, "
                          "or no hash given)")
    return data


def _json(data: bytes, where: Path) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{where} is not valid JSON: {e}") from None


def _tensors(data: bytes, where: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as e:
        raise FormatError(f"{where} is corrupt or not a safetensors file: {e}") from None


def _field(man: dict, key: str, kind: type, d: Path) -> Any:
    v = man.get(key)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise FormatError(f"{d}/manifest.json: {key} is missing or not a {kind.__name__} ({v!r})")
    return v


def _cross_check(man: dict, g: Any, d: Path) -> None:
    """The manifest's shapes must be the graph's (the runtime sizes its buffers from them)."""
    for key, want in (("input_shape", list(g.input_shape)), ("output_shape", list(g.node(g.output).shape))):
        if man.get(key) != want:
            raise FormatError(f"{d}/manifest.json: {key} {man.get(key)!r} does not match the graph's {want}")


def _target(man: dict) -> Target:
    """The target the model was compiled for when its code runs here, else this host's."""
    try:
        return runnable_here(man.get("target"))
    except (InputError, FormatError):
        return detect()


def _planned(g: Any, man: dict, d: Path, threads: int, target: Target) -> tuple[Plan, tuple[dict, dict]]:
    """The plan of the checked portable graph for ``target``, whose steps must be the manifest's
    layer list, and the portable graph itself (what a save stores)."""
    portable = g.to_json()
    plan = plan_graph(g, threads=threads, target=target)
    layers = man.get("layers")
    if not isinstance(layers, list) or len(layers) != len(plan.steps) or \
            any(not isinstance(L, dict) or L.get("name") != s.node.name for L, s in zip(layers, plan.steps)):
        raise FormatError(f"{d}/manifest.json: its layer list does not match the graph's "
                          f"{len(plan.steps)} layers on {target.name}")
    return plan, portable


def _rebuilt(g: Any, man: dict, d: Path, threads: int, norm: dict | None,
             cache_dir: str | os.PathLike | None) -> CompiledModel:
    """Regenerate from the checked graph, keeping saved schedules this compiler would choose itself."""
    try:
        target = _target(man)
        plan, portable = _planned(g, man, d, threads, target)
        generate_kernels(plan)
        same_target = man.get("target") == target.name and man.get("threads") == threads
        for s, layer in zip(plan.steps, man["layers"]):
            want = layer.get("schedule")
            if want is None or _plain(plan.schedules[s.cname]) == want:
                continue
            for cand in candidates(s, target, plan.threads):
                k = generate(s, cand, target, plan.threads)
                if _plain(k.schedule) == want:
                    s.kernel, plan.schedules[s.cname] = k, dict(k.schedule)
                    break
            else:
                if same_target:
                    raise FormatError(f"{d}/manifest.json: layer {s.node.name!r} has schedule {want!r}, "
                                      "which is not one this compiler generates for it (saved by another "
                                      "version of patsparse? compile the model again)")
        return build_plan(plan, portable, target=target, origin=str(man.get("origin", ""))[:500],
                          tuned=man.get("tuned") is True, cache_dir=cache_dir, normalization=norm)
    except BuildError as e:
        raise BuildError(f"{e}\n(loading {d} builds its code from its graph; on a machine without a C "
                         "compiler, load(..., trust_native_code=True) uses the library inside it, if you "
                         "trust where it came from)") from None


def _plain(schedule: dict) -> Any:
    """A schedule as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(schedule))


def _trusted(d: Path, man: dict, files: dict, gj: dict, gt: dict, threads: int, norm: dict | None) -> CompiledModel:
    """The directory's own library and weights, after their hashes and the CPU's extensions."""
    _read(d, LIBRARY, files)
    raw = _read(d, WEIGHTS, files)
    source = _read(d, SOURCE, files).decode("utf-8", errors="replace")
    vl = man.get("vl")
    if vl not in (4, 8, 16) or len(raw) % 4:
        raise FormatError(f"{d}: vector width {vl!r} or weights of {len(raw)} bytes is not valid")
    flags = _cpu_flags()
    if flags is None:
        raise FormatError(f"{d}: cannot read this CPU's extensions (/proc/cpuinfo) to check that "
                          f"{LIBRARY} can run here; load it without trust_native_code")
    missing = sorted(str(m) for m in _field(man, "isa", list, d)
                     if not isinstance(m, str) or m.strip("_").replace("_", "").lower() not in flags)
    if missing:
        raise FormatError(f"{d}/{LIBRARY} was built for CPU extensions this CPU lacks ({', '.join(missing)}); "
                          "load it without trust_native_code to rebuild it here")
    for key in ("workspace_floats", "blob_floats"):
        _field(man, key, int, d)
    return CompiledModel(d / LIBRARY, np.frombuffer(raw, dtype="<f4").astype(np.float32),
                         {**man, "threads": threads, "normalization": norm}, source, gj, gt)


def _cpu_flags() -> set[str] | None:
    """This CPU's extensions, lower case without underscores (``avx512f``, ``avx512vnni``), so
    that a compiler macro such as ``__AVX512_VNNI__`` compares by the same spelling."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return {f.replace("_", "").lower() for f in line.partition(":")[2].split()}

