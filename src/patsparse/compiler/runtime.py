"""CompiledModel: the callable a compile returns, and its directory format.

A compiled model directory holds::

    manifest.json      format, input/output shape per image, threads, vector width, toolchain
                       fingerprint, sha256 of source and weights, per-layer kernel + schedule
    model.c            the generated source (kept for inspection and rebuilds)
    libmodel.so        the built library
    weights.bin        the packed weight blob (raw little-endian float32)
    graph.json, graph.safetensors   the fused IR, so the model can be regenerated on a machine
                       with another vector ISA or compiler without the original Python model

``load`` uses the library when the toolchain fingerprint and source hash match, rebuilds it
from model.c when only the library is missing, and regenerates everything from the IR when
the ISA or compiler differs (a library built for AVX-512 would die with SIGILL on AVX2) or the
directory was written by an older format version.

Thread safety: the generated code keeps no state between calls except the workspace; each
Python thread gets its own workspace (zeroed once: kernels never write halos, so they stay
zero), and ctypes releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes, read_json, write_json
from ..errors import FormatError, InputError
from .build import toolchain_fingerprint

FORMAT = "patsparse-compiled"
FORMAT_VERSION = 3  # 2: ps_forward takes the per-layer profile array; 3: FKW1 v2 (uint16 cidx).
# Older versions are regenerated from the stored graph on load.
ALIGN_BYTES = 64


def aligned_empty(n: int, zero: bool = True) -> np.ndarray:
    """``n`` float32 starting on a 64-byte boundary (packed weights and planes assume it)."""
    raw = np.zeros(n + ALIGN_BYTES // 4, np.float32) if zero else np.empty(n + ALIGN_BYTES // 4, np.float32)
    start = (-raw.ctypes.data % ALIGN_BYTES) // 4
    return raw[start: start + n]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        self._lib = ctypes.CDLL(str(self.lib_path))
        self._lib.ps_forward.restype = None
        self._lib.ps_forward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self._blob = aligned_empty(blob.size, zero=False)
        self._blob[:] = blob
        self.input_shape = tuple(manifest["input_shape"])
        self.output_shape = tuple(manifest["output_shape"])
        self.threads = int(manifest["threads"])
        self._ws_floats = int(manifest["workspace_floats"])
        self._local = threading.local()

    # -- calling ---------------------------------------------------------------------------
    def _workspace(self) -> np.ndarray:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = aligned_empty(max(self._ws_floats, 16))
        return ws

    def run_numpy(self, x: np.ndarray, prof: np.ndarray | None = None) -> np.ndarray:
        """Forward pass on a float array (N, *input_shape) -> (N, *output_shape).

        ``prof``: a float64 array with one entry per layer, to which each layer adds its seconds.
        """
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
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
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
        """Write the compiled model directory (see the module docstring)."""
        from ..checkpoint import save_tensors

        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / "model.c", self.source.encode())
        atomic_write_bytes(d / "weights.bin", self._blob.astype("<f4").tobytes())
        lib = d / "libmodel.so"
        if self.lib_path.resolve() != lib.resolve():
            tmp = d / ".libmodel.so.tmp"
            shutil.copyfile(self.lib_path, tmp)
            os.replace(tmp, lib)
        gj, gt = self._graph
        write_json(d / "graph.json", gj)
        save_tensors(d / "graph.safetensors", {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in gt.items()})
        write_json(d / "manifest.json", self.manifest)
        return d

    @classmethod
    def load(cls, path: str | os.PathLike, *, threads: int | None = None) -> "CompiledModel":
        """Open a compiled model directory, rebuilding or regenerating what is stale."""
        from ..checkpoint import load_tensors
        from .build import compile_c

        d = Path(path)
        man = read_json(d / "manifest.json", "compiled-model manifest")
        if not isinstance(man, dict) or man.get("format") != FORMAT:
            raise FormatError(f"{d}: manifest.json is not a patsparse compiled model")
        version = man.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatError(f"{d}: compiled-model format {version}, this patsparse reads "
                              f"up to {FORMAT_VERSION}")
        if threads:
            man["threads"] = int(threads)
        gj = read_json(d / "graph.json", "compiled-model graph")
        gt = {k: v.numpy() for k, v in load_tensors(d / "graph.safetensors", "compiled-model graph").items()}
        if man.get("toolchain") != toolchain_fingerprint() or version < FORMAT_VERSION:
            from .api import build_from_graph
            from .ir import Graph

            fresh = build_from_graph(Graph.from_json(gj, gt), threads=man["threads"],
                                     schedules=None, origin=man.get("origin", str(d)))
            fresh.save(d)
            return fresh
        try:
            source = (d / "model.c").read_text()
            raw = (d / "weights.bin").read_bytes()
        except OSError as e:
            raise FormatError(f"{d}: compiled model is incomplete ({e})") from e
        if sha256(source.encode()) != man.get("source_sha256"):
            raise FormatError(f"{d}/model.c does not match its manifest (edited or corrupt)")
        if sha256(raw) != man.get("weights_sha256"):
            raise FormatError(f"{d}/weights.bin does not match its manifest (corrupt)")
        blob = np.frombuffer(raw, dtype="<f4")
        lib = d / "libmodel.so"
        if not lib.is_file():
            lib = compile_c(source, name="model")
        return cls(lib, blob, man, source, gj, gt)
