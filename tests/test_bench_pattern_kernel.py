"""benchmarks/pattern_kernel.py: builds, checks and times one layer per schedule (no speed asserted)."""

import numpy as np
import pytest
from benchmarks import pattern_kernel as pk


def test_pruned_weight_reaches_the_rate():
    w = pk.pruned_weight(32, 16, rate=8.0)
    kernels = np.abs(w).sum(axis=(2, 3)) != 0
    assert (np.count_nonzero(w.reshape(16, 32, 9), axis=2)[kernels] == 4).all()  # Phase-2: 4 taps
    assert w.size / np.count_nonzero(w) == pytest.approx(8.0, rel=0.02)
    with pytest.raises(SystemExit, match="at least 2.25"):
        pk.pruned_weight(8, 8, rate=2.0)


def test_two_schedules_one_table(capsys):
    pk.main(["--cin", "8", "--cout", "8", "--size", "6", "--stride", "2", "--rounds", "1", "--iters", "1",
             "--threads", "1", "--schedules", '[{}, {"order": "ft"}]'])
    out = capsys.readouterr().out
    assert "8->8 @6x6/2" in out
    rows = [line for line in out.splitlines() if line.startswith('| {"layout"')]
    assert len(rows) == 2 and '"order": "ft"' in rows[1]


def test_bad_schedules_are_an_error():
    with pytest.raises(SystemExit):
        pk.main(["--schedules", "{}"])
