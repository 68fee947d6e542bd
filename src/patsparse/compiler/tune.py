"""Per-layer schedule search, measured on this machine.

For every tunable layer, each candidate schedule is generated under its own C name; all
candidates of all layers go into ONE library (one compiler run instead of hundreds), and a
dispatcher runs candidate ``id`` ``reps`` times. Candidates of a layer are timed interleaved,
round after round, and the best minimum time wins: on a shared, noisy machine the minimum over
interleaved rounds is the most repeatable estimate of what a schedule can do. The chosen
schedules go into the manifest, so a compiled model keeps them.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np

from .build import compile_c
from .codegen.base import SLACK, prelude_c
from .codegen.kernels import candidates, generate
from .codegen.pattern_conv import support_c
from .codegen.step import Plan, Step
from .runtime import aligned_empty

def tune_plan(plan: Plan, *, threads: int, cache_dir: str | Path | None = None,
              budget_s: float = 0.01, rounds: int = 3) -> dict[str, dict]:
    """Measure candidates for every tunable step of ``plan``; returns {C name: best schedule}."""
    jobs = []  # (step, schedule, kernel)
    for s in plan.steps:
        cands = candidates(s, plan.target, plan.threads)
        if len(cands) > 1:
            for j, c in enumerate(cands):
                k = generate(_renamed(s, f"{s.cname}_c{j}"), c, plan.target, plan.threads)
                jobs.append((s, c, k))
    if not jobs:
        return {}
    src = [prelude_c(plan.target), support_c(plan.target)] + [k.code for _, _, k in jobs]
    src.append("void tune_run(int id, const float *in, float *out, const float *w, const float *b,\n"
               "              const float *res, int reps, int nthreads) {\n"
               "    omp_set_num_threads(nthreads);\n    switch (id) {")
    src += [f"    case {i}: PS_TEAM_LOOP(reps, {k.name}(in, out, w, b, res)); break;"
            for i, (_, _, k) in enumerate(jobs)]
    src.append("    }\n}\n")
    lib = ctypes.CDLL(str(compile_c("\n".join(src), name="tune", target=plan.target,
                                     cache_dir=Path(cache_dir) if cache_dir else None)))
    lib.tune_run.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_int]
    best: dict[str, tuple[float, dict]] = {}
    rng = np.random.default_rng(0)
    by_step: dict[str, list[int]] = {}
    for i, (s, _, _) in enumerate(jobs):
        by_step.setdefault(s.cname, []).append(i)
    for cname, ids in by_step.items():
        s = jobs[ids[0]][0]
        inp = aligned_empty(s.in_layout.size + SLACK)
        inp[: s.in_layout.size] = rng.standard_normal(s.in_layout.size).astype(np.float32)
        out = aligned_empty(s.out_layout.size + SLACK)
        res = aligned_empty(s.out_layout.size + SLACK) if s.node.residual else None
        bias = aligned_empty(max(16, s.out_layout.C))
        packs = {i: _aligned(jobs[i][2].pack(s.node.params["weight"])) for i in ids}
        ptr = lambda a: None if a is None else a.ctypes.data  # noqa: E731
        reps = max(1, int(budget_s * 2e10 / max(1, jobs[ids[0]][2].flops)))  # ~budget at 20 GF/s
        times = {i: float("inf") for i in ids}
        for _ in range(rounds):
            for i in ids:
                t0 = time.perf_counter()
                lib.tune_run(i, ptr(inp), ptr(out), ptr(packs[i]), ptr(bias), ptr(res), reps, threads)
                times[i] = min(times[i], (time.perf_counter() - t0) / reps)
        i = min(ids, key=times.get)
        best[cname] = (times[i], jobs[i][1])
    return {k: v[1] for k, v in best.items()}


def _aligned(a: np.ndarray) -> np.ndarray:
    out = aligned_empty(max(16, a.size))
    out[: a.size] = a.ravel()
    return out


def _renamed(s: Step, cname: str) -> Step:
    return Step(s.node, s.index, s.kind, cname, s.in_layout, s.out_layout, sparsity=s.sparsity)
