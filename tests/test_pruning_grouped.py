"""1x1 convs pruned in virtual 3x3 kernels (groups of 9 input channels), checked against plain
loops over filters and groups: projections, layer selection and budget, the spec and its
validation, describe, extraction, and ADMM + masked retraining on zoo models."""

import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import patsparse as ps
from patsparse import models
from patsparse.data import get_loaders
from patsparse.errors import FormatError, InputError
from patsparse.pruning import ADMMState, PruneRecipe, plan_layers, select_layers, spec_masks
from patsparse.pruning.extraction import extract_library
from patsparse.pruning.layers import conv_layers
from patsparse.pruning.projection import project_connectivity, project_model, project_pattern
from patsparse.pruning.spec import check_weights, spec_from_json, spec_to_json
from test_pruning_projection import ref_connectivity


def groups_of(i):
    """The definition: group g holds input channels [9g, min(9g + 9, I))."""
    return [list(range(s, min(s + 9, i))) for s in range(0, i, 9)]


def ref_grouped_pattern(w, lib):
    """One virtual kernel at a time: the mask (cut to the group's length) keeping the most
    energy, first index on ties."""
    o_n, i_n = w.shape[:2]
    out = torch.zeros_like(w)
    ids = torch.zeros(o_n, len(groups_of(i_n)), dtype=torch.long)
    flat = lib.reshape(-1, 9)
    for o in range(o_n):
        for g, chans in enumerate(groups_of(i_n)):
            k = w[o, chans, 0, 0]
            scores = [float(((k * flat[j, :len(chans)]) ** 2).sum()) for j in range(len(flat))]
            best = max(range(len(flat)), key=lambda j: (scores[j], -j))
            ids[o, g] = best
            out[o, chans, 0, 0] = k * flat[best, :len(chans)]
    return out, ids


def ref_grouped_connectivity(w, k, balanced):
    """Groups copied one by one into zero-padded 3x3 kernels, then the 3x3 reference."""
    o_n, i_n = w.shape[:2]
    virtual = torch.zeros(o_n, len(groups_of(i_n)), 3, 3)
    for o in range(o_n):
        for g, chans in enumerate(groups_of(i_n)):
            virtual[o, g].view(-1)[:len(chans)] = w[o, chans, 0, 0]
    kept = ref_connectivity(virtual, k, balanced)
    out = w.clone()
    for o in range(o_n):
        for g, chans in enumerate(groups_of(i_n)):
            if not kept[o, g]:
                out[o, chans] = 0
    return out, kept


weights_1x1 = st.tuples(st.integers(1, 5), st.integers(9, 40), st.integers(0, 2 ** 31 - 1)).map(
    lambda t: torch.randn(t[0], t[1], 1, 1, generator=torch.Generator().manual_seed(t[2])))


@settings(max_examples=40, deadline=None)
@given(w=weights_1x1, name=st.sampled_from(["phase2", "phase3", "phase1", "candidates"]))
def test_grouped_pattern_projection_matches_reference(w, name):
    lib = ps.pattern_library(name)
    proj, ids = project_pattern(w, lib)
    ref, ref_ids = ref_grouped_pattern(w, lib)
    assert ids.shape == ref_ids.shape == (w.shape[0], -(-w.shape[1] // 9))
    assert torch.allclose(proj, ref)  # continuous random weights: no ties between masks
    assert torch.equal(ids, ref_ids)
    kept = (proj != 0).reshape(w.shape[0], -1)
    assert bool((kept.sum(1) <= 4 * ids.shape[1]).all())


@settings(max_examples=40, deadline=None)
@given(w=weights_1x1, frac=st.floats(0.05, 1.0), balanced=st.booleans())
def test_grouped_connectivity_matches_reference(w, frac, balanced):
    groups = -(-w.shape[1] // 9)
    proj, kept = project_connectivity(w, frac, balanced, grouped=True)
    k = max(1, round(frac * (groups if balanced else w.shape[0] * groups)))
    ref, ref_kept = ref_grouped_connectivity(w, k, balanced)
    assert torch.equal(kept, ref_kept) and torch.equal(proj, ref)


def test_short_group_cut_masks_and_ties():
    """I = 11: the last group has 2 channels and sees every mask cut to positions 0..1; an
    all-zero group takes id 0, like an all-zero 3x3 kernel."""
    lib = ps.pattern_library("phase2")  # only mask 0 (0134) keeps both positions 0 and 1
    w = torch.zeros(2, 11, 1, 1)
    w[0, 9:, 0, 0] = torch.tensor([1.0, 2.0])
    w[1, 10, 0, 0] = 3.0  # position 1: masks 0, 1, 4, 5, 6 keep it; mask 0 wins the tie
    proj, ids = project_pattern(w, lib)
    assert ids.tolist() == [[0, 0], [0, 0]]
    assert torch.equal(proj, w)  # every non-zero sits inside the chosen cut mask


def test_projection_rejects_too_few_channels_and_bad_shapes():
    with pytest.raises(InputError, match="at least 9 input channels"):
        project_pattern(torch.randn(4, 8, 1, 1))
    with pytest.raises(InputError, match="grouped=True"):
        project_connectivity(torch.randn(4, 16, 3, 3), 0.5, grouped=True)
    with pytest.raises(InputError, match=r"\(O, I, 1, 1\)"):
        project_pattern(torch.randn(4, 16, 5, 5))


class Net(nn.Module):
    """3x3 convs, a 1x1 conv with too few channels, a grouped 1x1 conv, two groupable 1x1 convs
    and a last 1x1 conv that feeds only the classifier head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.narrow = nn.Conv2d(8, 20, 1)            # 8 input channels: no virtual kernel
        self.body = nn.Conv2d(20, 20, 3, padding=1)
        self.split = nn.Conv2d(20, 20, 1, groups=2)  # groups > 1
        self.expand = nn.Conv2d(20, 31, 1)           # 3 groups, the last of 2 channels
        self.project = nn.Conv2d(31, 27, 1)          # 4 groups, the last of 4 channels
        self.last = nn.Conv2d(27, 16, 1)             # feeds only the head: stays dense
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.body(self.narrow(self.stem(x))))
        x = self.last(self.project(self.expand(self.split(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_selection_leaves_ungroupable_1x1_convs_dense_and_says_so():
    m = Net()
    with pytest.warns(UserWarning) as rec:
        chosen = select_layers(m)
    assert [(n, mode) for n, _, mode in chosen] == [
        ("body", "pattern+connectivity"), ("expand", "grouped1x1"), ("project", "grouped1x1")]
    msg = str(rec[0].message)
    assert "narrow (8 input channels, fewer than the 9" in msg and "split (a grouped conv (groups=2)" in msg
    for name, what in (("narrow", "8 input channels"), ("split", "groups=2")):
        with pytest.raises(InputError, match=f"layer '{name}' cannot be pruned in virtual 3x3 kernels: .*{what}"):
            select_layers(m, [name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [n for n, _, _ in select_layers(m, conv1x1="dense")] == ["body"]
    assert [mode for _, _, mode in select_layers(m, ["body", "expand"], conv1x1="connectivity")] == [
        "pattern+connectivity", "connectivity"]


def _classifier_convs_by_dataflow(model):
    """Reference for the classifier rule: 1x1 convs whose output no other conv reads (torch.fx)."""
    gm = fx.symbolic_trace(model)
    convs = {n.target for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d)}
    out = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in convs or gm.get_submodule(node.target).kernel_size != (1, 1):
            continue
        seen, stack, feeds_conv = set(), list(node.users), False
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module" and n.target in convs:
                feeds_conv = True
                break
            stack.extend(n.users)
        if not feeds_conv:
            out.add(node.target)
    return out


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50", "resnet18", "resnet8"])
def test_classifier_rule_is_the_dataflow_rule_on_the_zoo(name):
    m = models.get(name, num_classes=10, in_channels=3, width=0.5, variant="cifar")
    convs = conv_layers(m)
    ones = {n for n, c in convs[1:] if c.kernel_size == (1, 1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # narrow 1x1 convs left dense are not the point here
        selected = {n for n, _, _ in select_layers(m)}
    narrow = {n for n in ones if dict(convs)[n].in_channels < 9}
    assert ones - selected - narrow == _classifier_convs_by_dataflow(m)


def _measured_rate(model, spec):
    mods = dict(model.named_modules())
    dense = sum(mods[n].weight.numel() for n in spec["layers"])
    kept = sum(int(mask.sum()) for mask in spec_masks(spec).values())
    nonzero = sum(int((mods[n].weight != 0).sum()) for n in spec["layers"])
    assert nonzero <= kept
    return dense / kept


@pytest.mark.parametrize("name,width,rate,allocation", [
    ("mobilenet_v2", 0.25, 2.25, "uniform"), ("mobilenet_v2", 0.25, 8.0, "lamp"),
    ("resnet50", 0.125, 2.25, "lamp"), ("resnet50", 0.125, 8.0, "uniform")])
def test_rate_over_every_pruned_weight_is_met_within_two_percent(name, width, rate, allocation):
    torch.manual_seed(0)
    m = models.get(name, num_classes=10, in_channels=1, width=width, variant="cifar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = project_model(m, rate, allocation=allocation)
    assert "grouped1x1" in {e["mode"] for e in spec["layers"].values()}
    assert abs(_measured_rate(m, spec) / rate - 1) <= 0.02
    check_weights(m, spec)
    assert ps.describe(m).pruned_rate == pytest.approx(_measured_rate(m, spec), rel=1e-3)


def test_balanced_grouped_layers_keep_the_same_groups_per_filter():
    torch.manual_seed(0)
    m = models.get("resnet50", num_classes=10, in_channels=1, width=0.125, variant="cifar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = project_model(m, 6.0, balanced=True)
    for e in spec["layers"].values():
        assert len(set((e["kernels"] >= 0).sum(1).tolist())) == 1


def _pruned_net():
    torch.manual_seed(0)
    m = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        project_model(m, 4.0)
    return m


def test_spec_masks_are_the_groups_cut_masks():
    m = _pruned_net()
    spec = m.patsparse_spec
    lib = ps.pattern_library("phase2").reshape(-1, 9)
    for name in ("expand", "project"):
        e = spec["layers"][name]
        assert e["mode"] == "grouped1x1" and tuple(e["kernels"].shape) == (e["shape"][0], -(-e["shape"][1] // 9))
        expected = torch.zeros(e["shape"])
        for o in range(e["shape"][0]):
            for g, chans in enumerate(groups_of(e["shape"][1])):
                if e["kernels"][o, g] >= 0:
                    expected[o, chans, 0, 0] = lib[e["kernels"][o, g], :len(chans)]
        assert torch.equal(spec_masks(spec)[name], expected)
        w = dict(m.named_modules())[name].weight
        assert bool(((w != 0) <= expected.bool()).all())


def test_spec_round_trip_and_validation_on_load(tmp_path):
    m = _pruned_net()
    ps.save(m, tmp_path / "p")
    back = ps.load(tmp_path / "p", model=Net())
    assert back.patsparse_spec["version"] == 2
    for name, e in m.patsparse_spec["layers"].items():
        assert torch.equal(back.patsparse_spec["layers"][name]["kernels"], e["kernels"])
        assert back.patsparse_spec["layers"][name]["mode"] == e["mode"]
    assert torch.equal(back.expand.weight, m.expand.weight)

    meta_path = tmp_path / "p" / "model.json"
    meta = json.loads(meta_path.read_text())

    def load_with(edit, match):
        data = json.loads(json.dumps(meta))
        edit(data["spec"])
        meta_path.write_text(json.dumps(data))
        with pytest.raises(FormatError, match=match):
            ps.load(tmp_path / "p", model=Net())

    ids = m.patsparse_spec["layers"]["project"]["kernels"]
    o, g = [int(t) for t in torch.nonzero(ids >= 0)[0]]

    def other_pattern(s):  # claims a grouping the weights do not follow
        s["layers"]["project"]["kernels"][o][g] = (ids[o, g].item() + 3) % 8

    load_with(other_pattern, rf"layer 'project' group {g} \(filter {o}, input channels {9 * g}\.\.")

    def pruned(s):
        s["layers"]["project"]["kernels"][o][g] = -1

    load_with(pruned, rf"group {g} \(filter {o}.* is pruned in the spec")
    load_with(lambda s: s["layers"]["project"]["kernels"][o].__setitem__(g, 8), r"group .* out of range \[-1, 7\]")
    load_with(lambda s: [row.append(0) for row in s["layers"]["project"]["kernels"]], r"expected \(27, 4\)")
    load_with(lambda s: s["layers"]["body"].__setitem__("mode", "grouped1x1"), "virtual 3x3 kernels need")
    load_with(lambda s: s["layers"]["expand"].__setitem__("mode", "pattern"), "need 3x3 kernels")
    load_with(lambda s: s.__setitem__("version", 1), "unknown mode 'grouped1x1'")
    load_with(lambda s: s.__setitem__("version", 3), "versions")


def test_grouped_spec_requires_a_conv_that_can_be_grouped():
    m = _pruned_net()
    data = spec_to_json(m.patsparse_spec)
    data["layers"]["narrow"] = {"mode": "grouped1x1", "shape": [20, 8, 1, 1], "groups": 1, "kernels": [[0]] * 20}
    with pytest.raises(FormatError, match="layer 'narrow' is grouped1x1 .* at least 9 input channels"):
        spec_from_json(data)


def _ref_group_histogram(model, names):
    """Kept groups per kept-position code, by loops over filters and groups."""
    hist = {}
    for name in names:
        w = dict(model.named_modules())[name].weight.detach()
        for o in range(w.shape[0]):
            for chans in groups_of(w.shape[1]):
                pos = tuple(p for p, c in enumerate(chans) if w[o, c, 0, 0] != 0)
                if pos:
                    hist[pos] = hist.get(pos, 0) + 1
    return hist


def test_describe_counts_groups_as_kernels():
    m = _pruned_net()
    report = ps.describe(m)
    rows = {r.name: r for r in report.layers}
    for name in ("expand", "project"):
        r, w = rows[name], dict(m.named_modules())[name].weight
        groups = -(-w.shape[1] // 9)
        assert (r.kind, r.status, r.kernels) == ("1x1 grouped", "pattern", w.shape[0] * groups)
        assert r.kernels_kept == int((m.patsparse_spec["layers"][name]["kernels"] >= 0).sum())
    assert rows["last"].status == rows["narrow"].status == "dense"
    ref = _ref_group_histogram(m, ["expand", "project"])
    body = (m.body.weight != 0).flatten(2)
    for k in body[body.any(2)]:
        pos = tuple(torch.nonzero(k).flatten().tolist())
        ref[pos] = ref.get(pos, 0) + 1
    got = {}
    for label, n in report.histogram.items():
        digits = label.split("(")[-1].rstrip(")") if "(" in label else label.split()[-1]
        got[tuple(int(c) for c in digits)] = got.get(tuple(int(c) for c in digits), 0) + n
    assert got == ref
    assert "1x1 grouped" in str(report)


def test_admm_state_uses_grouped_projections():
    torch.manual_seed(0)
    m = Net()
    lib = ps.pattern_library("phase2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plans = plan_layers(m, 6.0)
    state = ADMMState(plans, lib, 0.1)
    lv = next(lv for lv in state.layers if lv.plan.name == "project")
    assert lv.plan.grouped and lv.plan.kernels == 27 * 4
    assert torch.equal(lv.z, ref_grouped_pattern(m.project.weight.detach(), lib)[0])
    assert torch.equal(lv.y, ref_grouped_connectivity(m.project.weight.detach(), lv.plan.keep, False)[0])
    assert int(state.pattern_counts(grouped=True).sum()) == 31 * 3 + 27 * 4
    assert int(state.pattern_counts(grouped=False).sum()) == 20 * 20


def test_recipe_conv1x1_knob_is_validated():
    assert PruneRecipe().conv1x1 == "grouped"
    with pytest.raises(InputError, match="former True is 'connectivity'"):
        PruneRecipe(conv1x1=True).validate()


@pytest.fixture(scope="module")
def digits():
    return get_loaders("digits", batch_size=32, subset=128)


def test_extraction_reports_what_the_groups_prefer(digits):
    torch.manual_seed(0)
    m = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = extract_library(m, digits[0], schedule=(4,), start="phase2", admm_iters=1, progress=False)
    step = res.steps[0]
    assert int(step.group_counts.sum()) == 31 * 3 + 27 * 4  # the groups of expand and project
    assert int(step.counts.sum()) == 20 * 20  # the 3x3 kernels of body choose the library
    assert torch.equal(step.kept, torch.argsort(step.counts, descending=True, stable=True)[:4])
    assert "1x1 groups prefer" in res.summary()


def _assert_grouped_invariant(model):
    """Every pruned layer's non-zeros lie inside its spec mask, checked group by group for 1x1
    convs against the library masks cut to each group's length."""
    spec = model.patsparse_spec
    lib = torch.tensor(spec["library"], dtype=torch.float32).reshape(-1, 9)
    mods = dict(model.named_modules())
    grouped = 0
    for name, e in spec["layers"].items():
        w = mods[name].weight.detach()
        if e["mode"] != "grouped1x1":
            continue
        grouped += 1
        for g, chans in enumerate(groups_of(w.shape[1])):
            ids = e["kernels"][:, g]
            allowed = torch.where(ids[:, None] >= 0, lib[ids.clamp(min=0), :len(chans)], 0)
            assert bool(((w[:, chans, 0, 0] != 0) <= allowed.bool()).all()), f"{name} group {g}"
    assert grouped
    check_weights(model, spec)


def _prune_tiny(m, loader):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps.prune(m, loader, progress=False, recipe=PruneRecipe(rate=8, oneshot=False, admm_iters=1, epochs=1, retrain_epochs=1,
                                                               distill=0.0, bn_batches=2))
    _assert_grouped_invariant(m)
    assert abs(_measured_rate(m, m.patsparse_spec) / 8 - 1) <= 0.02


def test_admm_and_masked_retraining_keep_the_grouped_invariant(digits):
    torch.manual_seed(0)
    _prune_tiny(Net(), digits[0])


@pytest.mark.slow
@pytest.mark.parametrize("name,width", [("mobilenet_v2", 0.25), ("resnet50", 0.125)])
def test_zoo_models_keep_the_grouped_invariant_through_prune(name, width, digits):
    torch.manual_seed(0)
    _prune_tiny(models.get(name, num_classes=10, in_channels=1, width=width, variant="cifar"), digits[0])
