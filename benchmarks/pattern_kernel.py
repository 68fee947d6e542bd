"""One pattern-sparse 3x3 layer timed alone under several schedules: the kernel developer's bench.

The weight is random, pattern-projected (Phase-2 library) and connectivity-pruned to --rate of
the dense 3x3 MACs, as ``BenchModel.from_zoo`` prunes whole models: latency depends only on
which weights are zero. Every schedule is generated, checked against PyTorch, then timed in
interleaved rounds (``patsparse.bench.timing.interleave``; each sample a block of --iters calls
inside one thread team).

The table gives, per schedule, the median and best round, useful GFLOP/s (FLOP per cycle with
``--clock cycles``) and the cost per *kernel-vector*: one pattern kernel applied to one output
vector (VL outputs), the unit of work of the inner loop. With ``--clock cycles --threads 1`` the
figures are user cycles of the one thread doing the work, the steadiest measure on a shared VM.

    python -m benchmarks.pattern_kernel --cin 64 --cout 64 --size 32 --rate 8
    python -m benchmarks.pattern_kernel --cin 64 --cout 128 --size 56 --stride 2 --clock cycles --threads 1
    python -m benchmarks.pattern_kernel --cin 512 --cout 512 --size 4 --schedules '[{}, {"unroll": 2}]'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._clock import CLOCKS, get_clock
from benchmarks._report import md_table, provenance

from patsparse.bench.timing import interleave
from patsparse.compiler.codegen.ctest import KernelRunner, from_layout, layout_buffer, to_layout
from patsparse.compiler.codegen.pattern_conv import gen_pattern_conv, support_c
from patsparse.compiler.target import detect
from patsparse.compiler.layout import Layout
from patsparse.pruning.projection import project_connectivity, project_pattern

PATTERN_RATE = 9 / 4  # what pattern pruning alone gives a 3x3 conv


def pruned_weight(cin: int, cout: int, rate: float, seed: int = 0) -> np.ndarray:
    """A random (cout, cin, 3, 3) weight, Phase-2 patterns, kernels kept to reach ``rate``."""
    if rate < PATTERN_RATE:
        raise SystemExit(f"--rate must be at least {PATTERN_RATE} (pattern pruning alone), got {rate}")
    torch.manual_seed(seed)
    w = torch.nn.init.kaiming_normal_(torch.empty(cout, cin, 3, 3))
    w, _ = project_pattern(w, "phase2")
    w, _ = project_connectivity(w, keep=min(1.0, PATTERN_RATE / rate))
    return w.numpy()


def kernel_vectors(weight: np.ndarray, out: Layout, schedule: dict) -> int:
    """Kernels x output vectors: one kernel applied to one VL-wide output vector."""
    vl, kernels = schedule["vl"], int(np.count_nonzero(np.abs(weight).sum(axis=(2, 3))))
    per_plane = -(-(out.H * out.W) // vl) if schedule["layout"] in ("flat", "cm") else out.H * -(-out.W // vl)
    return kernels * per_plane


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cin", type=int, default=64)
    ap.add_argument("--cout", type=int, default=64)
    ap.add_argument("--size", type=int, default=32, help="input height = width")
    ap.add_argument("--stride", type=int, default=1, choices=(1, 2))
    ap.add_argument("--rate", type=float, default=8.0, help="3x3 MAC rate (2.25 = pattern only)")
    ap.add_argument("--schedules", default="[{}]",
                    help="JSON list of schedule overrides ({} = the untuned default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=5, help="calls per round")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    args = ap.parse_args(argv)
    if args.clock != "wall" and args.threads != 1:
        ap.error(f"--clock {args.clock} needs --threads 1 (it measures one thread's work)")
    # torch (imported above) brings its own libgomp.so.1, which the kernels then share and which
    # read OMP_NUM_THREADS when torch loaded: setting the variable here changed nothing, and
    # --threads 1 ran on every core. The team size of this thread's next parallel regions is set
    # through that runtime instead (torch.set_num_threads calls omp_set_num_threads).
    torch.set_num_threads(args.threads)
    clock = get_clock(args.clock)
    try:
        schedules = json.loads(args.schedules)
        assert isinstance(schedules, list) and all(isinstance(s, dict) for s in schedules)
    except (ValueError, AssertionError):
        ap.error(f"--schedules must be a JSON list of objects, got {args.schedules!r}")

    w = pruned_weight(args.cin, args.cout, args.rate)
    ho = (args.size - 1) // args.stride + 1
    inp, out = Layout(args.cin, args.size, args.size), Layout(args.cout, ho, ho)
    x = np.random.default_rng(1).standard_normal((args.cin, args.size, args.size)).astype(np.float32)
    bias = np.random.default_rng(2).standard_normal(args.cout).astype(np.float32)
    want = F.relu(F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(bias),
                           stride=args.stride, padding=1))[0].numpy()
    runs = []
    for sched in schedules:
        k = gen_pattern_conv("L", w, stride=args.stride, padding=1, in_layout=inp, out_layout=out,
                             act="relu", schedule=sched, target=detect())
        runner = KernelRunner(replace(k, code=support_c(k.target) + k.code))
        bufs = (to_layout(x, inp), layout_buffer(out), runner.pack(w), bias)
        runner(*bufs)
        err = np.abs(from_layout(bufs[1], out) - want).max() / max(1.0, np.abs(want).max())
        if not err <= 1e-4:
            raise SystemExit(f"schedule {k.schedule}: wrong result (relative error {err:.1e})")
        runs.append((k, runner, bufs))
    # one sample = one round's block of --iters calls inside one thread team, per call
    samples = interleave({i: lambda r=r: r[1].time(*r[2], iters=args.iters) for i, r in enumerate(runs)},
                         args.rounds, warmup=0, clock=clock)

    unit = "cycles" if args.clock == "cycles" else "us"
    scale = 1e9 if args.clock == "cycles" else 1e6  # the cycle clock counts in units of 1e9
    rows = []
    for i, (k, _, _) in enumerate(runs):
        times = [t / args.iters for t in samples[i]]
        med, best = statistics.median(times), min(times)
        kv = kernel_vectors(w, out, k.schedule)
        per_kv = f"{med * 1e9 / kv:.1f} cycles" if args.clock == "cycles" else f"{med * 1e9 / kv:.2f} ns"
        rate = k.flops / med / 1e9
        rows.append([json.dumps({a: b for a, b in k.schedule.items() if a != "vl"}), f"{med * scale:.1f}",
                     f"{best * scale:.1f}", f"{rate:.2f}" if args.clock == "cycles" else f"{rate:.1f}",
                     str(kv), per_kv])
    flop_unit = "FLOP/cycle" if args.clock == "cycles" else "GF/s"
    print(f"## Pattern kernel {args.cin}->{args.cout} @{args.size}x{args.size}/{args.stride}, "
          f"rate {args.rate:g}x\n\n" + "\n".join(provenance(__file__, argv)) + "\n"
          f"- {args.threads} thread(s), clock {args.clock} "
          f"({CLOCKS[args.clock]}), {args.rounds} rounds of {args.iters} calls\n")
    print(md_table(["schedule", f"median {unit}", f"best {unit}", f"useful {flop_unit}",
                    "kernel-vectors", "per kernel-vector"], rows))


if __name__ == "__main__":
    main()
