"""Reports: the table, the speed-up matrix, JSON round trip, bar chart and rate plot."""

from patsparse.bench import report
from patsparse.bench.harness import BenchResult, EngineResult


def result(rate, scale=1.0, with_ours=True):
    engines = [
        EngineResult("onnxruntime", "ONNX Runtime", "ok", median_ms=2.0 * scale, p90_ms=2.4 * scale,
                     max_abs_err=1e-6, rel_err=1e-7, peak_rss_mb=120.0, model_bytes=3 << 20, version="1.2"),
        EngineResult("tvm", "Apache TVM (Relax)", "ok", median_ms=90.0, p90_ms=99.0, max_abs_err=2e-6,
                     rel_err=2e-7, peak_rss_mb=300.0, model_bytes=4 << 20, notes="untuned (no --tvm-budget)"),
        EngineResult("mnn", "MNN", "crashed", reason="while preparing: worker killed by SIGSEGV"),
        EngineResult("litert", "LiteRT", "unavailable", reason="no converter"),
    ]
    if with_ours:
        engines.insert(0, EngineResult("patsparse", "patsparse", "ok", median_ms=1.0 / rate, p90_ms=1.2 / rate,
                                       max_abs_err=3e-6, rel_err=3e-7, peak_rss_mb=80.0, model_bytes=1 << 20))
    return BenchResult(model=f"vgg {rate}x", input_shape=[1, 3, 32, 32], batch=1, threads=2, repeats=10,
                       reference="PyTorch eager", tolerance=1e-3, engines=engines,
                       machine={"cpu": "Test CPU", "cores": 2, "isa": ["avx2"], "date": "2026-01-01",
                                "commit": "abc1234", "load_average": [0.1, 0, 0], "load_average_end": [0.2, 0, 0]},
                       rate=rate, macs_dense=1000, macs_sparse=int(1000 / rate))


def test_table_and_matrix():
    r = result(2.0)
    t = report.table(r)
    lines = t.splitlines()
    assert lines[0].startswith("| engine | median ms") and "patsparse speed-up" in lines[0]
    assert lines[2].startswith("| patsparse | 0.500 |")  # fastest first
    assert "| 4.00x |" in lines[3]  # ONNX Runtime is 4x patsparse's latency
    assert "untuned" in t and "**MNN**: crashed: while preparing" in t and "**LiteRT**: unavailable" in t
    m = report.speedup_matrix(r).splitlines()
    assert m[2].startswith("| patsparse | 1.00 | 4.00 | 180.00 |")
    assert "2.00x fewer" in report.header(r) and "commit abc1234" in report.header(r)
    assert "patsparse speed-up" not in report.table(result(2.0, with_ours=False))


def test_json_round_trip(tmp_path):
    r = result(8.0)
    report.write_result_json(r, tmp_path / "r.json")
    assert report.read_result_json(tmp_path / "r.json") == r


def test_plots_written(tmp_path):
    bar = report.bar_chart(result(8.0), tmp_path / "bar.png")
    curve = report.rate_plot([result(1.0), result(2.25), result(8.0, 0.7)], tmp_path / "rate.png", "vgg")
    for p in (bar, curve):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
