"""1x1 convs pruned in virtual 3x3 kernels, compiled: the sparsity read from the weights
(compiler/grouped.py), the grouped sparse kernel and the fused expand + depthwise kernel with a
pruned expand (codegen/grouped1x1.py, pw_dw.py) against PyTorch on every vector width, whole
pruned zoo models through the compiler, other targets (portable vectors; aarch64 NEON under
qemu), and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_codegen_dense import _act, check_close, run_kernel
from test_export import build_and_run, check, need_aarch64

import patsparse as ps
from patsparse import models
from patsparse.compiler.codegen.ctest import width_target
from patsparse.compiler.codegen.grouped1x1 import gen_grouped1x1, schedules
from patsparse.compiler.codegen.pw_dw import gen_pw_dw
from patsparse.compiler.grouped import analyse_grouped, grouped_sparsity, virtual_weight
from patsparse.compiler.layout import Layout
from patsparse.compiler.reorder import mask_taps, reorder
from patsparse.compiler.storage import pack as fkw_pack, unpack
from patsparse.compiler.target import generic_vectors
from patsparse.errors import InputError, UnsupportedError
from patsparse.pruning.projection import project_connectivity, project_model, project_pattern


def grouped_weight(g: torch.Generator, O: int, I: int, keep: float = 0.5, dense: float = 0.0,
                   thin: float = 0.1) -> torch.Tensor:
    """A (O, I, 1, 1) weight pruned in virtual kernels: library patterns, ``keep`` of the groups
    kept, then a share ``dense`` of the kept kernels made dense (all 9 channels) and a share
    ``thin`` left with a single non-zero (the kernel joins a 4-mask that covers it)."""
    w = torch.randn(O, I, 1, 1, generator=g) / I ** 0.5
    full = w.clone()
    w, _ = project_pattern(w, "phase2")
    w, _ = project_connectivity(w, max(1, round(keep * O * -(-I // 9))), grouped=True)
    rows = w.reshape(O, I)
    for o in range(O):
        for s in range(0, I, 9):
            if not rows[o, s:s + 9].any():
                continue
            u = float(torch.rand((), generator=g))
            if u < dense:
                rows[o, s:s + 9] = full.reshape(O, I)[o, s:s + 9]
            elif u < dense + thin:
                nz = rows[o, s:s + 9].nonzero().ravel()
                rows[o, s + nz[1:]] = 0.0
    return rows.reshape(O, I, 1, 1)


def grouped_case(*, I, O, H, W, stride=1, pin=0, pout=1, act="relu", residual=False, vl=16,
                 schedule=None, keep=0.5, dense=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(I, H, W, generator=g)
    w = grouped_weight(g, O, I, keep, dense)
    b = torch.randn(O, generator=g)
    y = F.conv2d(x[None], w, b, stride=stride)[0]
    r = torch.randn(y.shape, generator=g) if residual else None
    want = _act(y + r if residual else y, act)
    Lin, Lout = Layout(I, H, W, pin), Layout(O, *y.shape[1:], pout)
    kern = gen_grouped1x1("gk", w.numpy(), stride=stride, in_layout=Lin, out_layout=Lout, act=act,
                          has_residual=residual, target=width_target(vl), schedule=schedule)
    sp = analyse_grouped(w.numpy())
    assert kern.flops == 2 * int(sp.taps_per_kernel().sum()) * y.shape[1] * y.shape[2]
    got = run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout, r.numpy() if residual else None)
    check_close(got, want)
    return kern


@pytest.mark.parametrize("vl", [4, 8, 16])
@pytest.mark.parametrize("stride", [1, 2])
def test_mobilenet_project_shape(vl, stride):
    """A project conv 144 -> 24 (16 full groups) on an odd 29x37 plane, with a residual."""
    grouped_case(I=144, O=24, H=29, W=37, stride=stride, residual=True, act="none", vl=vl)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(I=st.integers(9, 40), O=st.integers(1, 20), H=st.integers(1, 12), W=st.integers(1, 40),
       stride=st.integers(1, 2), pin=st.integers(0, 2), pout=st.integers(0, 2),
       act=st.sampled_from(["none", "relu", "relu6"]), residual=st.booleans(), vl=st.sampled_from([4, 8, 16]),
       nv=st.integers(1, 6), compact=st.booleans(), gb=st.integers(1, 3), fb=st.integers(1, 4),
       keep=st.sampled_from([0.1, 0.5, 1.0]), dense=st.sampled_from([0.0, 0.3]), reg=st.booleans())
def test_grouped_matches_torch(I, O, H, W, stride, pin, pout, act, residual, vl, nv, compact, gb, fb, keep, dense,
                               reg):
    """Any channel counts (short last groups included), plane, stride, halo, epilogue, tile,
    channel blocks, filter blocks (padded when they do not divide the filters; in the
    register-blocked kernel, up to 20 filters, the last block short), vector width and mix of
    pattern, dense, thin and pruned kernels (a filter that keeps nothing stores its bias); the
    halo stays zero."""
    kern = grouped_case(I=I, O=O, H=H, W=W, stride=stride, pin=pin, pout=pout, act=act, residual=residual, vl=vl,
                        schedule={"nv": nv, "compact": int(compact or stride == 2), "gb": gb,
                                  "fb": 5 * fb if reg else fb, "reg": int(reg)}, keep=keep, dense=dense,
                        seed=I * 131 + O * 7 + H + reg)
    assert kern.schedule.get("reg", 0) == reg and ("register-blocked" in kern.code) == reg


@settings(max_examples=10, deadline=None, derandomize=True)
@given(cin=st.integers(9, 30), C=st.integers(1, 24), stride=st.integers(1, 2), H=st.integers(1, 12),
       W=st.integers(1, 40), vl=st.sampled_from([4, 8, 16]), nv=st.integers(1, 4),
       keep=st.sampled_from([0.2, 0.6]), patterns=st.booleans(), reg=st.booleans())
def test_fused_pruned_expand_matches_torch(cin, C, stride, H, W, vl, nv, keep, patterns, reg):
    """The 1x1 + depthwise kernel with an expand pruned in virtual kernels (the gather or the
    register-blocked kernel), and a depthwise conv dense or in patterns (its kept taps only:
    depthwise.kept_taps)."""
    from patsparse.compiler.codegen.depthwise import kept_taps

    g = torch.Generator().manual_seed(cin * 17 + C)
    x = torch.randn(cin, H, W, generator=g)
    ew, eb = grouped_weight(g, C, cin, keep), torch.randn(C, generator=g)
    dw, db = torch.randn(C, 1, 3, 3, generator=g) / 3, torch.randn(C, generator=g)
    if patterns:
        dw, _ = project_pattern(dw, "phase2")
        dw[0, 0, 1] = 0.0  # one channel thinner
    e = _act(F.conv2d(x[None], ew, eb), "relu6")
    want = _act(F.conv2d(e, dw, db, stride=stride, padding=1, groups=C), "relu6")[0]
    Lin, Lout = Layout(cin, H, W, 0), Layout(C, *want.shape[1:], 1)
    sp = analyse_grouped(ew.numpy())
    kern = gen_pw_dw("pd", expand_weight=ew.numpy(), expand_bias=eb.numpy(), expand_act="relu6", stride=stride,
                     in_layout=Lin, out_layout=Lout, act="relu6", target=width_target(vl),
                     schedule={"nv": nv, **({"reg": 1} if reg else {})}, expand_sparsity=sp, taps=kept_taps(dw.numpy()))
    assert kern.schedule == {"nv": nv, **({"reg": 1} if reg else {})}
    assert ("register-blocked" in kern.code) == reg
    assert (kept_taps(dw.numpy()) is None) != patterns
    assert kern.flops == 2 * int(sp.taps_per_kernel().sum()) * H * W + \
        2 * C * (kept_taps(dw.numpy()) or 9) * want.shape[1] * want.shape[2]
    check_close(run_kernel(kern, x.numpy(), dw.numpy(), db.numpy(), Lin, Lout, None), want)


@pytest.mark.parametrize("I", [9, 16, 40, 45])
def test_sparsity_read_from_weights(I):
    """Virtual kernels in the issue's order (channel 9g + p is position p); the last group's
    masks are cut to its length; FKW1 stores the layer with groups as channels and unpacks to the
    virtual weight."""
    g = torch.Generator().manual_seed(I)
    w = grouped_weight(g, 12, I, keep=0.6, dense=0.2).numpy()
    vw = virtual_weight(w)
    G = -(-I // 9)
    assert vw.shape == (12, G, 3, 3)
    for o in range(12):
        for c in range(I):
            assert vw[o, c // 9].ravel()[c % 9] == w[o, c, 0, 0]
    sp = analyse_grouped(w)
    assert sp.kernel_mask.shape == (12, G)
    r = I - 9 * (G - 1)
    for o, k in zip(*np.nonzero(sp.kernel_mask >= 0)):
        taps = mask_taps(sp.masks[sp.kernel_mask[o, k]])
        assert k < G - 1 or max(taps) < r  # no tap past the layer's last channel
        nz = set(np.flatnonzero(vw[o, k].ravel()))
        assert nz <= set(taps)
    assert ((sp.kernel_mask < 0) == ~vw.reshape(12, G, 9).any(axis=2)).all()
    packed = fkw_pack(sp, reorder(sp), vw)
    np.testing.assert_array_equal(unpack(packed, sp.masks), vw)


def test_dense_and_thin_layers_stay_dense():
    """A dense 1x1 conv, one with fewer than 9 input channels, or a project conv pruned by
    patterns alone (4 of 9) too large for the register-blocked kernel (the dense GEMM is faster
    than the gather kernel there, max_density) is not a grouped layer; an expand conv pruned so
    is, and so is a project conv the register-blocked kernel takes (REGISTER_MAX_DENSITY)."""
    from patsparse.compiler import grouped

    g = torch.Generator().manual_seed(0)
    big = grouped_weight(g, 480, 180, keep=1.0, thin=0.0).numpy()  # 38,400 kept weights
    assert grouped.kept_weights(analyse_grouped(big)) > grouped.REGISTER_MAX_FMAS
    assert grouped_sparsity(big) is None
    assert grouped_sparsity(grouped_weight(g, 8, 27, keep=1.0, thin=0.0).numpy()) is not None
    assert grouped_sparsity(grouped_weight(g, 54, 27, keep=1.0, thin=0.0).numpy()) is not None
    assert grouped_sparsity(torch.randn(8, 27, 1, 1, generator=g).numpy()) is None
    assert grouped_sparsity(np.zeros((8, 8, 1, 1), np.float32)) is None
    assert grouped_sparsity(grouped_weight(g, 8, 27).numpy()) is not None
    assert schedules(stride=2, Ho=5, Wo=5, target=width_target(16))[0]["compact"] == 1


def test_bad_input():
    g = torch.Generator().manual_seed(1)
    w = grouped_weight(g, 8, 27).numpy()
    args = dict(in_layout=Layout(27, 6, 6, 0), out_layout=Layout(8, 6, 6, 1), target=width_target(16))
    with pytest.raises(InputError, match="fewer than the 9"):
        gen_grouped1x1("k", np.zeros((8, 5, 1, 1), np.float32), in_layout=Layout(5, 6, 6, 0),
                       out_layout=Layout(8, 6, 6, 1), target=width_target(16))
    with pytest.raises(UnsupportedError, match="no padding"):
        gen_grouped1x1("k", w, padding=1, **args)
    with pytest.raises(InputError, match="row vectors at stride 2"):
        gen_grouped1x1("k", w, stride=2, **{**args, "out_layout": Layout(8, 3, 3, 1)},
                       schedule={"nv": 2, "compact": 0})
    with pytest.raises(InputError, match="out_layout"):
        gen_grouped1x1("k", w, **{**args, "out_layout": Layout(9, 6, 6, 1)})
    kern = gen_grouped1x1("k", w, **args)
    other = w.copy()
    other[other == 0] = 1.0  # non-zeros outside the masks the code was generated for
    with pytest.raises(InputError, match="outside the mask"):
        kern.pack(other)


class Blocks(nn.Module):
    """Stem, an expand 1x1 + depthwise + project block with a residual, a ResNet-style
    bottleneck with a stride-2 1x1 downsample, a ResNeXt-style grouped 1x1, a 1x1 with 8 input
    channels, then pool and linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand, self.bn = nn.Conv2d(16, 96, 1), nn.BatchNorm2d(96)
        self.dw = nn.Conv2d(96, 96, 3, padding=1, groups=96)
        self.project = nn.Conv2d(96, 16, 1)
        self.down = nn.Conv2d(16, 32, 1, stride=2)
        self.reduce = nn.Conv2d(16, 36, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(36, 32, 1, groups=4)
        self.thin = nn.Conv2d(32, 8, 1)
        self.last = nn.Conv2d(8, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu6(self.dw(F.relu6(self.bn(self.expand(x)))))
        x = x + self.project(y)
        x = F.relu(self.down(x) + self.grouped(F.relu(self.reduce(x))))
        x = F.relu(self.last(F.relu(self.thin(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _pruned_blocks() -> nn.Module:
    torch.manual_seed(0)
    m = Blocks().eval()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    m.bn.running_var.uniform_(0.5, 1.5)
    project_model(m, rate=6)
    return m


def test_pruned_blocks_compile_to_grouped_kernels():
    """The compiler finds the grouping in the weights (BatchNorm folded into the expand keeps
    its zeros); the 8-channel 1x1 and the dense classifier-side 1x1 stay dense."""
    m = _pruned_blocks()
    x = torch.randn(2, 3, 20, 20)
    cm = ps.compile(m, x[:1], threads=2)
    kinds = {L["name"]: L["kernel"] for L in cm.manifest["layers"]}
    assert kinds["expand"] == kinds["project"] == kinds["down"] == "grouped1x1"
    assert kinds["thin"] == "grouped1x1" and kinds["last"] == "conv2d"  # 8 input channels: dense
    assert kinds["grouped"] == "grouped1x1"  # groups=4 as a block-diagonal conv: 1 dense group of 4 kept
    assert all("kernels" in L for L in cm.manifest["layers"] if L["kernel"] == "grouped1x1")
    dw = next(L for L in cm.manifest["layers"] if L["name"] == "dw")
    assert dw["kernel"] == "depthwise" and dw["flops"] == 2 * 96 * 4 * 20 * 20  # patterns: 4 taps computed
    check(np.asarray(cm(x)), m, x.numpy())


@pytest.mark.parametrize("tune", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_saved_and_loaded(tmp_path, tune):
    """A compiled model with grouped layers (default or tuned schedules) survives save and load."""
    m = _pruned_blocks()
    x = torch.randn(1, 3, 20, 20)
    cm = ps.compile(m, x, threads=1, tune=tune)
    cm.save(tmp_path / "m.compiled")
    back = ps.load(tmp_path / "m.compiled")
    assert back.manifest["layers"] == cm.manifest["layers"]
    np.testing.assert_array_equal(np.asarray(back(x)), np.asarray(cm(x)))


def test_spec_the_weights_do_not_follow_is_said_and_compiled_as_the_weights_are():
    m = _pruned_blocks()
    with torch.no_grad():
        m.project.weight[0, :, 0, 0] = 0.5  # every channel of filter 0: outside its groups' masks
    x = torch.randn(1, 3, 20, 20)
    with pytest.warns(UserWarning, match="layer 'project' .* non-zero weights outside its mask"):
        cm = ps.compile(m, x, threads=1)
    check(np.asarray(cm(x)), m, x.numpy())


@pytest.mark.parametrize("lanes,registers", [(4, 16), (16, 32)])
def test_pruned_blocks_on_generic_vectors(lanes, registers):
    m = _pruned_blocks()
    x = torch.randn(2, 3, 20, 20)
    cm = ps.compile(m, x[:1], threads=2, target=generic_vectors(lanes, registers))
    check(np.asarray(cm(x)), m, x.numpy())


@pytest.mark.parametrize("name,size", [("mobilenet_v2", 64), pytest.param("resnet50", 48, marks=pytest.mark.slow)])
def test_pruned_zoo_models(name, size):
    """MobileNet-V2 and ResNet-50 (ImageNet form, small width) pruned with grouped 1x1 convs."""
    torch.manual_seed(0)
    m = models.get(name, num_classes=10, width=0.25).eval()
    project_model(m, rate=8)
    x = torch.randn(2, 3, size, size)
    cm = ps.compile(m, x[:1], threads=2)
    assert sum(L["kernel"] == "grouped1x1" for L in cm.manifest["layers"]) >= 15
    check(np.asarray(cm(x)), m, x.numpy())


class Expand(nn.Module):
    """An expand whose output exceeds 1 MB, so NEON (32 registers) fuses it with the depthwise."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand, self.dw = nn.Conv2d(16, 96, 1), nn.Conv2d(96, 96, 3, padding=1, groups=96)
        self.project, self.last = nn.Conv2d(96, 24, 1), nn.Conv2d(24, 24, 1)  # the last 1x1 stays dense
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu6(self.dw(F.relu6(self.expand(F.relu(self.stem(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.last(self.project(x)), 1), 1))


class Split(Expand):
    """The depthwise output also reaches the classifier, so the project conv stays a kernel of
    its own (only a project fed by the depthwise alone fuses into the block)."""

    def __init__(self):
        super().__init__()
        self.side = nn.Linear(96, 5)

    def forward(self, x):
        x = F.relu6(self.dw(F.relu6(self.expand(F.relu(self.stem(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.last(self.project(x)), 1), 1)) + \
            self.side(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Block(Expand):
    """An inverted-residual block with its residual add: expand, depthwise and project fuse."""

    def __init__(self):
        super().__init__()
        self.project, self.last = nn.Conv2d(96, 16, 1), nn.Conv2d(16, 24, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.project(F.relu6(self.dw(F.relu6(self.expand(x))))) + x
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.last(x), 1), 1))


def test_grouped_on_aarch64_under_qemu(tmp_path, monkeypatch):
    """The grouped kernel and the fused pruned expand (its depthwise pass on the kept taps)
    rendered for NEON, built with the export's Makefile and run under qemu, register-blocked
    (the default on these small layers) and on the gather lists; then whole blocks (expand,
    depthwise, project, residual in one kernel), pruned and dense."""
    from patsparse.compiler import grouped

    src = _pruned_on_aarch64(Split, 4, 56, tmp_path)
    assert "grouped 1x1 conv" in src and "grouped sparse expand" in src and "4 depthwise taps per channel" in src
    assert "grouped sparse project" not in src
    assert "register-blocked" in src
    monkeypatch.setattr(grouped, "REGISTER_MAX_FMAS", -1)
    src = _pruned_on_aarch64(Split, 4, 56, tmp_path / "gather")
    assert "gather entries" in src and "register-blocked" not in src
    monkeypatch.undo()
    src = _pruned_on_aarch64(Expand, 4, 56, tmp_path / "block")
    assert "grouped sparse expand" in src and "grouped sparse project" in src
    src = _pruned_on_aarch64(Block, None, 56, tmp_path / "dense")
    assert "+ residual), project tile" in src


def _pruned_on_aarch64(cls: type[nn.Module], rate: float | None, size: int, tmp_path) -> str:
    """``cls()`` projected at ``rate`` (None: dense), exported for NEON, built and run under
    qemu on a ``size`` x ``size`` image and checked against PyTorch; returns the generated C."""
    prefix = need_aarch64()
    torch.manual_seed(0)
    m = cls().eval()
    if rate is not None:
        project_model(m, rate=rate)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    out = ps.export(m, torch.from_numpy(x), tmp_path / "proj", target="aarch64-linux-gnu")
    check(build_and_run(out, x, prefix), m, x)
    return (out / "model.c").read_text()


class SmallPlanes(nn.Module):
    """Depthwise convs on a 7x7 plane, stride 1 and 2: the pattern pass's multi-row default."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw1 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw2 = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu6(self.dw2(F.relu6(self.dw1(F.relu(self.stem(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_pattern_depthwise_rows_on_aarch64_under_qemu(tmp_path):
    """The pattern depthwise pass with several output rows per pass (4 on NEON's 4-float vectors
    over a 7x7 plane, stride 1 and 2), and the dense pass's 3, rendered for NEON and run under
    qemu."""
    src = _pruned_on_aarch64(SmallPlanes, 2.25, 7, tmp_path)
    assert "7x7 -> 7x7, 4 output rows per pass" in src and "7x7 -> 4x4, 4 output rows per pass" in src
    assert src.count("direct input, 4 taps per channel") == 2
    dense = _pruned_on_aarch64(SmallPlanes, None, 7, tmp_path / "dense")  # 32 registers: 3 rows
    assert "7x7 -> 7x7, 3 output rows per pass" in dense and "taps per channel" not in dense


def test_pruned_blocks_on_opencl():
    """The OpenCL pattern kernel on virtual 3x3 kernels (groups as channels, no local tile)."""
    pytest.importorskip("pyopencl", reason="pyopencl is not installed (pip install 'patsparse[opencl]')")
    from patsparse.compiler.opencl.device import list_devices
    try:
        list_devices()
    except UnsupportedError as e:
        pytest.skip(f"no OpenCL platform on this machine: {e}")
    m = _pruned_blocks()
    x = torch.randn(2, 3, 20, 20)
    cl = ps.compile(m, x[:1], target="opencl")
    assert {L["name"]: L["kernel"] for L in cl.manifest["layers"]}["project"] == "grouped1x1"
    check(np.asarray(cl(x)), m, x.numpy())


@pytest.mark.parametrize("fb,gb", [(1, 1), (2, 2), (3, 1), (4, 9)])
def test_gather_lists_hold_every_weight_once(fb, gb):
    """Read back from the packed arrays (gather.py), every (filter, channel) weight of the layer
    is there exactly once, padding adds zeros only, and blocks run in the documented order."""
    from patsparse.compiler.gather import gather_plan

    w = grouped_weight(torch.Generator().manual_seed(fb * 10 + gb), 13, 40, keep=0.4, dense=0.2).numpy()
    sp = analyse_grouped(w)
    gp = gather_plan(sp, fb=fb, gb=gb)
    ld = 3
    packed = gp.pack(w, sp, ld, "layer")
    ints, o = packed.view(np.int32), gp.offsets
    perm, seg = ints[o["perm"]:o["perm"] + gp.F], ints[o["seg"]:o["seg"] + gp.seg.size]
    got = np.zeros((13, 40), np.float32)
    for k in range(gp.blocks):
        for b in range(gp.nb):
            for s in range(seg[k * gp.nb + b], seg[k * gp.nb + b + 1]):
                for i in range(fb):
                    e = s * fb + i
                    off, wt = ints[o["offs"] + e], packed[o["wts"] + e]
                    assert off % ld == 0 and 0 <= off // ld < 9 * gp.gb
                    if perm[k * fb + i] < 0:
                        assert wt == 0
                    else:
                        got[perm[k * fb + i], 9 * gp.gb * b + off // ld] += wt
    assert sorted(p for p in perm if p >= 0) == list(range(13))
    np.testing.assert_array_equal(got, w.reshape(13, 40))
    bad = w.copy()
    bad[0, (sp.kernel_mask[0] < 0).argmax() * 9, 0, 0] = 1.0  # a weight in a pruned kernel
    if (sp.kernel_mask[0] < 0).any():
        with pytest.raises(InputError, match="layer"):
            gp.pack(bad, sp, ld, "layer")


@settings(max_examples=15, deadline=None, derandomize=True)
@given(C=st.integers(1, 11), stride=st.integers(1, 2), padding=st.integers(0, 1), H=st.integers(3, 21),
       W=st.integers(3, 40), pin=st.integers(0, 2), pout=st.integers(0, 2), act=st.sampled_from(["none", "relu6"]),
       residual=st.booleans(), rows=st.one_of(st.none(), st.integers(1, 8)), seed=st.integers(0, 3))
def test_pattern_depthwise_matches_torch(C, stride, padding, H, W, pin, pout, act, residual, rows, seed):
    """A depthwise conv whose channels keep library patterns (one channel thinner or empty)
    computes each channel's kept taps only (depthwise.kept_taps), as PyTorch does."""
    from patsparse.compiler.codegen.depthwise import gen_depthwise, kept_taps

    g = torch.Generator().manual_seed(seed)
    x, b = torch.randn(C, H, W, generator=g), torch.randn(C, generator=g)
    w, _ = project_pattern(torch.randn(C, 1, 3, 3, generator=g), "phase2")
    w[0, 0, seed % 3] = 0.0  # a row of the first channel's pattern gone: fewer taps, or none
    y = F.conv2d(x[None], w, b, stride=stride, padding=padding, groups=C)[0]
    r = torch.randn(y.shape, generator=g)
    want = _act(y + r if residual else y, act)
    Lin, Lout = Layout(C, H, W, pin), Layout(C, *y.shape[1:], pout)
    taps = kept_taps(w.numpy())
    assert taps == (4 if C > 1 else max(1, int((w[0] != 0).sum())))
    kern = gen_depthwise("dw", channels=C, stride=stride, padding=padding, in_layout=Lin, out_layout=Lout,
                         act=act, has_residual=residual, schedule=rows and {"rows": rows},
                         target=width_target(16), taps=taps)
    check_close(run_kernel(kern, x.numpy(), w.numpy(), b.numpy(), Lin, Lout, r.numpy() if residual else None), want)
    with pytest.raises(InputError, match="more than the"):
        kern.pack(torch.ones(C, 1, 3, 3).numpy())
    assert kept_taps(torch.randn(4, 1, 3, 3).numpy()) is None  # dense: the plain pass


def test_pattern_depthwise_default_rows():
    """The pattern pass takes up to 8 output vectors per pass, the same rows in every pass: a
    whole 7x7 plane, half a 14x14 one, 4 rows of a 28-wide plane, one row of a 112-wide one;
    at stride 2 at most 4 rows. The dense pass takes 3 rows at stride 1 on planes of one or two
    vectors a row when the target has 32 vector registers."""
    from patsparse.compiler.codegen.depthwise import schedules

    def rows(stride, H, W, vl=16, taps=4):
        return schedules(stride=stride, out_layout=Layout(8, H, W), vl=vl, taps=taps)[0]["rows"]

    assert [rows(1, n, n) for n in (7, 14, 28, 56, 112)] == [7, 7, 4, 2, 1]
    assert [rows(2, n, n) for n in (7, 14, 56)] == [4, 4, 2]
    assert rows(1, 7, 7, vl=4) == 4 and rows(1, 3, 3) == 3
    assert rows(1, 14, 14, taps=None) == 1  # the dense pass: one row with 16 registers,
    assert [schedules(stride=s, out_layout=Layout(8, n, n), registers=32)[0]["rows"]  # three with 32
            for s, n in ((1, 7), (1, 28), (1, 56), (2, 14))] == [3, 3, 1, 2]
    cands = [d["rows"] for d in schedules(stride=1, out_layout=Layout(8, 14, 14), taps=4)]
    assert cands[0] == 7 and sorted(cands) == [1, 2, 3, 4, 7]  # the tuner's candidates, no repeat


def test_register_kernel_default_below_its_size():
    """The register-blocked kernel is the default up to REGISTER_MAX_FMAS kept weights (the
    gather kernel beyond), and a schedule naming no "reg" keeps the gather kernel."""
    from patsparse.compiler import grouped
    from patsparse.compiler.codegen import grouped1x1

    t = width_target(16)
    small = schedules(stride=1, Ho=14, Wo=14, target=t, channels=96, fmas=500)
    assert small[0]["reg"] == 1 and small[0]["nv"] == 1 and any("reg" not in c for c in small)
    big = schedules(stride=1, Ho=14, Wo=14, target=t, channels=96, fmas=grouped.REGISTER_MAX_FMAS + 1)
    assert all("reg" not in c for c in big)
    assert grouped1x1.pick(small, {"nv": 2})["fb"] == grouped1x1.FB
    assert "reg" not in grouped1x1.pick(small, {"nv": 2})
    kern = grouped_case(I=40, O=20, H=6, W=7, vl=16)
    assert kern.schedule["reg"] == 1


@pytest.mark.parametrize("fb,gb", [(1, 1), (5, 2), (22, 9)])
def test_register_plan_holds_every_weight_once(fb, gb):
    """Read back from the register plan (regblock.py): every (filter, channel) weight once, in
    code order (filter blocks outer, channel blocks inner), each group loading exactly the
    positions its filters multiply."""
    from patsparse.compiler.regblock import reg_plan

    w = grouped_weight(torch.Generator().manual_seed(fb + gb), 13, 40, keep=0.4, dense=0.2).numpy()
    sp = analyse_grouped(w)
    p = reg_plan(sp, fb=fb, gb=gb)
    packed = p.pack(w, sp, 0, "layer")
    got, seen = np.zeros((13, 40), np.float32), []
    for k, blk in enumerate(p.filters):
        for b in range(p.nb):
            for st_ in p.steps[k][b]:
                assert b * p.gb <= st_.group < (b + 1) * p.gb
                assert st_.positions == tuple(sorted({q for _, q, _ in st_.fmas}))
                for i, q, s in st_.fmas:
                    got[blk[i], 9 * st_.group + q] += packed[s]
                    seen.append(s)
    assert seen == list(range(p.size))
    np.testing.assert_array_equal(got, w.reshape(13, 40))
    assert p.cost()[-1] == p.size == int(sp.taps_per_kernel().sum())
