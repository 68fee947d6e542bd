"""benchmarks/run_all.py: the page is stitched from saved results, with links to other scripts' pages."""


from benchmarks import run_all
from test_bench_report import result

from patsparse.bench import report


def test_stitch_page(tmp_path):
    docs = tmp_path / "docs"
    results = docs / "bench" / "results"
    slow = result(8.0)
    slow.engines[0].median_ms = 3.0  # patsparse slower than ONNX Runtime here
    for r in (result(1.0), slow):
        r.model = f"vgg16_bn-cifar {run_all.rate_name(r.rate)}"
        report.write_result_json(r, results / f"{run_all.config_id('vgg16_bn', 'cifar', r.rate, 1)}.json")
    b8 = result(8.0)
    b8.model, b8.batch = f"vgg16_bn-cifar {run_all.rate_name(8.0)}", 8
    b8.engines[0].median_ms = 4.0  # patsparse: 8 images in 4 ms
    report.write_result_json(b8, results / f"{run_all.config_id('vgg16_bn', 'cifar', 8.0, 8)}.json")
    (docs / "bench" / "layers.md").write_text("## Per-layer kernels\n\nfrom the compiler helper\n")
    args = run_all.parse_args(["--stitch-only", "--out", str(docs / "BENCHMARKS.md")])
    assert run_all.main(["--stitch-only", "--out", str(docs / "BENCHMARKS.md")]) == 0
    page = (docs / "BENCHMARKS.md").read_text()
    # summary first: one line per configuration, with the plot of every speed-up
    assert page.index("## Summary") < page.index("## Every engine, per model")
    assert "| vgg16_bn-cifar 8x | 1 | 3.000 | 2.000 | - | ONNX Runtime 2.000 | **0.67x** |" in page
    assert "![speed-up over the fastest peer](bench/plots/speedup.png)" in page
    assert (docs / "bench" / "plots" / "speedup.png").stat().st_size > 0
    assert "### vgg16_bn-cifar, batch 1" in page and "| patsparse | 1.00 | 3.00 |" in page
    assert "ONNX Runtime 2.00 ms vs patsparse 3.00 ms (patsparse 1.50x slower)" in page
    assert "| **patsparse speed-up over fastest peer** | 2.00x | 0.67x |" in page
    assert "## Throughput: batch 1 and batch 8" in page
    assert "| vgg16_bn-cifar 8x | 333 | 2000 | 500 (onnxruntime) | 4000 (onnxruntime) |" in page
    # engines that did not run are listed once, not per configuration
    assert page.count("**MNN** (crashed: while preparing: worker killed by SIGSEGV): 3 configurations") == 1
    assert "| vgg16_bn-cifar 8x | 1 | 80 | 1.0 | ONNX Runtime | 120 | 3.0 | 3e-07 |" in page
    # other scripts' pages are linked, not inlined: this page is one run
    assert "- [Per-layer kernels](bench/layers.md)" in page and "from the compiler helper" not in page
    assert "commit abc1234" in page
    assert (docs / "bench" / "plots" / "vgg16_bn-cifar-b1.png").stat().st_size > 0
    assert args.stitch_only and run_all.grid(run_all.parse_args(["--quick"])) == [
        ("vgg16_bn", "cifar", 1.0, 1), ("vgg16_bn", "cifar", 8.0, 1)]


def test_standard_grid_and_resume(tmp_path, capsys):
    std = run_all.grid(run_all.parse_args([]))
    assert len(std) == len(set(std)) == 35
    assert std[0] == ("vgg16_bn", "cifar", 1.0, 1) and std[-1] == ("resnet18", "imagenet", 8.0, 8)
    assert {c[0] for c in std} == set(run_all.MODELS) and {c[3] for c in std} == {1, 8}
    assert {c[2] for c in std if c[0] == "mobilenet_v2"} == {1.0}
    assert "tvm" not in run_all.parse_args([]).engines
    sub = run_all.grid(run_all.parse_args(["--models", "resnet18", "--rates", "8"]))
    assert sub == [("resnet18", v, 8.0, b) for v in run_all.VARIANTS for b in run_all.BATCHES]
    assert len(run_all.grid(run_all.parse_args(["--full"]))) == 80
    # --resume: finished configurations are kept and not re-run; results outside the grid go
    results = tmp_path / "results"
    r = result(8.0)
    report.write_result_json(r, results / f"{run_all.config_id('vgg16_bn', 'cifar', 8.0, 1)}.json")
    report.write_result_json(r, results / "stale-config.json")
    args = run_all.parse_args(["--resume", "--models", "vgg16_bn", "--variants", "cifar",
                               "--rates", "8", "--batches", "1"])
    run_all.run_grid(args, results, ["--resume"])
    assert "done in an earlier part of this run" in capsys.readouterr().out
    assert sorted(p.name for p in results.glob("*.json")) == ["vgg16_bn-cifar-r8-b1.json"]
    assert (results / "command.txt").read_text() == "python -m benchmarks.run_all --resume\n"
