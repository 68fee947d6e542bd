"""Apache TVM (Relax): ONNX imported, built for the host CPU; MetaSchedule-tuned within a budget.

Untuned TVM schedules are typically one to two orders of magnitude slower than a tuned build,
so an untuned figure is labelled "untuned" in every table. ``options["tvm_budget"]`` (seconds,
``--tvm-budget``) turns tuning on; MetaSchedule counts trials, not seconds, so the budget is
turned into trials at the rate measured on a first round of trials (it can overrun a little).

Tuning kills the worker in apache-tvm 0.27.0.post1 (the only release on PyPI here): serialising
any TIR node to JSON segfaults (``tvm::ffi::ToJSONGraph``), and MetaSchedule serialises the
module it tunes (the MutateComputeLocation and MutateParallel mutators, the task scheduler).
``benchmarks/tvm_tuning_crash.py`` reproduces it step by step; the harness then reports TVM as
crashed and the other engines go on.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes

TRIALS_PER_ROUND = 32


class Tvm(Engine):
    name, label = "tvm", "Apache TVM (Relax)"
    modules = ("tvm",)
    distribution = "apache-tvm"

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        mod = from_onnx(onnx.load(model.onnx))
        target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                                    "num-cores": threads})
        budget = float(self.options.get("tvm_budget", 0) or 0)
        if budget > 0:
            executable, notes = self._tuned(mod, target, workdir, budget)
        else:
            executable, notes = tvm.compile(mod, target=target), "untuned (no --tvm-budget)"
        lib = workdir / "model.so"
        executable.export_library(str(lib))
        vm = relax.VirtualMachine(executable, tvm.cpu())
        main = vm["main"]
        to_tensor = getattr(tvm.runtime, "tensor", None) or tvm.nd.array

        def run(x: np.ndarray) -> np.ndarray:
            y = main(to_tensor(as_float32(x)))
            return (y if hasattr(y, "numpy") else y[0]).numpy()

        return Runner(run, file_bytes(lib), notes, keep=vm)

    @staticmethod
    def _tuned(mod, target, workdir: Path, budget: float):
        """A first round of trials measures the trial rate; a second spends the rest of the budget."""
        from tvm import relax
        from tvm.s_tir import meta_schedule as ms

        mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.LegalizeOps()(mod)))
        # MetaSchedule's default cost model needs xgboost (a large wheel); without it the search
        # is guided by a random model, which the notes say.
        cost = "xgb" if importlib.util.find_spec("xgboost") else "random"
        db_dir, start = str(workdir / "tuning"), time.monotonic()
        db = ms.relax_integration.tune_relax(mod, {}, target, db_dir, max_trials_global=TRIALS_PER_ROUND,
                                             num_trials_per_iter=TRIALS_PER_ROUND, cost_model=cost)
        per_trial = (time.monotonic() - start) / TRIALS_PER_ROUND
        more = int((budget - (time.monotonic() - start)) / per_trial)
        trials = TRIALS_PER_ROUND
        if more >= TRIALS_PER_ROUND:
            trials += more
            db = ms.relax_integration.tune_relax(mod, {}, target, db_dir, max_trials_global=trials,
                                                 num_trials_per_iter=TRIALS_PER_ROUND, cost_model=cost)
        executable = ms.relax_integration.compile_relax(db, mod, target, params=None)
        return executable, (f"MetaSchedule-tuned: {trials} trials in {time.monotonic() - start:.0f} s"
                            + ("" if cost == "xgb" else ", random cost model (no xgboost)"))


ENGINE = Tvm()
