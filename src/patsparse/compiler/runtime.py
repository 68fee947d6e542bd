"""CompiledModel: the callable a compile returns, wrapping one built library, and how it is saved.

A compiled model directory holds::

    manifest.json      format, input/output shape per image, threads, vector width, the ISA
                       macros the library was built with, per-layer kernel + schedule, the input
                       normalisation (when known), and the SHA-256 of every other file ("files")
    graph.json, graph.safetensors   the fused IR: what loading regenerates everything from
    model.c            the generated source (for inspection)
    libmodel.so        the built library (used only when the loader is told to trust it)
    weights.bin        the packed weight blob (raw little-endian float32, for inspection)

``save`` writes a new directory and swaps it in (checkpoint.replace_dir), so a kill leaves the
complete old model or the complete new one. Loading is not here: it regenerates and builds,
which is the compiler's job (compiler/package.py); this module never calls the compiler.

The wrapper checks the library against the manifest it is given (workspace and blob sizes,
vector width, as the library reports them), so a library and a manifest that do not belong
together are a FormatError before the first call.

Thread safety: the generated code keeps no state between calls except the workspace; each
Python thread gets its own workspace (zeroed once: kernels never write halos, so they stay
zero), and ctypes releases the GIL during the call. The workspace's tail holds the thread team's
state, which owns the kernels' scratch arenas: the library's ``ps_release`` frees them when the
workspace is collected (with its Python thread, or with the model).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes, replace_dir, save_tensors, sha256, write_json
from ..errors import FormatError, InputError

FORMAT = "patsparse-compiled"
FORMAT_VERSION = 4  # 2: ps_forward takes the per-layer profile array; 3: FKW1 v2 (uint16 cidx);
# 4: every file hashed in "files". Older versions are regenerated from their stored graph.
ALIGN_BYTES = 64
MANIFEST = "manifest.json"
GRAPH_JSON, GRAPH_TENSORS = "graph.json", "graph.safetensors"
SOURCE, LIBRARY, WEIGHTS = "model.c", "libmodel.so", "weights.bin"
OWNED = (MANIFEST, GRAPH_JSON, GRAPH_TENSORS, SOURCE, LIBRARY, WEIGHTS)


class _Workspace:
    """One calling thread's workspace: the float array and the release of its team's arenas."""

    def __init__(self, floats: int, release: Any):
        self.array = aligned_empty(floats)
        self._release, self._address = release, self.array.ctypes.data

    def __del__(self) -> None:
        if self._release is not None:
            self._release(self._address)


def aligned_empty(n: int, zero: bool = True) -> np.ndarray:
    """``n`` float32 starting on a 64-byte boundary (packed weights and planes assume it)."""
    raw = np.zeros(n + ALIGN_BYTES // 4, np.float32) if zero else np.empty(n + ALIGN_BYTES // 4, np.float32)
    start = (-raw.ctypes.data % ALIGN_BYTES) // 4
    return raw[start: start + n]


class CompiledModel:
    """A model compiled to native code: ``y = m(x)`` with x a tensor or an array (N, C, H, W).

    Returns the same type as its input. Any batch size; safe to call from several threads.
    """

    is_compiled_patsparse = True

    def __init__(self, lib_path: str | os.PathLike, blob: np.ndarray, manifest: dict, source: str,
                 graph_json: dict, graph_tensors: dict[str, np.ndarray]):
        self.manifest = manifest
        self.source = source
        self._graph = (graph_json, graph_tensors)
        self.lib_path = Path(lib_path)
        try:
            self._lib = ctypes.CDLL(str(self.lib_path))
            for fn, res in (("ps_forward", None), ("ps_vl", ctypes.c_int), ("ps_workspace_floats", ctypes.c_long),
                            ("ps_blob_floats", ctypes.c_long)):
                getattr(self._lib, fn).restype = res
        except (OSError, AttributeError) as e:
            raise FormatError(f"{self.lib_path} is not a patsparse model library ({e})") from None
        try:  # a trusted library built before arenas lived in the workspace has none
            self._release = self._lib.ps_release
            self._release.argtypes, self._release.restype = [ctypes.c_void_p], None
        except AttributeError:
            self._release = None
        self._lib.ps_forward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self._blob = aligned_empty(blob.size, zero=False)
        self._blob[:] = blob
        self.input_shape = tuple(manifest["input_shape"])
        self.output_shape = tuple(manifest["output_shape"])
        self.threads = int(manifest["threads"])
        self._ws_floats = int(manifest["workspace_floats"])
        reported = (self._lib.ps_vl(), self._lib.ps_workspace_floats(), self._lib.ps_blob_floats())
        if reported != (manifest["vl"], self._ws_floats, manifest["blob_floats"]) or \
                blob.size < manifest["blob_floats"]:
            raise FormatError(f"{self.lib_path} does not belong to this manifest: the library reports "
                              f"(vl, workspace, blob floats) = {reported}, the manifest says "
                              f"{(manifest['vl'], self._ws_floats, manifest['blob_floats'])} and the blob has "
                              f"{blob.size} floats")
        self._local = threading.local()

    # -- calling ---------------------------------------------------------------------------
    def _workspace(self) -> np.ndarray:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = _Workspace(max(self._ws_floats, 16), self._release)
        return ws.array

    def run_numpy(self, x: np.ndarray, prof: np.ndarray | None = None) -> np.ndarray:
        """Forward pass on a float array (N, *input_shape) -> (N, *output_shape).

        ``prof``: a float64 array with one entry per layer, to which each layer adds its seconds.
        """
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":  # an object or string array would be converted to NaN
            raise InputError(f"input of dtype {x.dtype}: a compiled model takes numbers (float32, or "
                             "ints / bools converted to it)")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"input of shape {tuple(x.shape)}; this model was compiled for "
                             f"(N, {', '.join(map(str, self.input_shape))})")
        n = x.shape[0]
        y = np.empty((n, *self.output_shape), np.float32)
        if prof is not None and (prof.dtype != np.float64 or prof.shape != (len(self.manifest["layers"]),)
                                 or not prof.flags.c_contiguous):
            raise InputError(f"prof must be a contiguous float64 array of {len(self.manifest['layers'])} entries")
        if n:
            self._lib.ps_forward(x.ctypes.data, y.ctypes.data, n, self._workspace().ctypes.data,
                                 self._blob.ctypes.data, self.threads,
                                 None if prof is None else prof.ctypes.data)
        return y

    def profile(self, x: Any = None, *, repeats: int = 20, warmup: int = 3) -> list[dict]:
        """Per-layer wall-clock time: one dict per layer (name, kernel, median ms over ``repeats``
        calls after ``warmup``, share of the total, GFLOP/s of the work the kernel does).

        Why: a whole-model latency says nothing about which layer to improve; this gives the
        benchmarks' per-layer view on the user's own model. ``x``
        defaults to one random image.
        """
        if x is None:
            x = np.random.default_rng(0).standard_normal((1, *self.input_shape)).astype(np.float32)
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        layers = self.manifest["layers"]
        runs = np.zeros((max(1, repeats), len(layers)))
        for i in range(warmup + len(runs)):
            prof = np.zeros(len(layers))
            self.run_numpy(x, prof)
            if i >= warmup:
                runs[i - warmup] = prof
        med = np.median(runs, axis=0)
        total = float(med.sum()) or 1.0
        return [{"name": L["name"], "kernel": L["kernel"], "ms": float(t * 1e3), "share": float(t / total),
                 "gflops": L["flops"] * len(x) / t / 1e9 if t > 0 else 0.0}
                for L, t in zip(layers, med)]

    def __call__(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            if x.is_complex():
                raise InputError(f"input of dtype {x.dtype}: a compiled model takes real numbers")
            y = self.run_numpy(x.detach().to("cpu", torch.float32).numpy())
            return torch.from_numpy(y).to(x.device)
        if isinstance(x, np.ndarray):
            return self.run_numpy(x)
        raise InputError(f"input must be a torch.Tensor or numpy array, got {type(x).__name__}")

    forward = __call__

    def eval(self) -> "CompiledModel":
        return self

    def __repr__(self) -> str:
        layers = self.manifest.get("layers", [])
        return (f"CompiledModel(input={self.input_shape}, output={self.output_shape}, "
                f"{len(layers)} kernels, threads={self.threads}, vl={self.manifest.get('vl')})")

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the compiled model directory (see the module docstring) in one atomic swap.

        An existing ``path`` is replaced only when it holds nothing but a compiled model's files.
        """
        gj, gt = self._graph

        def write(d: Path) -> None:
            write_json(d / GRAPH_JSON, gj)
            save_tensors(d / GRAPH_TENSORS, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in gt.items()})
            atomic_write_bytes(d / SOURCE, self.source.encode())
            atomic_write_bytes(d / LIBRARY, self.lib_path.read_bytes())
            atomic_write_bytes(d / WEIGHTS, self._blob.astype("<f4").tobytes())
            files = {name: sha256((d / name).read_bytes()) for name in OWNED if name != MANIFEST}
            write_json(d / MANIFEST, {**self.manifest, "format_version": FORMAT_VERSION, "files": files})

        return replace_dir(path, write, OWNED)

