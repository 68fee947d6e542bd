"""Batches against PyTorch: the forward pass runs blocks of images layer by layer (graph.py), with
batched kernels (dense implicit GEMM, pattern convs' channel-tile and channel-major layouts)
taking a whole block per call and every other kernel called once per image of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import patsparse as ps
from patsparse.compiler.api import capture
from patsparse.compiler.codegen import graph as graph_module, plan as plan_module
from patsparse.models import get
from patsparse.pruning.projection import project_model
from test_compiler import assert_close, randomize_bn, sparse_opsnet

BATCHES = (1, 2, 3, 8, 11)  # 11: one full block of 8 and a partial one


def _net(name: str, rate: float | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    m = randomize_bn(get(name, num_classes=10, width=0.125 if name == "vgg16" else 0.25, variant="cifar")).eval()
    if rate:
        project_model(m, rate=rate)
    return m


NETS = {"vgg16 dense": ("vgg16", None), "vgg16 8x": ("vgg16", 8.0),
        "resnet18 dense": ("resnet18", None), "mobilenet_v2 dense": ("mobilenet_v2", None)}


@pytest.fixture(scope="module", params=list(NETS))
def compiled(request):
    m = _net(*NETS[request.param])
    cm = ps.compile(m, torch.zeros(1, 3, 32, 32), threads=2)
    return request.param, m, cm


def _check(cm, m, batch: int, seed: int = 0) -> None:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        want = m(x).numpy()
    got = np.asarray(cm(x))
    assert got.shape == want.shape
    assert_close(got, want)


def test_batches_match_torch(compiled):
    name, m, cm = compiled
    assert cm.manifest["images"] == plan_module.MAX_IMAGES  # these nets' slots fit the budget
    batched = [layer for layer in cm.manifest["layers"] if layer["batched"]]
    assert ("pattern_conv" if "8x" in name else "conv2d") in {layer["kernel"] for layer in batched}
    for batch in BATCHES:
        _check(cm, m, batch)


@pytest.fixture(scope="module")
def resnet_8x():
    m = _net("resnet18", 8.0)
    return m, ps.compile(m, torch.zeros(1, 3, 32, 32), threads=2)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_any_batch_matches_torch(resnet_8x, batch, seed):
    m, cm = resnet_8x
    _check(cm, m, batch, seed)


@pytest.mark.parametrize("ratio,shared", [(graph_module.LAYER_MAJOR_RATIO, True), (0, True),
                                          (graph_module.LAYER_MAJOR_RATIO, False)])
def test_blocks_smaller_than_the_batch(monkeypatch, ratio, shared):
    """A block of 3 images: batch 8 is blocks of 3, 3 and 2, through every op OpsNet has; with
    ratio 0 every layer with weights runs layer-major (batched kernels take the block); without
    the shared slot image-major runs keep every tensor in its image's slot."""
    monkeypatch.setattr(plan_module, "MAX_IMAGES", 3)
    monkeypatch.setattr(graph_module, "LAYER_MAJOR_RATIO", ratio)
    if not shared:
        monkeypatch.setattr(plan_module, "has_shared_slot", lambda images, image_floats: False)
    m = sparse_opsnet()
    cm = ps.compile(m, torch.zeros(1, 3, 16, 16), threads=2)
    assert cm.manifest["images"] == 3
    assert ("(shared + " in cm.source) == (shared and ratio != 0)
    if ratio == 0:
        batched = [L["c_name"] for L in cm.manifest["layers"] if L["batched"]]
        assert len(batched) >= 3 and all(f"{c}_nb(ws + " in cm.source for c in batched)
    for batch in (1, 3, 7, 8):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            assert_close(cm(x), m(x))


def test_every_batched_pattern_layout_in_a_model(monkeypatch):
    """The 8x VGG with every layer layer-major: its channel-tile and channel-major layers run
    batched in the model (at this width the default runs them image by image)."""
    monkeypatch.setattr(graph_module, "LAYER_MAJOR_RATIO", 0)
    m = _net("vgg16", 8.0)
    cm = ps.compile(m, torch.zeros(1, 3, 32, 32), threads=2)
    layouts = {L["schedule"]["layout"] for L in cm.manifest["layers"]
               if L["kernel"] == "pattern_conv" and f"{L['c_name']}_nb(ws + " in cm.source}
    assert {"ct", "cm"} <= layouts
    for batch in (2, 11):
        _check(cm, m, batch)


def test_image_major_runs_keep_their_own_tensors_in_one_shared_slot(monkeypatch):
    """A tensor an image-major run both produces and alone reads lives in the shared slot (one
    image's memory, warm across the block's images); tensors crossing into or out of a
    layer-major run, the model's input and output stay in their image's slot."""
    monkeypatch.setattr(graph_module, "LAYER_MAJOR_RATIO", 0.5)  # a mix of both kinds of run
    m = _net("resnet18", 8.0)
    plan = plan_module.plan_graph(capture(m, torch.zeros(1, 3, 32, 32)), threads=2)
    graph_module.generate_kernels(plan)
    graph_module.pack_blob(plan)
    runs = graph_module.segments(plan)
    assert {major for major, _ in runs} == {True, False}
    run = {s.node.name: (i, major) for i, (major, steps) in enumerate(runs) for s in steps}
    shared = graph_module.shared_tensors(plan)
    readers: dict[str, set] = {}
    for s in plan.steps:
        for t in s.node.inputs + ([s.node.residual] if s.node.residual else []):
            readers.setdefault(t, set()).add(run[s.node.name])
    for t, (i, major) in run.items():
        inside = not major and readers.get(t, set()) <= {(i, major)} and t != plan.graph.output
        assert (t in shared) == inside, t
    assert shared and plan.graph.output not in shared
    assert plan.shared_slot and plan.ws_floats == (plan.images + 1) * plan.image_floats
    src = graph_module.emit_model(plan)
    assert "(shared + " in src


class _Island(torch.nn.Module):
    """a -> x -> b -> c, with a's output added to c's when ``skip``: b is the layer-major
    candidate between image-major layers, and the skip passes a tensor across it."""

    def __init__(self, skip: bool):
        super().__init__()
        self.skip = skip
        self.a, self.x = torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 1)
        self.b, self.c = torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 1)

    def forward(self, t):
        a = torch.relu(self.a(t))
        y = self.c(torch.relu(self.b(torch.relu(self.x(a)))))
        return torch.relu(y + a if self.skip else y)


def _island_plan(skip: bool):
    plan = plan_module.plan_graph(capture(_Island(skip).eval(), torch.zeros(1, 3, 8, 8)), threads=2)
    graph_module.generate_kernels(plan)
    graph_module.pack_blob(plan)
    return plan


def test_a_layer_major_island_counts_what_it_pushes_out_of_the_shared_slot(monkeypatch):
    """b alone passes the per-layer rule (weights over the ratio times its input and output),
    but with the skip a's output also crosses it to c: counted, b runs image-major."""
    plan = _island_plan(True)
    b = next(s for s in plan.steps if s.node.name == "b")
    a = next(s for s in plan.steps if s.node.name == "a")
    weights, own = b.b_off - b.w_off, b.in_layout.size + b.out_layout.size
    with_skip = own + plan.layouts[a.node.name].size
    monkeypatch.setattr(graph_module, "LAYER_MAJOR_RATIO", (weights / own + weights / with_skip) / 2)
    assert graph_module.layer_major(b)
    lm = lambda p: {s.node.name for major, run in graph_module.segments(p) if major for s in run}  # noqa: E731
    assert "b" not in lm(plan)
    assert "b" in lm(_island_plan(False))  # nothing crosses it: it stays layer-major


def test_block_is_bounded_by_the_workspace_budget():
    per_image = plan_module.IMAGE_BLOCK_BYTES // 4 // 4 + 1  # 3 slots fit, 4 would overflow the budget
    assert plan_module.image_block(per_image) == 2 and plan_module.has_shared_slot(2, per_image)
    per_image = plan_module.IMAGE_BLOCK_BYTES // 4 // 3 + 1  # 2 slots: two images, nothing shared
    assert plan_module.image_block(per_image) == 2 and not plan_module.has_shared_slot(2, per_image)
    assert plan_module.image_block(plan_module.IMAGE_BLOCK_BYTES) == 1  # one slot always
    assert plan_module.image_block(16) == plan_module.MAX_IMAGES


def test_generic_vectors_batch_matches_torch():
    m = _net("mobilenet_v2", 8.0)
    cm = ps.compile(m, torch.zeros(1, 3, 32, 32), threads=2, target="generic")
    for batch in (1, 9):
        _check(cm, m, batch)
