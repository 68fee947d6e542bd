"""Engine worker: ``python -m patsparse.bench.worker``, driven by the harness over pipes.

One worker hosts one engine, so a segfault, an abort or a hang in a native library ends that
worker only. The worker keeps the protocol on private copies of fd 0/1 and points fd 1 at
stderr, because converters and runtimes (pnnx, MNN, TVM) print freely to stdout and would
otherwise corrupt the message stream.

Operations: ``prepare`` (load the engine, convert/build the model), ``run`` (one output, for
the accuracy check), ``time`` (n timed calls after an optional settle pause and warm-up calls,
optionally paced by ``gap_s`` seconds of sleep after each: ``timing.time_calls``), ``stats``
(peak resident memory), ``exit``. Errors inside an operation are reported back, not raised.
"""

from __future__ import annotations

import os
import pickle
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import protocol
from .timing import time_calls


@dataclass
class ModelFiles:
    """What the harness materialised for the engines (paths are inside the run's workdir).

    ``onnx`` is exported at the benchmark batch size, ``onnx_b1`` at batch 1 (for engines that
    run one image at a time). ``torch_module()`` needs the PyTorch model: it was sent over the
    pipe by the harness process that spawned this worker (never read from a file), or, for a
    model whose classes live in a script's ``__main__``, exported with torch.export.
    """

    onnx: str
    onnx_b1: str
    batch: int
    weight_bytes: int
    export: str | None = None
    _pickled: bytes | None = field(default=None, repr=False)
    _module: Any = field(default=None, repr=False)

    @property
    def has_torch_model(self) -> bool:
        return self._pickled is not None or self.export is not None

    def torch_module(self):
        """The PyTorch model in eval mode (loaded once)."""
        if self._module is None:
            if self._pickled is not None:
                # Bytes written by our parent process into an anonymous pipe a moment ago.
                self._module = pickle.loads(self._pickled).eval()
            elif self.export is not None:
                import torch

                self._module = torch.export.load(self.export).module()
            else:
                raise RuntimeError("this benchmark has no PyTorch model (it was given as ONNX)")
        return self._module


def _peak_rss_kb() -> int:
    """Peak resident memory of this process, in KiB.

    VmHWM belongs to the address space exec() created, whereas ru_maxrss survives exec and would
    report the (larger) harness this worker was forked from.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _serve(rfd: int, wfd: int) -> None:
    from .engines import load_engine

    runner = None
    x: np.ndarray | None = None
    while True:
        try:
            msg, arrays = protocol.recv(rfd)
        except protocol.WorkerGone:
            return
        op = msg.get("op")
        reply: dict[str, Any] = {"ok": True}
        out: dict[str, np.ndarray] = {}
        try:
            if op == "prepare":
                engine = load_engine(msg["engine"])
                engine.options = dict(msg.get("options", {}))
                x = np.ascontiguousarray(arrays["x"], dtype=np.float32)
                files = ModelFiles(**msg["files"],
                                   _pickled=arrays["module"].tobytes() if "module" in arrays else None)
                workdir = Path(msg["workdir"])
                workdir.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                runner = engine.prepare(files, x, workdir, int(msg["threads"]))
                reply.update(seconds=time.perf_counter() - t0, model_bytes=runner.model_bytes,
                             notes=runner.notes, version=engine.version())
            elif op == "run":
                out["y"] = np.asarray(runner(x), dtype=np.float32)
            elif op == "time":
                reply["seconds"] = time_calls(lambda: runner(x), int(msg["n"]), warmup=int(msg.get("warmup", 0)),
                                              settle=float(msg.get("settle", 0.0)), gap=float(msg.get("gap_s", 0.0)))
            elif op == "stats":
                reply["peak_rss_kb"] = _peak_rss_kb()
            elif op == "exit":
                protocol.send(wfd, reply)
                return
            else:
                raise ValueError(f"unknown operation {op!r}")
        except Exception as e:  # reported to the harness, which marks the engine failed
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}".strip()}
            out = {}
        protocol.send(wfd, reply, out)


def main() -> int:
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    _serve(rfd, wfd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
