"""The one timing loop: every benchmark, in a worker process or in the script's own, times with it.

Why one loop: the rules that make a number comparable on a small shared machine live here
once. Each block of calls starts after a settle pause, because an engine leaves its thread pool
spinning after its calls (ONNX Runtime's workers, OpenMP's spin-wait before sleeping, OpenVINO's
TBB) and those spinners steal the cores of whatever is timed next, which on 2 cores flatters or
penalises an engine by whom it follows. Then unrecorded warm-up calls re-warm the caches another
engine evicted, then each timed call is one sample. ``interleave`` gives every engine one such
block per round, in rotated order, so drift in machine load hits all alike.

Only the standard library is imported: the worker runs this inside other interpreters too.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable, Mapping, Sequence, TypeVar

# Pause before each timed block: long enough for the previous engine's spinning threads to sleep.
SETTLE_S = 0.05

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def time_calls(fn: Callable[[], object], repeats: int, *, warmup: int = 0, settle: float = SETTLE_S,
               clock: Callable[[], float] = time.perf_counter, gap: float = 0.0) -> list[float]:
    """``repeats`` samples of ``fn()``, in ``clock`` units (seconds for the default clock).

    Sleeps ``settle`` seconds first, then makes ``warmup`` unrecorded calls. A kernel benchmark
    whose ``fn`` runs many calls inside native code passes its own ``clock`` (CPU time, cycles)
    and divides by its call count. ``gap`` seconds of sleep after each timed call (outside the
    sample) pace the calls like a video loop, where a thread team sleeps between frames.
    """
    if settle > 0:
        time.sleep(settle)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
        if gap > 0:
            time.sleep(gap)
    return samples


def rotated(names: Sequence[T], round_index: int) -> list[T]:
    """The order of round ``round_index``: ``names`` rotated left by the round number, so that no
    engine always runs right after the same other one."""
    k = round_index % len(names) if names else 0
    return list(names[k:]) + list(names[:k])


def interleave(fns: Mapping[K, Callable[[], object]], rounds: int | None = None, *, seconds: float | None = None,
               block: int = 1, warmup: int = 1, settle: float = SETTLE_S,
               clock: Callable[[], float] = time.perf_counter) -> dict[K, list[float]]:
    """Samples of each function, timed in rounds of one ``time_calls`` block each, functions in
    rotated order: {name: block samples per round}. ``rounds`` bounds the number of rounds,
    ``seconds`` the wall time after which no new round starts (at least one always runs)."""
    if rounds is None and seconds is None:
        raise ValueError("interleave needs rounds or seconds")
    end = time.perf_counter() + seconds if seconds is not None else None
    samples: dict[K, list[float]] = {name: [] for name in fns}
    r = 0
    while (rounds is None or r < rounds) and (end is None or r == 0 or time.perf_counter() < end):
        for name in rotated(list(fns), r):
            samples[name] += time_calls(fns[name], block, warmup=warmup, settle=settle, clock=clock)
        r += 1
    return samples
