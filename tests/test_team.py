"""The generated thread team (base.PRELUDE): barrier, scratch arenas, solo fallback.

The barrier's sleeping path only runs when a partner is late, so the test forces it (no spin,
more threads than cores); the fallback policy is driven with made-up stall times, so it is
checked without any timing; the arenas' owner is the workspace, so a process may create and
drop many models (per-library pthread keys ran out after ~500).
"""

from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import patsparse as ps
from patsparse.compiler.build import compile_c
from patsparse.compiler.codegen.base import prelude_c
from patsparse.compiler.target import detect

TEAM_C = r"""
/* every thread adds its id + 1 to a phase's slot, then after the barrier checks the slot's total;
   returns the number of wrong totals seen */
int barrier_stress(int threads, int phases) {
    static atomic_int slot[64];
    atomic_int bad = 0;
    for (int i = 0; i < 64; i++) atomic_store(&slot[i], 0);
    ps_sync s = {0};
    ps_team_prepare(&s, threads, 0.0);
    const int want = threads * (threads + 1) / 2;
    #pragma omp parallel num_threads(threads)
    {
        ps_team_enter(&s);
        const int t = omp_get_thread_num();
        for (int p = 0; p < phases; p++) {
            atomic_fetch_add(&slot[p % 64], t + 1);
            ps_barrier();
            if (atomic_load(&slot[p % 64]) != want) atomic_fetch_add(&bad, 1);
            ps_barrier();
            if (t == 0) atomic_store(&slot[p % 64], 0);
        }
        ps_team_leave();
    }
    ps_team_release(&s);
    return bad;
}
/* the team size of `n` calls wanting `nt` threads, call i starting at at[i] and lasting team_ms
   on the team, solo_ms alone; stalled[i]: call i slept that share of its time */
void solo_policy(int nt, int n, const double *stalled, const double *at, double team_ms, double solo_ms,
                 int *team) {
    ps_sync s = {0};
    for (int i = 0; i < n; i++) {
        team[i] = ps_team_prepare(&s, nt, at[i]);
        const double ms = team[i] > 1 ? team_ms : solo_ms;
        atomic_store(&s.slept_us, (unsigned)(stalled[i] * 1e3 * ms * team[i]));
        ps_team_adapt(&s, team[i], at[i], at[i] + 1e-3 * ms, 1);
    }
    ps_team_release(&s);
}
"""


@pytest.fixture(scope="module")
def team_lib():
    src = prelude_c(detect()).replace("#define PS_SPIN 4000", "#define PS_SPIN 0") + TEAM_C
    return ctypes.CDLL(str(compile_c(src, name="team_test")))


def test_barrier_with_sleeping_waiters_loses_no_wakeup(team_lib):
    out = {}
    run = threading.Thread(target=lambda: out.setdefault("bad", team_lib.barrier_stress(4, 3000)), daemon=True)
    run.start()
    run.join(120)
    assert not run.is_alive(), "barrier hung: a sleeping waiter was never woken"
    assert out["bad"] == 0


STALLS = 3  # base.PRELUDE's PS_STALLS: stalled calls in a row before a fresh team falls back
SPELL = 10  # calls 10 ms apart in a first fallback (PS_SOLO_MIN_MS 100)


def test_solo_fallback_backs_off_and_recovers(team_lib):
    n, k = 420, STALLS
    assert f"#define PS_STALLS {k}" in prelude_c(detect())
    team = np.zeros(n, np.int32)

    def policy(stalled: np.ndarray, period: float = 0.01, team_ms: float = 3.0, solo_ms: float = 1.0) -> np.ndarray:
        # call i starts at i * period seconds; by default a stalled team call is slower than one thread
        at = np.arange(n) * period
        team_lib.solo_policy(2, n, stalled.ctypes.data_as(ctypes.c_void_p), at.ctypes.data_as(ctypes.c_void_p),
                             ctypes.c_double(team_ms), ctypes.c_double(solo_ms), team.ctypes.data_as(ctypes.c_void_p))
        return team

    s1 = SPELL
    stalled = np.zeros(n)
    stalled[:k] = 0.9
    stalled[k + s1] = 0.9  # k calls in a row stall, and so does the probe after the fallback
    policy(stalled)
    # 100 ms (10 calls) alone after the k-th; the probe stalls: 200 ms alone; then the team
    assert (team[:k] == 2).all() and (team[k:k + s1] == 1).all() and team[k + s1] == 2
    back = k + 3 * s1 + 1  # the first team call after the second fallback
    assert (team[k + s1 + 1:back] == 1).all() and (team[back:] == 2).all()
    # one stall soon after: the fallback doubles again (a clean probe alone does not forget)
    stalled[back + 6] = 0.9
    policy(stalled)
    assert (team[back:back + 7] == 2).all() and (team[back + 7:back + 7 + 4 * s1] == 1).all()
    assert team[back + 7 + 4 * s1] == 2
    # 64 clean team calls halve it: the next stall falls back for 200 ms, not 400
    stalled[:] = 0
    stalled[:k] = 0.9
    stalled[[k + s1, back + 64]] = 0.9
    policy(stalled)
    assert (team[back:back + 65] == 2).all() and (team[back + 65:back + 65 + 2 * s1] == 1).all()
    assert team[back + 65 + 2 * s1] == 2
    # the fallback lasts a time, not a number of calls: a caller that calls once a second (a
    # benchmark alternating engines) is back on the team at its next call
    stalled[:] = 0
    stalled[:k] = 0.9
    assert (policy(stalled, period=1.0)[k:] == 2).all()
    # and while every team call stalls, the spell doubles up to its 2 s cap: never more than two
    # calls 1 s apart in a row on one thread
    stalled[:] = 0.9
    runs = "".join(map(str, policy(stalled, period=1.0)[k:])).split("2")
    assert team[k] == 2 and max(map(len, runs)) == 2
    # a team that stalls yet runs faster than one thread (several processes load the machine: the
    # team gets two cores' time slices) goes back to the team after its first fallback, for good
    stalled[:] = 0.9
    policy(stalled, team_ms=1.0, solo_ms=2.0)
    assert (team[:k] == 2).all() and (team[k:k + s1] == 1).all() and (team[k + s1:] == 2).all()
    # a stall under a quarter of the call's time is ordinary imbalance: the team stays
    stalled[:] = 0.2
    assert (policy(stalled) == 2).all()
    # fewer than k stalled calls in a row (hiccups, wake-ups after pauses) never send a fresh
    # team to one thread
    stalled[:] = 0.9
    stalled[k - 1::k] = 0.0
    assert (policy(stalled) == 2).all()


def _small_pattern_net() -> tuple[nn.Module, torch.Tensor]:
    """Two pattern convs (a stride-1 one on a tiny plane, a stride-2 one): kernels that take
    both shared and private scratch."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1)).eval()
    mask = torch.zeros(3, 3)
    mask[0, 1] = mask[1, 0] = mask[1, 1] = mask[1, 2] = 1
    with torch.no_grad():
        for conv in (m[0], m[2]):
            conv.weight.mul_(mask)
    return m, torch.randn(2, 3, 16, 16)


def test_workspaces_of_finished_threads_are_released():
    m, x = _small_pattern_net()
    cm = ps.compile(m, x, threads=2)
    with torch.no_grad():
        want = m(x)
    got = []
    for _ in range(20):  # each thread's workspace (and its arenas) goes with the thread
        t = threading.Thread(target=lambda: got.append(cm(x)))
        t.start()
        t.join()
    gc.collect()
    for g in got:
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


MANY_LIBRARIES = r"""
import gc, shutil, sys
import torch
sys.path.insert(0, {tests!r})
import patsparse as ps
from patsparse.compiler.runtime import CompiledModel
from test_team import _small_pattern_net
m, x = _small_pattern_net()
cm = ps.compile(m, x, threads=2)
want = m(x)
for i in range({n}):
    lib = f"{{sys.argv[1]}}/lib{{i}}.so"
    shutil.copy(cm.lib_path, lib)  # another path: the loader maps it as another library
    c = CompiledModel(lib, cm._blob, cm.manifest, cm.source, *cm._graph)
    assert (c(x) - want).abs().max() < 1e-4
    del c
    gc.collect()
print("MANY-OK")
"""


@pytest.mark.slow
def test_hundreds_of_libraries_in_one_process(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MANY_LIBRARIES.format(tests=str(Path(__file__).parent), n=700),
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "MANY-OK" in proc.stdout, proc.stderr[-2000:]


def test_team_size_does_not_change_the_bits():
    """A call the solo fallback runs on one thread returns what the whole team returns."""
    m, x = _small_pattern_net()
    cm = ps.compile(m, x, threads=2)
    assert any(L["schedule"].get("layout") == "cm" for L in cm.manifest["layers"])  # a cross-thread sum
    team = cm(x.numpy())
    cm.threads = 1
    np.testing.assert_array_equal(cm(x.numpy()), team)
