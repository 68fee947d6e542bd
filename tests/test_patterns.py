"""Pattern libraries: counts, designed masks, theory identities, JSON round trip, validation."""

import itertools
import json

import pytest
import torch

import patsparse as ps
from patsparse.errors import FormatError, InputError
from patsparse.patterns import library as L
from patsparse.patterns import theory


def test_candidate_counts_and_uniqueness():
    for include_centre, n in ((False, 126), (True, 56)):
        lib = ps.pattern_library("candidates", include_centre=include_centre)
        assert lib.shape == (n, 3, 3)
        assert bool((lib.flatten(1).sum(1) == 4).all())
        assert len(set(L.positions(lib))) == n
        if include_centre:
            assert bool((lib[:, 1, 1] == 1).all())


def test_phase_libraries_exact_masks():
    p2 = ps.pattern_library("phase2")
    assert L.positions(p2) == [(0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8),
                               (1, 3, 4, 5), (1, 3, 4, 7), (1, 4, 5, 7), (3, 4, 5, 7)]
    assert L.positions(ps.pattern_library("phase3")) == L.positions(p2)[4:]
    p1 = ps.pattern_library("phase1")
    assert p1.shape == (12, 3, 3) and L.positions(p1)[:8] == L.positions(p2)
    assert p2.dtype == torch.float32 and set(p2.unique().tolist()) == {0.0, 1.0}


def test_theory_identities_hold_exactly():
    assert theory.check_identities() == {"gaussian": True, "elog": True}
    assert torch.equal(theory.interpolation(theory.gaussian_masks()),
                       torch.tensor([[1., 2, 1], [2, 4, 2], [1, 2, 1]]))
    assert torch.equal(theory.interpolation(theory.elog_masks()), torch.tensor([[0., 3, 0], [3, 4, 3], [0, 3, 0]]))
    # the identities discriminate: swapping one Gaussian mask for an ELoG one breaks the sum
    mixed = torch.cat([theory.gaussian_masks()[:3], theory.elog_masks()[:1]])
    assert not torch.equal(theory.interpolation(mixed), theory.GAUSSIAN_SUM)


def test_plots_write_png(tmp_path):
    theory.plot_identities(tmp_path / "id.png")
    theory.plot_library(ps.pattern_library("phase2"), tmp_path / "lib.png", "phase 2", counts=list(range(8)))
    for f in ("id.png", "lib.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_round_trip_keeps_order(tmp_path):
    lib = ps.pattern_library("candidates")[torch.tensor([5, 99, 3, 17])]
    L.save_library(lib, tmp_path / "lib.json", name="mine")
    back = ps.pattern_library(tmp_path / "lib.json")
    assert torch.equal(back, lib)
    assert json.loads((tmp_path / "lib.json").read_text())["positions"][0] == list(L.positions(lib)[0])


@pytest.mark.parametrize("masks,match", [
    ([[[1, 1, 0], [1, 0, 0], [0, 0, 0]]], "mask 0 has 3 ones"),
    ([[[1, 1, 0], [1, 1, 0], [0, 0, 0]], [[1, 1, 0], [1, 1, 0], [0, 0, 0]]], "mask 1 duplicates mask 0"),
    ([[[1, 1, 0], [1, 1, 0], [0, 0, 0]], [[2, 1, 0], [1, 0, 0], [0, 0, 0]]], "mask 1 has entries other"),
    ([[1, 1, 1, 1, 0, 0, 0, 0, 0]], "expected a \\(K, 3, 3\\)"),
])
def test_bad_libraries_name_the_mask(tmp_path, masks, match):
    (tmp_path / "bad.json").write_text(json.dumps({"masks": masks}))
    with pytest.raises(InputError, match=match):
        ps.pattern_library(tmp_path / "bad.json")


def test_unknown_name_and_corrupt_file(tmp_path):
    with pytest.raises(InputError, match="unknown pattern library"):
        ps.pattern_library("phase9")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        ps.pattern_library(tmp_path / "x.json")
    with pytest.raises(FormatError, match="not found"):
        ps.pattern_library(tmp_path / "missing.json")


def test_positions_inverse_of_masks():
    for combo in itertools.islice(itertools.combinations(range(9), 4), 0, 126, 7):
        assert L.positions(L.masks_from_positions([combo])) == [combo]
