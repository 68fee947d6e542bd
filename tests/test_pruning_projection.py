"""Projections and layer planning, checked against slow reference loops on random weights."""

from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import patsparse as ps
from patsparse.errors import InputError
from patsparse.pruning.layers import plan_layers, select_layers
from patsparse.pruning.projection import project_connectivity, project_model, project_pattern


def ref_project_pattern(w, lib):
    """One kernel at a time, the definition: keep the mask preserving the largest squared norm."""
    out = torch.zeros_like(w)
    ids = torch.zeros(w.shape[:2], dtype=torch.long)
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            k = w[o, i]
            scores = [float(((k * m) ** 2).sum()) for m in lib]
            best = max(range(len(lib)), key=lambda j: (scores[j], -j))
            ids[o, i] = best
            out[o, i] = k * lib[best]
    return out, ids


weights = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2 ** 31 - 1)).map(
    lambda t: torch.randn(t[0], t[1], 3, 3, generator=torch.Generator().manual_seed(t[2])))


@settings(max_examples=25, deadline=None)
@given(w=weights, name=st.sampled_from(["phase2", "phase3", "phase1", "candidates"]))
def test_pattern_projection_matches_reference(w, name):
    lib = ps.pattern_library(name)
    proj, ids = project_pattern(w, lib)
    ref, ref_ids = ref_project_pattern(w, lib)
    # the kept energy must be maximal (ids may differ only on exact float ties)
    kept = (proj ** 2).flatten(2).sum(2)
    ref_kept = (ref ** 2).flatten(2).sum(2)
    assert torch.allclose(kept, ref_kept, rtol=1e-5, atol=1e-6)
    assert torch.equal(proj, w * lib[ids])
    # ids agree except where two patterns keep exactly the same energy (a float tie)
    tie = (ids != ref_ids)
    if bool(tie.any()):
        scores = (w[tie] ** 2).flatten(1) @ lib.flatten(1).T
        assert torch.allclose(scores.gather(1, ids[tie][:, None]), scores.gather(1, ref_ids[tie][:, None]))


def ref_connectivity(w, k, balanced):
    norms = [[float(w[o, i].norm()) for i in range(w.shape[1])] for o in range(w.shape[0])]
    kept = torch.zeros(w.shape[:2], dtype=torch.bool)
    if balanced:
        for o in range(w.shape[0]):
            for i in sorted(range(w.shape[1]), key=lambda i: -norms[o][i])[:k]:
                kept[o, i] = True
    else:
        flat = sorted(((o, i) for o in range(w.shape[0]) for i in range(w.shape[1])), key=lambda t: -norms[t[0]][t[1]])
        for o, i in flat[:k]:
            kept[o, i] = True
    return kept


@settings(max_examples=25, deadline=None)
@given(w=weights, frac=st.floats(0.05, 1.0), balanced=st.booleans())
def test_connectivity_projection_matches_reference(w, frac, balanced):
    proj, kept = project_connectivity(w, frac, balanced)
    k = max(1, round(frac * (w.shape[1] if balanced else w.numel() // 9)))
    assert torch.equal(kept, ref_connectivity(w, k, balanced))  # continuous weights: no ties
    assert torch.equal(proj, w * kept[:, :, None, None])
    if balanced:
        assert bool((kept.sum(1) == k).all())


def test_connectivity_int_count_and_bad_keep():
    w = torch.randn(4, 8, 3, 3)
    assert int(project_connectivity(w, 5)[1].sum()) == 5
    assert bool((project_connectivity(w, 8, balanced=True)[1].sum(1) == 2).all())
    for bad in (0, 33, 0.0, 1.5, True, "half"):
        with pytest.raises(InputError):
            project_connectivity(w, bad)


def test_projection_is_vectorised_on_a_large_layer():
    """A VGG-16-sized layer (512x512 kernels) with 126 candidates: no loop over kernels, counted
    in Python function calls (a count, not a time, so a busy machine cannot fail it)."""
    import sys

    w = torch.randn(512, 512, 3, 3)
    lib = ps.pattern_library("candidates")
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(count)
    try:
        proj, ids = project_pattern(w, lib)
    finally:
        sys.setprofile(None)
    assert calls < 512 * 512 // 10
    assert bool(((proj != 0).flatten(2).sum(2) == 4).all())


def test_project_pattern_rejects_bad_weights():
    with pytest.raises(InputError, match="\\(O, I, 3, 3\\)"):
        project_pattern(torch.randn(4, 4, 5, 5))
    w = torch.randn(2, 2, 3, 3)
    w[1, 1, 0, 0] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        project_pattern(w)


def net():
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Conv2d(32, 32, 3, groups=32),
                         nn.Conv2d(32, 48, 3), nn.Conv2d(48, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, 10))


@pytest.mark.parametrize("rate", [2.25, 4.0, 8.0, 12.0])
@pytest.mark.parametrize("balanced", [False, True])
def test_project_model_meets_rate_and_patterns(rate, balanced):
    torch.manual_seed(0)
    m = net()
    spec = project_model(m, rate, balanced=balanced)
    assert list(spec["layers"]) == ["2", "3", "4"]  # first conv dense, 1x1 untouched by default
    report = ps.describe(m)
    assert abs(report.conv3x3_rate - rate) / rate < (0.02 if not balanced else 0.1)
    lib = ps.pattern_library("phase2")
    for name, e in spec["layers"].items():
        w = dict(m.named_modules())[name].weight
        nz = (w != 0).flatten(2)
        ids = e["kernels"]
        assert bool((nz[ids < 0].sum(1) == 0).all())
        assert bool((nz[ids >= 0] <= lib.flatten(1)[ids[ids >= 0]].bool()).all())
        if balanced and e["mode"] == "pattern+connectivity":
            assert len(set((ids >= 0).sum(1).tolist())) == 1
    assert spec["layers"]["3"]["mode"] == "pattern" and bool((spec["layers"]["3"]["kernels"] >= 0).all())
    assert m.patsparse_spec is spec


def test_layer_selection_rules_and_errors():
    m = net()
    # "5" is the model's last conv and 1x1: it feeds only the classifier head, so it stays dense
    assert [(n, mode) for n, _, mode in select_layers(m)] == [
        ("2", "pattern+connectivity"), ("3", "pattern"), ("4", "pattern+connectivity")]
    assert [(n, mode) for n, _, mode in select_layers(m, ["4", "5"], conv1x1="connectivity")] == [
        ("4", "pattern+connectivity"), ("5", "connectivity")]
    assert [mode for _, _, mode in select_layers(m, ["5"])] == ["grouped1x1"]
    assert [n for n, _, _ in select_layers(m, ["0", "4"])] == ["0", "4"]
    with pytest.raises(InputError, match="not a Conv2d"):
        select_layers(m, ["nope"])
    with pytest.raises(InputError, match="conv1x1='dense'"):
        select_layers(m, ["5"], conv1x1="dense")
    with pytest.raises(InputError, match="conv1x1 must be one of"):
        select_layers(m, conv1x1=True)
    with pytest.raises(InputError, match="no prunable 3x3 conv or groupable 1x1 conv"):
        select_layers(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1)))
    with pytest.raises(InputError, match="no prunable 3x3 conv or groupable 1x1 conv"):
        plan_layers(nn.Sequential(nn.Linear(3, 3)), 8)
    with pytest.raises(InputError, match="must be >= 2.25"):
        plan_layers(m, 2.0)
    with pytest.raises(InputError, match="cannot be reached"):
        plan_layers(m, 1e6)
    with pytest.raises(InputError, match="depthwise"):
        plan_layers(m, 8, layers=["3"])
    # the rate counts every pruned weight: a connectivity-only 1x1 kernel keeps its one weight
    plans = plan_layers(m, 8, layers=["2", "4", "5"], conv1x1="connectivity")
    assert plans[-1].mode == "connectivity"
    dense = sum(p.module.weight.numel() for p in plans)
    kept = sum(p.keep * (4 if p.mode != "connectivity" else 1) for p in plans)
    assert abs(dense / kept / 8 - 1) <= 0.02


def test_depthwise_only_model_reaches_rate_through_its_1x1_convs():
    """MobileNet-V2: all pruned 3x3 convs are depthwise (2.25x), so rate 8 comes from the 1x1
    convs, pruned in virtual 3x3 kernels by default, and counts over depthwise + 1x1 convs."""
    from patsparse import models

    for conv1x1, mode in (("grouped", "grouped1x1"), ("connectivity", "connectivity")):
        m = models.get("mobilenet_v2", num_classes=10, in_channels=3, width=0.25, variant="cifar")
        with pytest.warns(UserWarning, match="fewer than the 9") if conv1x1 == "grouped" else nullcontext():
            spec = project_model(m, 8.0, conv1x1=conv1x1)
        assert {e["mode"] for e in spec["layers"].values()} == {"pattern", mode}
        mods = dict(m.named_modules())
        dense = sum(mods[n].weight.numel() for n in spec["layers"])
        kept = sum(int((mods[n].weight != 0).sum()) for n in spec["layers"])
        assert abs(dense / kept - 8.0) / 8.0 < 0.02
        assert ps.describe(m).conv3x3_rate == pytest.approx(2.25)
    with pytest.raises(InputError, match="highest reachable rate"):
        project_model(models.get("mobilenet_v2", num_classes=10, width=0.25, variant="cifar"), 1e5)
    with pytest.raises(InputError, match="depthwise"):
        project_model(models.get("mobilenet_v2", num_classes=10, width=0.25, variant="cifar"), 8.0, conv1x1="dense")
