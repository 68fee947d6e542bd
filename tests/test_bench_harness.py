"""Harness: statistics, the worker protocol, output checking and isolation of bad engines.

The engines defined here are test doubles of *failures* (a crash, a hang, a wrong answer); the
engines they run beside are the real PyTorch and ONNX Runtime engines. Worker processes import
this module to find the doubles, so it keeps torch out of its top-level imports.
"""

import math
import os
import signal
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patsparse.bench import protocol
from patsparse.bench.engines import Engine, Runner, load_engine
from patsparse.bench.engines.onnxruntime_engine import OnnxRuntime
from patsparse.bench.harness import compare, run_bench, summarize
from patsparse.bench.model import BenchModel
from patsparse.errors import InputError


def tiny_model() -> BenchModel:
    import torch  # here, not at the top: the workers import this module for the doubles below
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 5))
    return BenchModel.from_module(m, (3, 16, 16), name="tiny")


class WrongEngine(OnnxRuntime):
    """ONNX Runtime with a deliberately perturbed output."""

    name, label = "wrong", "wrong answer"

    def prepare(self, model, example, workdir, threads):
        inner = super().prepare(model, example, workdir, threads)
        return Runner(lambda x: inner(x) + 0.1, inner.model_bytes)


class CrashWhileTiming(Engine):
    """Answers correctly (through ONNX Runtime) twice, then dies with SIGSEGV."""

    name, label = "crash", "crashes"

    def prepare(self, model, example, workdir, threads):
        inner = OnnxRuntime().prepare(model, example, workdir, threads)
        calls = []

        def run(x):
            calls.append(1)
            if len(calls) > 2:  # after the output check and the warm-up call
                os.kill(os.getpid(), signal.SIGSEGV)
            return inner(x)

        return Runner(run, 0)


class HangInPrepare(Engine):
    name, label = "hang", "hangs"

    def prepare(self, model, example, workdir, threads):
        time.sleep(3600)


class RaiseInPrepare(Engine):
    name, label = "raise", "raises"

    def prepare(self, model, example, workdir, threads):
        raise RuntimeError("converter rejected op Foo")


def double(cls) -> str:
    return f"{__name__}:{cls.__name__.lower()}"


# module-level instances the workers load by "module:attribute"
wrongengine, crashwhiletiming, hanginprepare, raiseinprepare = (
    WrongEngine(), CrashWhileTiming(), HangInPrepare(), RaiseInPrepare())


# ---- statistics ---------------------------------------------------------------------------
def test_summarize_known_values():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.min, s.mean, s.n) == (3.0, 1.0, 3.0, 5)
    assert s.p90 == pytest.approx(4.6) and s.p99 == pytest.approx(4.96)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.001, 1e4), min_size=1, max_size=200))
def test_summarize_orders(samples):
    s = summarize(samples)
    assert s.min <= s.median <= s.p90 <= s.p99 <= max(samples) + 1e-9
    assert s.n == len(samples)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_summarize_rejects(bad):
    with pytest.raises(InputError):
        summarize(bad)


def test_compare():
    ref = np.array([[1.0, -2.0]])
    assert compare(np.array([1.0, -2.5]), ref) == (0.5, 0.25)
    assert compare(np.array([[np.nan, 0]]), ref) == (math.inf, math.inf)
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros(3), ref)


# ---- protocol -----------------------------------------------------------------------------
def test_protocol_roundtrip_timeout_and_eof():
    r, w = os.pipe()
    try:
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        protocol.send(w, {"op": "x", "n": 3}, {"a": a})
        head, arrays = protocol.recv(r, timeout=5)
        assert head == {"op": "x", "n": 3}
        np.testing.assert_array_equal(arrays["a"], a)
        with pytest.raises(protocol.WorkerTimeout):
            protocol.recv(r, timeout=0.2)
    finally:
        os.close(w)
    with pytest.raises(protocol.WorkerGone):
        protocol.recv(r, timeout=5)
    os.close(r)


# ---- engines side by side -------------------------------------------------------------------
def test_real_engines_beside_broken_ones(tmp_path):
    res = run_bench(tiny_model(), ["torch", "onnxruntime", double(WrongEngine), double(CrashWhileTiming),
                                   double(RaiseInPrepare)],
                    batch=2, repeats=6, block=3, warmup=1, timeout=120, workdir=tmp_path)
    by = {e.name.split(":")[-1]: e for e in res.engines}
    for name in ("torch", "onnxruntime"):
        e = by[name]
        assert e.status == "ok", e.reason
        assert len(e.samples_ms) == 6 and 0 < e.median_ms <= e.p90_ms
        assert e.max_abs_err < 1e-4 and e.peak_rss_mb > 10 and e.model_bytes > 1000
    assert by["torch"].max_abs_err == 0.0  # the reference itself
    assert by["wrongengine"].status == "wrong" and "differs from PyTorch eager" in by["wrongengine"].reason
    assert not by["wrongengine"].samples_ms  # a wrong engine is never timed
    crash = by["crashwhiletiming"]
    assert crash.status == "crashed" and "SIGSEGV" in crash.reason and "while timing" in crash.reason
    assert by["raiseinprepare"].status == "failed" and "converter rejected op Foo" in by["raiseinprepare"].reason
    assert res.input_shape == [2, 3, 16, 16] and res.macs_dense == res.macs_sparse > 0


def test_paced_calls(tmp_path):
    res = run_bench(tiny_model(), ["torch"], repeats=4, block=2, warmup=0, timeout=120, gap_ms=20,
                    workdir=tmp_path)
    e = res.engines[0]
    assert e.status == "ok" and len(e.samples_ms) == 4 and e.median_ms <= e.p90_ms <= e.p99_ms
    assert res.gap_ms == 20.0
    with pytest.raises(InputError, match="gap_ms"):
        run_bench(tiny_model(), ["torch"], gap_ms=-1)


def test_hanging_engine_is_killed(tmp_path):
    res = run_bench(tiny_model(), [double(HangInPrepare), "onnxruntime"], repeats=3, block=3,
                    warmup=0, timeout=8, workdir=tmp_path)
    hang, ort = res.engines
    assert hang.status == "timeout" and "8 s" in hang.reason  # killed, or this call would not return
    assert ort.status == "ok"


def test_bad_arguments():
    m = tiny_model()
    with pytest.raises(InputError, match="unknown engine"):
        run_bench(m, ["nope"])
    with pytest.raises(InputError, match="repeats"):
        run_bench(m, ["onnxruntime"], repeats=0)
    with pytest.raises(InputError, match="not a patsparse.bench Engine"):
        load_engine("os:path")


def test_deepsparse_without_its_venv(monkeypatch, tmp_path):
    monkeypatch.setenv("PATSPARSE_CACHE", str(tmp_path))
    ok, why = load_engine("deepsparse").available()
    assert not ok and "make bench-peers" in why


@pytest.mark.slow
def test_every_installed_engine_agrees_with_pytorch(tmp_path):
    """All engines on a small model: each one available here must match PyTorch and be timed."""
    res = run_bench(tiny_model(), None, batch=2, repeats=5, block=5, warmup=1, timeout=600, workdir=tmp_path)
    bad = [(e.name, e.status, e.reason) for e in res.engines if e.status not in ("ok", "unavailable")]
    assert not bad, bad
    assert len(res.ok()) >= 6, [(e.name, e.reason) for e in res.engines]


class MissingInterpreter(OnnxRuntime):
    name, label = "nopython", "no interpreter"

    def python(self):
        return "/nonexistent/bin/python"


missinginterpreter = MissingInterpreter()


def test_engine_whose_interpreter_is_missing(tmp_path):
    res = run_bench(tiny_model(), [double(MissingInterpreter)], repeats=1, workdir=tmp_path)
    assert res.engines[0].status == "failed" and "/nonexistent/bin/python" in res.engines[0].reason


def test_worker_env_drops_only_patsparse_calmed_openmp(monkeypatch):
    from patsparse.bench.harness import worker_env
    from patsparse.cli.train import CALMED

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv(CALMED, "1")  # set by patsparse for training: engines get their default
    env = worker_env(2, ["/x"])
    assert "OMP_WAIT_POLICY" not in env and CALMED not in env
    assert env["OMP_NUM_THREADS"] == "2" and env["PYTHONPATH"].split(os.pathsep)[-1] == "/x"
    monkeypatch.delenv(CALMED)  # the user's own choice stays
    assert worker_env(1, [])["OMP_WAIT_POLICY"] == "PASSIVE"


def test_patsparse_worker_waits_option():
    from patsparse.bench.harness import worker_env

    engine = load_engine("patsparse")
    assert engine.worker_env({}) == {} and engine.worker_env({"patsparse_waits": "default"}) == {}
    extra = engine.worker_env({"patsparse_waits": "passive"})
    assert worker_env(2, [], extra)["OMP_WAIT_POLICY"] == "PASSIVE"
    with pytest.raises(ValueError, match="patsparse_waits"):
        engine.worker_env({"patsparse_waits": "spin"})
