"""Side-by-side timing: every engine in its own worker process, timed interleaved.

Why this shape:
- Isolation. Each engine runs in a worker process (``worker.py``); a crash, an abort or a hang
  (per-request timeout) ends that worker, the engine is reported with the reason, and the
  benchmark goes on with the others. Peak resident memory is then per engine, too.
- Fairness on a noisy, shared machine. Workers stay alive and idle (blocked on a pipe) while
  another engine runs, and timing goes in rounds: each round gives every engine one block of
  calls, in a rotated order. Drift in machine load hits all engines alike, and medians and p90
  come from all blocks of all rounds.
- Correctness first. Each engine's output is compared with the reference (PyTorch eager on
  the same input, in the harness) before any timing; a wrong engine is reported as wrong and
  never timed.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..cli.train import CALMED
from ..errors import InputError
from . import protocol, provenance
from .engines import ENGINES, engine_spec, load_engine
from .timing import SETTLE_S, rotated

SRC_ROOT = str(Path(__file__).resolve().parents[2])
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS",
              "NM_NUM_THREADS")


@dataclass
class Stats:
    """Summary of per-call latencies in milliseconds."""

    median: float
    p90: float
    p99: float
    mean: float
    min: float
    n: int


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Median, 90th and 99th percentiles (linear interpolation), mean and min of latency samples."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise InputError(f"latency samples must be a non-empty list of finite numbers, got {a.size}")
    return Stats(median=float(np.median(a)), p90=float(np.percentile(a, 90)), p99=float(np.percentile(a, 99)),
                 mean=float(a.mean()),
                 min=float(a.min()), n=int(a.size))


def compare(y: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, max abs error / max |ref|); shapes must hold the same elements."""
    y = np.asarray(y, dtype=np.float64)
    if y.size != ref.size:
        raise ValueError(f"output has shape {list(y.shape)}, the reference {list(ref.shape)}")
    err = float(np.max(np.abs(y.reshape(ref.shape) - ref))) if ref.size else 0.0
    if not math.isfinite(err):
        return math.inf, math.inf
    scale = float(np.max(np.abs(ref))) or 1.0
    return err, err / scale


@dataclass
class EngineResult:
    """One engine's outcome. ``status``: ok, unavailable, wrong, failed, crashed, timeout."""

    name: str
    label: str
    status: str
    reason: str = ""
    version: str = ""
    notes: str = ""
    max_abs_err: float | None = None
    rel_err: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    model_bytes: int | None = None
    prepare_s: float | None = None


@dataclass
class BenchResult:
    """Everything one run measured, with the context needed to reproduce or judge it."""

    model: str
    input_shape: list[int]
    batch: int
    threads: int
    repeats: int
    reference: str
    tolerance: float
    engines: list[EngineResult]
    machine: dict[str, Any]
    rate: float | None = None
    macs_dense: int | None = None
    macs_sparse: int | None = None
    gap_ms: float = 0.0

    def ok(self) -> list[EngineResult]:
        return [e for e in self.engines if e.status == "ok"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EngineFailure(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def worker_env(threads: int, path: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """A worker's environment: this one with the thread count pinned and patsparse importable.

    If patsparse itself made OpenMP waits passive in this process (for training,
    cli.train.calm_openmp), the worker drops that: engines are timed with their defaults, and a
    passive wait would cost every parallel region a thread wake-up. A user's own setting stays.
    """
    env = dict(os.environ)
    if env.pop(CALMED, None):
        env.pop("OMP_WAIT_POLICY", None)
    env.update({k: str(threads) for k in THREAD_ENV})
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([SRC_ROOT, *path]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})  # the engine's own settings (Engine.worker_env)
    return env


class Worker:
    """One engine's worker process and the request/response calls to it."""

    def __init__(self, name: str, python: str, path: list[str], threads: int, log: Path,
                 extra_env: dict[str, str] | None = None):
        env = worker_env(threads, path, extra_env)
        self.name, self.log = name, log
        self._log_file = open(log, "wb")
        try:
            self.proc = subprocess.Popen([python, "-m", "patsparse.bench.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._log_file, env=env,
                                         start_new_session=True)
        except OSError as e:
            self._log_file.close()
            raise EngineFailure("failed", f"cannot start the worker with {python}: {e}") from None

    def call(self, msg: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
             timeout: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        try:
            protocol.send(self.proc.stdin.fileno(), msg, arrays)
            reply, out = protocol.recv(self.proc.stdout.fileno(), timeout)
        except protocol.WorkerTimeout:
            self.kill()
            raise EngineFailure("timeout", f"no answer within {timeout:.0f} s "
                                f"(worker killed; log: {self.log})") from None
        except protocol.WorkerGone:
            raise EngineFailure("crashed", self._death()) from None
        if not reply.get("ok"):
            raise EngineFailure("failed", reply.get("error", "unknown error"))
        return reply, out

    def _death(self) -> str:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        how = (f"killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0
               else f"exited with status {rc}")
        self._log_file.flush()
        tail = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()][-3:]
        return f"worker {how}" + (f"; last output: {' | '.join(tail)}" if tail else "") + f" (log: {self.log})"

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"op": "exit"}, timeout=10)
                self.proc.wait(timeout=10)
            except (EngineFailure, subprocess.TimeoutExpired):
                pass
        self.kill()
        for f in (self.proc.stdin, self.proc.stdout, self._log_file):
            f.close()


def machine_info(threads: int) -> dict[str, Any]:
    """Where and when: CPU, cores, vector ISA, OS, date, patsparse commit."""
    cpu, flags = provenance.cpu()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads": threads,
        "isa": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "asimd") if f in flags],
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "date": provenance.utc_now(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "commit": provenance.git_commit(SRC_ROOT),
    }


def run_bench(model, engines: Sequence[str] | None = None, *, batch: int = 1, threads: int = 2,
              repeats: int = 50, warmup: int = 5, block: int = 5, timeout: float = 600.0,
              tolerance: float = 1e-3, workdir: str | os.PathLike | None = None,
              time_limit: float = 120.0, options: dict[str, Any] | None = None, seed: int = 0,
              gap_ms: float = 0.0, log: Callable[[str], None] = lambda s: None) -> BenchResult:
    """Benchmark ``model`` (a ``patsparse.bench.model.BenchModel``) on ``engines``.

    ``repeats`` timed calls per engine, in rounds of ``block`` calls (one unrecorded call
    before each block re-warms caches another engine evicted). ``timeout`` bounds each request
    to a worker (preparing includes conversion, compilation and tuning). ``tolerance`` bounds
    max |y - ref| / max |ref| for an engine to count as correct. An engine whose timed calls
    add up to ``time_limit`` seconds gets no further rounds (a very slow engine, e.g. untuned
    TVM on a large model, then has fewer samples; their number is in the JSON). ``options``
    go to every engine (e.g. ``{"tvm_budget": 600}``). Without ``workdir`` a temporary one is
    used and removed afterwards unless an engine failed (its log is kept there). ``gap_ms``
    paces the timed calls (a sleep after each, as a video loop waits for its next frame): an
    engine's threads then go idle between calls, and its p99 shows what waking them costs
    when another process has taken a core.
    """
    for what, v, lo in (("batch", batch, 1), ("threads", threads, 1), ("repeats", repeats, 1),
                        ("block", block, 1), ("warmup", warmup, 0)):
        if not isinstance(v, int) or v < lo:
            raise InputError(f"{what} must be an integer >= {lo}, got {v!r}")
    if not (timeout > 0 and tolerance > 0):
        raise InputError(f"timeout and tolerance must be positive, got {timeout}, {tolerance}")
    if not (isinstance(gap_ms, (int, float)) and 0 <= gap_ms <= 10_000):
        raise InputError(f"gap_ms must be a number of milliseconds in [0, 10000], got {gap_ms!r}")
    names = list(engines) if engines else list(ENGINES)
    for n in names:
        engine_spec(n)  # unknown names fail before any work
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="patsparse-bench-") if own_dir else workdir)
    root.mkdir(parents=True, exist_ok=True)

    machine = machine_info(threads)
    x = model.example(batch, seed)
    files = model.materialise(root / "model", x)
    ref, ref_name = model.reference(x, files)
    run = _Run(root=root, threads=threads, timeout=timeout, log=log, gap_s=gap_ms / 1e3)
    try:
        for name in names:
            run.prepare(name, model, x, ref, ref_name, files, warmup, tolerance, options or {})
        run.time_interleaved(names, repeats, block, time_limit)
    finally:  # also on Ctrl-C or a harness error: no worker outlives the run
        for w in run.started:
            w.kill()
    results = run.results

    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if own_dir and all(r.status in ("ok", "unavailable") for r in results.values()):
        shutil.rmtree(root, ignore_errors=True)
    macs = model.macs(x)
    return BenchResult(model=model.name, input_shape=list(x.shape), batch=batch, threads=threads,
                       repeats=repeats, reference=ref_name, tolerance=tolerance,
                       engines=[results[n] for n in names], machine=machine,
                       rate=model.rate, macs_dense=macs[0] if macs else None,
                       macs_sparse=macs[1] if macs else None, gap_ms=float(gap_ms))


@dataclass
class _Run:
    """State of one benchmark run: its workers and what each engine has produced so far."""

    root: Path
    threads: int
    timeout: float
    log: Callable[[str], None]
    gap_s: float = 0.0
    results: dict[str, EngineResult] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)  # prepared, checked, warm
    started: list[Worker] = field(default_factory=list)

    def prepare(self, name: str, model, x: np.ndarray, ref: np.ndarray, ref_name: str,
                files: dict[str, Any], warmup: int, tolerance: float, options: dict[str, Any]) -> None:
        """Start, prepare, check and warm up one engine; a failure is recorded, not raised."""
        engine = load_engine(name)
        res = self.results[name] = EngineResult(name=name, label=engine.label or name, status="ok")
        ok, why = engine.available()
        if ok and engine.needs_torch_model and model.module is None:
            ok, why = False, "needs a PyTorch model (this benchmark was given an ONNX file)"
        if not ok:
            res.status, res.reason = "unavailable", why
            self.log(f"{name}: unavailable: {why}")
            return
        self.log(f"{name}: preparing")
        stage, w = "preparing", None
        try:
            w = Worker(name, engine.python(), engine.worker_path(), self.threads,
                       self.root / f"{_slug(name)}.log", engine.worker_env(options))
            self.started.append(w)
            arrays = {"x": x}
            pickled = model.module_bytes() if engine.needs_torch_model else None
            if pickled is not None:
                arrays["module"] = np.frombuffer(pickled, dtype=np.uint8)
            reply, _ = w.call({"op": "prepare", "engine": engine_spec(name), "threads": self.threads,
                               "workdir": str(self.root / _slug(name)), "files": files,
                               "options": options}, arrays, self.timeout)
            res.prepare_s, res.model_bytes = reply["seconds"], reply["model_bytes"]
            res.notes, res.version = reply.get("notes", ""), reply.get("version", "")
            stage = "checking the output"
            _, out = w.call({"op": "run"}, timeout=self.timeout)
            try:
                res.max_abs_err, res.rel_err = compare(out["y"], ref)
            except ValueError as e:
                raise EngineFailure("wrong", str(e)) from None
            if not res.rel_err <= tolerance:
                raise EngineFailure("wrong", f"output differs from {ref_name}: max abs error "
                                    f"{res.max_abs_err:.3g} = {res.rel_err:.3g} of max |ref| "
                                    f"(tolerance {tolerance:g}); not timed")
            stage = "warming up"
            if warmup:
                w.call({"op": "time", "n": 1, "warmup": warmup - 1}, timeout=self.timeout)
            self.workers[name] = w
            self.log(f"{name}: ready in {res.prepare_s:.1f} s, max abs error {res.max_abs_err:.2g}")
        except EngineFailure as f:
            res.status = f.status
            res.reason = f.reason if f.status == "wrong" else f"while {stage}: {f.reason}"
            self.log(f"{name}: {f.status}: {res.reason}")
            if w is not None:
                w.close()

    def time_interleaved(self, names: Sequence[str], repeats: int, block: int, time_limit: float) -> None:
        """Rounds of ``block`` timed calls per live engine in rotated order, then memory and stats."""
        for r in range(math.ceil(repeats / block)):
            n_calls = min(block, repeats - r * block)
            live = [n for n in names if n in self.workers
                    and sum(self.results[n].samples_ms) < time_limit * 1e3]
            for name in rotated(live, r):
                try:
                    reply, _ = self.workers[name].call({"op": "time", "n": n_calls, "warmup": 1,
                                                        "settle": SETTLE_S, "gap_s": self.gap_s},
                                                       timeout=self.timeout)
                    self.results[name].samples_ms.extend(t * 1e3 for t in reply["seconds"])
                except EngineFailure as f:
                    self.results[name].status = f.status
                    self.results[name].reason = f"while timing: {f.reason}"
                    self.log(f"{name}: {f.status} while timing: {f.reason}")
                    self.workers.pop(name).close()
        for name, w in self.workers.items():
            res = self.results[name]
            try:
                reply, _ = w.call({"op": "stats"}, timeout=60)
                res.peak_rss_mb = reply["peak_rss_kb"] / 1024
            except EngineFailure as f:
                self.log(f"{name}: could not read memory use: {f.reason}")
            w.close()
            s = summarize(res.samples_ms)
            res.median_ms, res.p90_ms, res.p99_ms = s.median, s.p90, s.p99


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
