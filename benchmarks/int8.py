"""int8 inference: accuracy of the quantised models and speed of their int8 kernels, written to
docs/bench/int8.md.

Accuracy, on the full Fashion-MNIST test set, for the stored accuracy-grid models (a dense and
a pattern-pruned (Phase 2, 2.25x) ResNet-8, benchmarks/accuracy.py): the float model, its int8
simulation (``ps.quantize``, calibrated on training images) and the compiled int8 model, with
the compiled model's agreement with the simulation (top-1, and outputs equal bit for bit).

Per layer (``--profile``): our float and int8 kernels of the same models, each layer's median
time (``CompiledModel.profile``, the two models alternated in rounds, one process) beside what
drives an int8 conv's cost: its plane, its quads (quads.py) and how many kernels share a quad
(each quad is laid out once per position, then read by every kernel on it).

Speed: pattern-projected zoo models at 8x (random weights: latency depends only on which
weights are zero) in the bench harness (one worker process per engine, settled, interleaved
blocks, medians): our float kernels, our int8 kernels, ONNX Runtime float and int8 (static QDQ,
per-channel) and OpenVINO int8 (the same QDQ model). Every int8 engine is calibrated on the same
images; the harness's output check is loose for this run (int8 differs from the float reference
by design; the accuracy section is where int8 correctness is measured).

    python -m benchmarks.int8 --grid docs/bench/accuracy --threads 2,1 --profile
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import _report
from benchmarks.accuracy import load_model

import patsparse as ps
from patsparse.bench.harness import run_bench
from patsparse.bench.model import BenchModel
from patsparse.compiler.int8.quads import conv_quads
from patsparse.data import get_loaders

OUT = _report.BENCH / "int8.md"
ENG = "patsparse.bench.engines"
ENGINES = {"patsparse": "patsparse", "patsparse-int8": f"{ENG}.patsparse_int8_engine:ENGINE",
           "onnxruntime": "onnxruntime", "onnxruntime-int8": f"{ENG}.onnxruntime_int8_engine:ENGINE",
           "openvino-int8": f"{ENG}.openvino_int8_engine:ENGINE"}
BARS = {"dense": 0.3, "pattern-phase2": 0.5}  # points of accuracy int8 may lose


def calibration(n: int) -> list[torch.Tensor]:
    """The first ``n`` Fashion-MNIST training images, unaugmented, in batches of 128."""
    train, _ = get_loaders("fashion-mnist", batch_size=128, augment=False)
    out, seen = [], 0
    for x, _ in train:
        out.append(x[: n - seen])
        seen += len(out[-1])
        if seen >= n:
            break
    return out


def accuracy_rows(grid: Path, calib: int, threads: int) -> list[list[str]]:
    _, test = get_loaders("fashion-mnist", batch_size=500)
    cal = calibration(calib)
    rows = []
    for row in BARS:
        model = load_model(grid, "fashion-mnist", "medium", "resnet8", 0, row)
        q = ps.quantize(model, cal, max_batches=None)
        cm = ps.compile(q, cal[0][:1], threads=threads)
        n = fp = sim = comp = agree = exact = 0
        with torch.no_grad():
            for x, y in test:
                yf, ys, yc = model(x), q(x), cm(x)
                n += len(y)
                fp += int((yf.argmax(1) == y).sum())
                sim += int((ys.argmax(1) == y).sum())
                comp += int((yc.argmax(1) == y).sum())
                agree += int((yc.argmax(1) == ys.argmax(1)).sum())
                exact += int((yc == ys).all(dim=1).sum())
        drop = (fp - comp) / n * 100
        rows.append([f"ResNet-8 {row}", f"{fp / n * 100:.2f}", f"{sim / n * 100:.2f}", f"{comp / n * 100:.2f}",
                     f"{drop:+.2f}".replace("+-", "-") + f" (bar {BARS[row]})" + (" ok" if drop <= BARS[row] else " MISSED"),
                     f"{agree / n * 100:.2f}", f"{exact / n * 100:.2f}", ", ".join(q.fallback) or "none"])
        print(f"[int8] {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def _calibration_images(shape: tuple, n: int) -> np.ndarray:
    """The int8 engines' calibration images (random: latency does not depend on them)."""
    return np.random.default_rng(1).standard_normal((n, *shape)).astype(np.float32)


def profile_rows(name: str, rate: float, threads: int, calib: int, rounds: int = 5) -> list[list[str]]:
    """Per layer of zoo model ``name`` at ``rate``: float and int8 medians, their ratio, and the
    int8 conv's plane, channels, quad kind, quads and kernels per quad (times in microseconds)."""
    bm = BenchModel.from_zoo(name, rate=rate, variant="cifar")
    cal = torch.from_numpy(_calibration_images(bm.input_shape, calib))
    q = ps.quantize(bm.module, list(cal.split(64)), max_batches=None)
    x = bm.example(1)
    fast = {"fp32": ps.compile(bm.module, torch.from_numpy(x), threads=threads),
            "int8": ps.compile(q, torch.from_numpy(x), threads=threads)}
    runs: dict[str, list] = {k: [] for k in fast}
    for _ in range(rounds):  # alternated, so drift on a shared machine hits both alike
        for k, cm in fast.items():
            runs[k].append({r["name"]: r["ms"] for r in cm.profile(x, repeats=40)})
    ms = {k: {n: float(np.median([r[n] for r in rs])) for n in rs[0]} for k, rs in runs.items()}
    rows = []
    for n in q.graph.nodes:
        shape = f"{n.shape[1]}x{n.shape[2]}" if len(n.shape) == 3 else "-"
        chans, kind, per = "-", "-", "-"
        if n.op == "conv":
            w = n.params["w_q"]
            qd = conv_quads(w)
            chans, kind = f"{w.shape[1]}->{w.shape[0]}", f"{qd.kind} {len(qd.entries)}"
            per = f"{len(qd.group) / max(1, len(qd.entries)):.1f}"
        f32, i8 = ms["fp32"].get(n.name), ms["int8"][n.name]
        rows.append([n.name, n.op, shape, chans, kind, per, "-" if f32 is None else f"{f32 * 1e3:.0f}",
                     f"{i8 * 1e3:.0f}", "-" if not f32 or not i8 else f"{f32 / i8:.2f}x"])
    tot = {k: sum(v.values()) for k, v in ms.items()}
    rows.append(["total", "", "", "", "", "", f"{tot['fp32'] * 1e3:.0f}", f"{tot['int8'] * 1e3:.0f}",
                 f"{tot['fp32'] / tot['int8']:.2f}x"])
    return rows


def speed_rows(models: list[str], rate: float, threads: int, repeats: int, calib: int) -> tuple[list, list]:
    rows, raw = [], []
    for name in models:
        bm = BenchModel.from_zoo(name, rate=rate, variant="cifar")
        with tempfile.TemporaryDirectory() as d:
            cal = Path(d) / "calibration.npy"
            np.save(cal, _calibration_images(bm.input_shape, calib))
            res = run_bench(bm, list(ENGINES.values()), threads=threads, repeats=repeats, tolerance=10.0,
                            options={"int8_calibration": str(cal)},
                            log=lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
        ms = {k: e.median_ms for k, e in zip(ENGINES, res.engines) if e.status == "ok"}
        why = {k: f"{e.status}: {e.reason}" for k, e in zip(ENGINES, res.engines) if e.status != "ok"}
        ours = ms.get("patsparse-int8")

        def ratio(other: str) -> str:
            return f"{ms[other] / ours:.2f}x" if ours and other in ms else "n/a"

        rows.append([bm.name] + [f"{ms[k]:.3f}" if k in ms else why.get(k, "n/a")[:60] for k in ENGINES]
                    + [ratio("patsparse"), ratio("onnxruntime-int8"), ratio("openvino-int8")])
        raw.append(res.machine)
    return rows, raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=Path, default=_report.BENCH / "accuracy",
                    help="the accuracy grid's --out (holding fashion-mnist/medium/resnet8/seed0)")
    ap.add_argument("--models", default="vgg16,resnet18", help="zoo models timed at --rate")
    ap.add_argument("--rate", type=float, default=8.0)
    ap.add_argument("--threads", default="2,1", help="thread counts timed, comma-separated (one table each)")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--calibration", type=int, default=512, help="calibration images")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--profile", action="store_true", help="add per-layer float vs int8 tables (at the last --threads)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    torch.set_num_threads(threads[0])

    parts = ["# int8 inference", "", *_report.provenance(__file__, sys.argv[1:] if argv is None else argv), ""]
    if not args.skip_accuracy:
        acc = accuracy_rows(args.grid, args.calibration, threads[0])
        parts += ["## Accuracy (Fashion-MNIST test set, 10,000 images)", "",
                  f"Calibration: the first {args.calibration} training images (HistogramObserver). "
                  "Top-1 accuracy in percent; `drop` is float minus compiled int8, in points.", "",
                  _report.md_table(["model", "float", "int8 simulated", "int8 compiled", "drop", "top-1 agreement "
                                    "compiled vs simulated", "outputs bit-equal", "float fallback"], acc), ""]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for nt in threads:
        speed, machines = speed_rows(models, args.rate, nt, args.repeats, args.calibration)
        loads = ", ".join(str(m.get("load_average")) for m in machines)
        parts += [f"## Speed at {args.rate:g}x (batch 1, {nt} thread{'s' if nt > 1 else ''}, median ms)", "",
                  "One worker process per engine, engines interleaved in blocks, each block after a short "
                  "settle and one untimed call (patsparse.bench.harness). Random weights projected to "
                  f"{args.rate:g}x; int8 engines calibrated on {args.calibration} random images. Ratios: "
                  "the other engine's median over patsparse int8's (above 1: int8 kernels faster). "
                  f"Load average at the start of each run: {loads}: a shared machine, so these are "
                  "contended timings; compare the ratios, not the milliseconds.", "",
                  _report.md_table(["model", *ENGINES, "vs our fp32 (bar 1.5x)", "vs ORT int8 (bar 2.5x)",
                                    "vs OpenVINO int8"], speed), ""]
    for name in models if args.profile else ():
        parts += [f"## Per layer: {name} at {args.rate:g}x, {threads[-1]} thread{'s' if threads[-1] > 1 else ''} "
                  "(median microseconds)", "",
                  "Float and int8 kernels of the same model, alternated in rounds in one process "
                  "(`CompiledModel.profile`). `quads`: how an int8 conv forms its 4-way dot products and how "
                  "many quads it lays out per output position; `kernels/quad`: how many kernels read each "
                  "laid-out quad (the fewer, the more the layout pass weighs against the dot products).", "",
                  _report.md_table(["layer", "op", "plane", "channels", "quads", "kernels/quad", "fp32 us",
                                    "int8 us", "fp32 / int8"],
                                   profile_rows(name, args.rate, threads[-1], args.calibration)), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts) + "\n")
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
