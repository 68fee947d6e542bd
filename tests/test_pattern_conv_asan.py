"""Memory safety of the pattern kernels under AddressSanitizer: every layout, alone and in teams.

The kernels are built with -fsanitize=address and run through the same ctypes harness as the
correctness tests, in a child Python with the ASan runtime preloaded (a sanitized shared library
cannot be loaded otherwise), so numpy's buffers, the weights and the scratch arena are all
tracked: a read past SLACK, a partial-sum slice written past its thread's share or a phase copy
overrunning its rows aborts the child with a report.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from patsparse.compiler.target.host import find_compiler

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from test_pattern_conv import assert_close, pattern_weight, reference, run_conv
flags = ("-fsanitize=address", "-fno-omit-frame-pointer")
rng = np.random.default_rng(3)
cases = [({"layout": "rows", "rows": 3, "vecs": 2}, (9, 21), 1), ({"layout": "rows"}, (11, 37), 2),
         ({"layout": "flat", "unroll": 3}, (4, 4), 1), ({"layout": "flat", "pack": 2}, (2, 2), 1),
         ({"layout": "cm"}, (4, 4), 1), ({"layout": "cm", "pack": 2}, (3, 3), 2),
         ({"layout": "ct", "vecs": 2}, (11, 37), 2), ({"layout": "ct", "vecs": 3}, (9, 13), 1),
         ({"layout": "ct", "vecs": 1, "rows": 8}, (19, 21), 1)]
for schedule, hw, stride in cases:
    w = pattern_weight(12, 10, keep=0.5, dense_frac=0.05, small_frac=0.2)
    x = rng.standard_normal((10, *hw)).astype(np.float32)
    r = rng.standard_normal((12, (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1)).astype(np.float32)
    for threads in (0, 3):
        got = run_conv(w, x, stride=stride, act="relu", residual=r, schedule=schedule, vl=8,
                       threads=threads, extra_flags=flags)
        assert_close(got, reference(w, x, stride=stride, act="relu", residual=r))
print("clean")
"""


def test_pattern_layouts_are_memory_safe_under_asan():
    runtime = subprocess.run([find_compiler(), "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not runtime or not Path(runtime).is_file():
        pytest.skip("the C compiler has no AddressSanitizer runtime (libasan.so)")
    env = dict(os.environ, LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr[-3000:]
