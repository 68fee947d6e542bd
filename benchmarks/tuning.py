"""Does ``compile(..., tune=True)`` pay? The same model built untuned and tuned, timed in
alternating blocks of calls in one process (so machine drift hits both), medians.

    python benchmarks/tuning.py [--model vgg16_bn] [--variant cifar] [--rate 8]

Prints one line: both medians, both compile times and the tuned/untuned speed-up. The tuner
times each layer alone; this checks whether its picks also win inside the whole model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import add_zoo_args  # noqa: E402

import patsparse as ps  # noqa: E402
from patsparse.bench.model import BenchModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_zoo_args(ap, rate=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=int, default=8)
    args = ap.parse_args()
    bm = BenchModel.from_zoo(args.model, rate=None if args.rate == 1 else args.rate, variant=args.variant)
    x = torch.randn(1, *bm.input_shape)
    builds, seconds = {}, {}
    for name, tune in (("untuned", False), ("tuned", True)):
        t0 = time.perf_counter()
        builds[name] = ps.compile(bm.module, x, threads=args.threads, tune=tune)
        seconds[name] = time.perf_counter() - t0
    xn = x.numpy()
    for cm in builds.values():
        for _ in range(10):
            cm.run_numpy(xn)
    times: dict[str, list[float]] = {name: [] for name in builds}
    for r in range(args.rounds):
        for name in (list(builds) if r % 2 == 0 else list(builds)[::-1]):
            for _ in range(args.block):
                t0 = time.perf_counter()
                builds[name].run_numpy(xn)
                times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    print(f"{bm.name}: untuned {med['untuned']:.2f} ms (compile {seconds['untuned']:.0f} s), tuned "
          f"{med['tuned']:.2f} ms (compile {seconds['tuned']:.0f} s), tuned/untuned speed-up "
          f"{med['untuned'] / med['tuned']:.2f}x")


if __name__ == "__main__":
    main()
