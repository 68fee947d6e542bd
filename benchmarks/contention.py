"""How a compiled model's latency holds up when another process keeps a core busy.

A user's server or laptop is rarely idle. With OpenMP-style spinning waits, a thread that waits
for a descheduled partner burns the time slice the partner needs, and latency outliers grow by
orders of magnitude; patsparse's one-team forward pass spins briefly, then yields (see
docs/COMPILER.md). This script measures it: the same compiled model, alone and next to a busy
process pinned to nothing (the scheduler places it), with OpenMP's default and passive waits,
each configuration in a fresh process (OpenMP reads its wait policy once, at start-up). Calls
are paced ``--gap-ms`` apart (a video loop's wait for its next frame; 0: back to back), so the
threads go idle between calls; the bar is p99 <= 2x p50.

    python -m benchmarks.contention [--model vgg16_bn] [--rate 2.25] [--calls 200] [--gap-ms 2]

Writes docs/bench/contention.md (stitched into docs/BENCHMARKS.md by run_all.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._report import REPO, add_zoo_args, provenance

# Runs in a child process: compile, warm up, time `calls` calls, print JSON.
CHILD = r"""
import json, sys
import numpy as np
from patsparse.bench.model import BenchModel
from patsparse.bench.timing import time_calls
import patsparse as ps
import torch
name, variant, rate, calls, gap = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
bm = BenchModel.from_zoo(name, rate=None if rate == 1.0 else rate, variant=variant)
x = np.random.default_rng(0).standard_normal((1, *bm.input_shape)).astype(np.float32)
cm = ps.compile(bm.module, torch.from_numpy(x), threads=2)
ts = np.array(time_calls(lambda: cm.run_numpy(x), calls, warmup=20, gap=gap / 1e3)) * 1e3
print(json.dumps({"median": float(np.median(ts)), "p90": float(np.percentile(ts, 90)),
                  "p99": float(np.percentile(ts, 99)), "max": float(ts.max())}))
"""


def measure(args, waits: str, busy: bool) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if waits == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, args.model, args.variant, str(args.rate),
                              str(args.calls), str(args.gap_ms)], env=env, capture_output=True, text=True, check=True)
    finally:
        if hog:
            hog.kill()
            hog.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_zoo_args(ap, rate=2.25)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=2.0, help="sleep after each call (0: back to back)")
    ap.add_argument("--out", default=str(REPO / "docs" / "bench" / "contention.md"))
    args = ap.parse_args()
    lines = ["## Latency next to a busy process (benchmarks/contention.py)", "",
             f"- {args.model} {args.variant}, rate {args.rate:g}, batch 1, 2 threads, {args.calls} calls "
             f"{args.gap_ms:g} ms apart after 20 warm-up calls, each row a fresh process; 'busy': another process spinning on the "
             f"CPU the whole time (`python -c 'while True: pass'`)",
             *provenance(__file__, sys.argv[1:]), "",
             "| OpenMP waits | machine | median ms | p90 ms | p99 ms | max ms | p99 / median |",
             "|---|---|---|---|---|---|---|"]
    for waits in ("default", "passive"):
        for busy in (False, True):
            r = measure(args, waits, busy)
            lines.append(f"| {waits} | {'one core busy' if busy else 'quiet'} | {r['median']:.2f} | "
                         f"{r['p90']:.2f} | {r['p99']:.2f} | {r['max']:.1f} | {r['p99'] / r['median']:.2f} |")
            print(lines[-1], flush=True)
            time.sleep(1)
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
