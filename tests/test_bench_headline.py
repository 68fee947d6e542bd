"""benchmarks/headline.py: argument checks that fail before any data is loaded."""

import pytest

from benchmarks import headline


def test_needs_a_model_pair_or_a_grid_row(capsys):
    with pytest.raises(SystemExit):
        headline.main([])
    assert "give either --pruned and --parent, or --grid" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="MODEL/seedN/ROW"):
        headline.main(["--grid", "vgg16_bn/pc-8x"])
