"""patsparse.bench.timing (the one timing loop) and engines prepared in-process (no speed asserted)."""

import itertools

import numpy as np
import pytest
import torch

from patsparse.bench.engines import prepare_here
from patsparse.bench.model import BenchModel
from patsparse.bench.timing import interleave, rotated, time_calls
from patsparse.errors import InputError


def counting_clock():
    """A clock that advances by one per reading: a sample is exactly one tick, whatever ran."""
    ticks = itertools.count()
    return lambda: float(next(ticks))


def test_time_calls_warms_up_then_samples_each_call():
    calls = []
    samples = time_calls(lambda: calls.append(1), 4, warmup=2, settle=0, clock=counting_clock())
    assert samples == [1.0] * 4 and len(calls) == 6


def test_rotated_orders():
    assert [rotated("abc", r) for r in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert rotated([], 3) == []


def test_interleave_rotates_blocks_and_counts_samples():
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "ab"}
    samples = interleave(fns, 2, block=2, warmup=1, settle=0, clock=counting_clock())
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 4}
    # round 0: a (1 warm-up + 2 timed), then b; round 1 starts with b
    assert "".join(order) == "aaabbb" + "bbbaaa"


def test_interleave_needs_a_bound_and_runs_one_round_on_a_spent_budget():
    with pytest.raises(ValueError, match="rounds or seconds"):
        interleave({"a": lambda: None})
    samples = interleave({"a": lambda: None, "b": lambda: None}, seconds=0.0, settle=0, warmup=0)
    assert {k: len(v) for k, v in samples.items()} == {"a": 1, "b": 1}


def test_engines_prepared_here_match_pytorch(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5)).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    runners = prepare_here(["torch", "onnxruntime"], BenchModel.from_module(net, (3, 6, 6)), x, tmp_path, 1,
                           {"ort_spinning": False})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    for name, run in runners.items():
        np.testing.assert_allclose(run(x), want, rtol=1e-4, atol=1e-5, err_msg=name)
    with pytest.raises(InputError, match="unknown engine"):
        prepare_here(["nosuch"], BenchModel.from_module(net, (3, 6, 6)), x, tmp_path, 1)
