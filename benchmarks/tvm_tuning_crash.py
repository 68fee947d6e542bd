"""Why TVM's MetaSchedule tuning crashes here: the smallest steps that reproduce it.

apache-tvm 0.27.0.post1 (the only release on PyPI for this Python) kills the process with
SIGSEGV in ``tvm::ffi::ToJSONGraph`` whenever a TIR node is serialised to JSON. MetaSchedule
serialises the module it tunes: the ``MutateComputeLocation`` and ``MutateParallel`` mutators
(part of the default llvm mutator set) call ``SaveJSON`` on it when a tuning context is
initialised, so ``tune_relax`` dies before its first trial, whatever the target string (with
or without ``mcpu``, ``num-cores`` 1 or 2), model size or trial count. Leaving those two
mutators out and using an in-memory database moves the crash to the task scheduler's
initialisation, which serialises the workload too. Each step runs in its own process; a step
that prints ``crashed`` reproduces it.

    python benchmarks/tvm_tuning_crash.py [--python PATH]   # an interpreter with apache-tvm
"""

from __future__ import annotations

import argparse
import subprocess
import sys

STEPS = {
    "import and a target": """
import tvm
tvm.target.Target({"kind": "llvm", "num-cores": 2})
""",
    "save_json of a TIR variable": """
import tvm
tvm.ir.save_json(tvm.tirx.Var("x", "int32"))
""",
    "save_json of an integer array (no TIR)": """
import tvm
tvm.ir.load_json(tvm.ir.save_json(tvm.runtime.convert([1, 2])))
""",
    "a tuning context with MutateComputeLocation": """
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
A = te.placeholder((64, 64), name="A")
C = te.compute((64, 64), lambda i, j: A[i, j] * 2, name="C")
mod = tvm.IRModule({"main": te.create_prim_func([A, C])})
space = ms.space_generator.PostOrderApply(sch_rules=[], postprocs=[],
                                          mutator_probs={ms.mutator.MutateComputeLocation(): 1.0})
ms.TuneContext(mod=mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}),
               space_generator=space, search_strategy="replay-trace", num_threads=1)
""",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter that has apache-tvm installed")
    args = ap.parse_args()
    for name, code in STEPS.items():
        proc = subprocess.run([args.python, "-c", code], capture_output=True, text=True, timeout=600)
        what = "ok" if proc.returncode == 0 else ("crashed (SIGSEGV)" if proc.returncode in (-11, 139)
                                                  else f"failed: {proc.stderr.strip().splitlines()[-1:]}")
        print(f"{name}: {what}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
