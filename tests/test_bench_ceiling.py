"""benchmarks/ceiling.py: the machine-ceiling loops build, run and render (no timing asserted)."""

from benchmark_scripts import load_benchmark


def test_ceiling_measures_and_renders(tmp_path):
    ceiling = load_benchmark("ceiling")
    res = ceiling.measure(threads=2, runs=1, n=20_000, sizes_kb=(16, 64))
    assert res["vl"] in (4, 8, 16)
    assert sorted(res["rates"]) == sorted(["peak_1", "peak_2", "l1_aligned", "l1_offset1", "bw_16", "bw_64"])
    assert all(len(v) == 1 and v[0] > 0 for v in res["rates"].values())
    text = ceiling.report(res, 2, ["--threads", "2"])
    assert "FMA, registers only, 2 threads" in text and "| 64 KB |" in text
    assert "python benchmarks/ceiling.py --threads 2" in text
