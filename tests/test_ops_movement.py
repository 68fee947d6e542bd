"""Padding, resize, pixel / channel shuffle, softmax and constant operands, generated natively
(strict compiles: nothing falls back), from a torch.fx trace and from the ONNX export, against
PyTorch; saved and loaded (the other targets: test_ops_targets.py)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ops_check import check_torch_and_onnx
from test_compiler import assert_close

import patsparse as ps
from patsparse.compiler.capture import capture_torch
from patsparse.compiler.codegen.movement import resize_taps
from patsparse.compiler.validate import graph_from_file
from patsparse.errors import FormatError, UnsupportedError
from patsparse.models.families import channel_shuffle


class Movement(nn.Module):
    """Every op of this file once, in a graph ONNX exports too."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.pad = nn.ReplicationPad2d((1, 0, 2, 1))
        self.d = nn.Conv2d(2, 4, 3, padding=1, padding_mode="replicate")
        self.register_buffer("scale", torch.rand(1, 4, 1, 1) + 0.5)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        y = F.pad(self.pad(self.c(x)), (1, 1, -1, 2), value=0.25)
        y = F.pixel_shuffle(channel_shuffle(y, 4), 2)
        y = self.d(y) * self.scale
        y = F.interpolate(y, scale_factor=2, mode="nearest") + \
            F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        y = F.pad(F.softmax(1 - y, 1), (1, 2, 0, 1), mode="reflect")
        return F.log_softmax(self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1)) * 0.5 + 2, dim=1)


def test_movement_ops_match_pytorch_traced_and_from_onnx(tmp_path):
    torch.manual_seed(0)
    check_torch_and_onnx(Movement(), torch.randn(2, 3, 9, 7), tmp_path)


class Resizes(nn.Module):
    """Resize forms ONNX has no PyTorch-exact export for (non-integer nearest) or that only the
    trace sees (modules, sizes)."""

    def __init__(self):
        super().__init__()
        self.up = nn.UpsamplingBilinear2d(scale_factor=1.7)  # align_corners=True
        self.near = nn.Upsample(size=(11, 6), mode="nearest")
        self.shuffle, self.ps = nn.ChannelShuffle(2), nn.PixelShuffle(2)
        self.pad = nn.ReflectionPad2d(2)
        self.sm = nn.LogSoftmax(1)

    def forward(self, x):
        y = torch.cat([self.near(x), F.interpolate(x, size=(11, 6), mode="bilinear")], 1)
        y = self.ps(self.shuffle(torch.cat([y, y * 2], 1)))
        return F.interpolate(self.sm(self.pad(self.up(y))), scale_factor=0.6, mode="nearest")


def test_resize_modules_and_sizes_match_pytorch():
    torch.manual_seed(0)
    m = Resizes().eval()
    x = torch.randn(2, 2, 7, 9)
    fast = ps.compile(m, x[:1], threads=2, strict=True)
    with torch.no_grad():
        assert_close(fast(x), m(x))


@pytest.mark.parametrize("n_in,n_out,scale", [(7, 12, None), (9, 4, None), (5, 8, 1.7), (6, 13, 2.2), (12, 6, 0.5)])
def test_resize_taps_agree_with_pytorch(n_in, n_out, scale):
    """The index / weight tables against PyTorch's own resize of a one-hot probe per input."""
    for mode, align in (("nearest", False), ("bilinear", False), ("bilinear", True)):
        i0, i1, lam = resize_taps(n_in, n_out, mode, align, scale)
        want = np.zeros((n_out, n_in), np.float32)
        want[np.arange(n_out), i0] += 1 - lam
        want[np.arange(n_out), i1] += lam
        kw = {} if mode == "nearest" else {"align_corners": align}
        size = {"scale_factor": (scale, 1.0)} if scale else {"size": (n_out, 1)}
        probe = torch.eye(n_in).reshape(n_in, 1, n_in, 1)
        got = F.interpolate(probe, mode=mode, **size, **kw)[:, 0, :, 0].T.numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-6, (mode, align)


def test_constant_operands_become_per_channel_affine_maps():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.rand(3, 1, 1))

        def forward(self, x):
            return (2.0 - x) / self.w * 3 + self.w - 1

    m = Const().eval()
    x = torch.randn(2, 3, 5, 6)
    g = capture_torch(m, x[:1])
    assert [n.op for n in g.nodes] == ["affine"] * 5
    with torch.no_grad():
        assert_close(ps.compile(m, x[:1], threads=2, strict=True)(x), m(x))

    class Reciprocal(nn.Module):
        def forward(self, x):
            return 2.0 / x

    with pytest.raises(UnsupportedError, match="a constant divided by a tensor"):
        capture_torch(Reciprocal(), x[:1])


def test_unsupported_movement_forms_name_the_node():
    x = torch.zeros(1, 4, 8, 8)
    for fn, match in ((lambda t: F.pad(t, (1, 1, 1, 1, 1, 1)), "only the last two dims"),
                      (lambda t: F.pad(t, (1, 1, 1, 1), mode="circular"), "padding mode 'circular'"),
                      (lambda t: F.pad(t, (8, 0, 0, 0), mode="reflect"), "reflect padding of 8"),
                      (lambda t: F.interpolate(t, scale_factor=2, mode="bicubic"), "resize mode 'bicubic'"),
                      (lambda t: F.softmax(t, 2), "softmax over dim 2"),
                      (lambda t: t.view(1, 2, 2, 8, 8).sum(1), "5-D channel-group view")):
        class Bad(nn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn

            def forward(self, t):
                return self.fn(t)

        with pytest.raises(UnsupportedError, match=match):
            m = Bad(fn)
            if "reflect padding" in match:  # the table is checked when the kernel is generated
                ps.compile(m, x, strict=True)
            else:
                capture_torch(m, x)


def test_movement_graph_saves_loads_and_rejects_tampered_attributes(tmp_path):
    torch.manual_seed(0)
    m = Movement().eval()
    x = torch.randn(2, 3, 9, 7)
    cm = ps.compile(m, x[:1], threads=2, strict=True)
    back = ps.load(cm.save(tmp_path / "m"))
    with torch.no_grad():
        assert_close(back(x), m(x))
    gj, gt = cm._graph
    ops = {d["op"] for d in gj["nodes"]}
    assert {"pad", "resize", "pixel_shuffle", "shuffle", "softmax", "affine"} <= ops
    for op, key, bad in (("pad", "mode", "wrap"), ("pad", "pads", [1, 2]), ("resize", "mode", "bicubic"),
                         ("resize", "size", [0, 4]), ("pixel_shuffle", "r", 3), ("shuffle", "groups", 5),
                         ("softmax", "log", 1)):
        tampered = {**gj, "nodes": [dict(d, attrs={**d["attrs"], key: bad}) if d["op"] == op else d
                                    for d in gj["nodes"]]}
        with pytest.raises(FormatError):
            graph_from_file(tampered, gt, "m")


@pytest.mark.parametrize("kw", [dict(kernel_size=2, stride=2), dict(kernel_size=3, stride=2, padding=1, output_padding=1),
                                dict(kernel_size=3, padding=1, groups=2, out_channels=8),
                                dict(kernel_size=4, stride=2, padding=1, dilation=2, bias=False)])
def test_conv_transpose_is_a_spread_and_a_conv(kw, tmp_path):
    torch.manual_seed(0)
    kw = {"in_channels": 4, "out_channels": 6, **kw}
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(**kw), nn.ReLU())
    check_torch_and_onnx(m, torch.randn(2, 3, 7, 6), tmp_path)
    assert [n.op for n in capture_torch(m, torch.zeros(1, 3, 7, 6)).nodes][1:3] == ["pad", "conv"]


@pytest.mark.parametrize("name", ["squeezenet", "resnext", "mobilenet_v3", "efficientnet", "deeplab", "unet",
                                  "shufflenet_v2"])
def test_architecture_families_compile_natively_at_8x(name, tmp_path):
    """One block of each of the issue's seven families, pattern-projected at 8x, traced and
    exported: all of it generated code (strict)."""
    from patsparse.models.families import build

    check_torch_and_onnx(build(name, rate=8.0), torch.randn(2, 3, 32, 32), tmp_path)


@pytest.mark.parametrize("d,groups,hw", [(2, 1, (16, 16)), (3, 1, (15, 17)), (12, 1, (13, 14)), (2, 8, (10, 11)),
                                         (4, 32, (16, 16))])
def test_dilated_3x3_runs_undilated_over_the_phase_mosaic(d, groups, hw, tmp_path):
    """A "same" dilated 3x3 conv is an undilated 3x3 (pattern or depthwise kernel, the ReLU after
    it fused) between two phase gathers, for any dilation (12 here: a 25x25 square equivalent)."""
    from patsparse.compiler.api import capture
    from patsparse.pruning.projection import project_model

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1),
                      nn.Conv2d(32, 32, 3, padding="same" if d == 3 else d, dilation=d, groups=groups), nn.ReLU())
    project_model(m, 4.0 if groups == 1 else 2.25)
    x = torch.randn(2, 3, *hw)
    check_torch_and_onnx(m, x, tmp_path)
    ops = [(n.op, n.act) for n in capture(m.eval(), x[:1]).nodes]
    assert ops[1:] == [("phases", "none"), ("conv", "relu"), ("phases", "none")]
    cm = ps.compile(m, x[:1], threads=2, strict=True)
    kinds = [L["kernel"] for L in cm.manifest["layers"]]
    assert kinds[1:] == ["phases", "pattern_conv" if groups < 32 else "depthwise", "phases"]
    if d == 12:  # the graph saves and loads (validate.py checks the phases' attributes)
        with torch.no_grad():
            assert_close(ps.load(cm.save(tmp_path / "m"))(x), m(x))


def test_phase_mosaic_neighbours_are_the_dilated_taps_in_both_layouts():
    """In the mosaic, the j-th neighbour of element p is element p + j d where that exists and a
    zero otherwise (|j| <= half): what makes the undilated conv over it the dilated one. The
    packed layout is never longer than the equal-tile one graphs were saved with before it."""
    from patsparse.compiler.codegen.movement import mosaic_size, phase_taps

    for n in range(1, 24):
        for d in range(2, 26):
            for half in (1, 2, 3):
                sizes = []
                for packed in (False, True):
                    fwd, inv = (phase_taps(n, d, inverse, half, packed)[0] for inverse in (False, True))
                    assert fwd.size == mosaic_size(n, d, half, packed)
                    assert (fwd[inv + half] == np.arange(n)).all()
                    for a in np.flatnonzero(fwd >= 0):
                        for j in range(-half, half + 1):
                            q = fwd[a] + j * d
                            assert fwd[a + j] == (q if 0 <= q < n else -1)
                    sizes.append(fwd.size)
                assert sizes[1] <= sizes[0]
    assert (mosaic_size(14, 12, 1, False), mosaic_size(14, 12, 1, True)) == (37, 27)


@pytest.mark.parametrize("k,d,groups,hw", [(5, 2, 32, (9, 10)), (5, 3, 32, (7, 8)), (5, 2, 1, (6, 6)), (7, 2, 32, (8, 8))])
def test_dilated_kxk_runs_undilated_over_a_wider_phase_mosaic(k, d, groups, hw, tmp_path):
    """MobileNet-V3's dilated 5x5 depthwise convs (DeepLab's backbone) and any odd square kernel:
    the mosaic separates the phases by (k - 1) / 2 zeros."""
    from patsparse.compiler.api import capture

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1),
                      nn.Conv2d(32, 32, k, padding=d * (k - 1) // 2, dilation=d, groups=groups), nn.Hardswish())
    x = torch.randn(2, 3, *hw)
    check_torch_and_onnx(m, x, tmp_path)
    ops = [(n.op, n.attrs.get("half"), n.act) for n in capture(m.eval(), x[:1]).nodes]
    assert ops[1:] == [("phases", k // 2, "none"), ("conv", None, "hardswish"), ("phases", k // 2, "none")]
    cm = ps.compile(m, x[:1], threads=2, strict=True)
    with torch.no_grad():
        assert_close(ps.load(cm.save(tmp_path / "m"))(x), m(x))


@pytest.mark.parametrize("k,d,groups,hw", [(3, 8, 1, (8, 5)), (3, 36, 4, (14, 14)), (5, 6, 1, (6, 6)),
                                           (5, 20, 32, (8, 8))])
def test_dilation_past_the_input_is_the_centre_1x1(k, d, groups, hw, tmp_path):
    """DeepLab's ASPP rates 24 and 36 on a 14x14 map: every off-centre tap reads padding, so the
    conv is the 1x1 conv of its centre taps (no mosaic)."""
    from patsparse.compiler.api import capture

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1),
                      nn.Conv2d(32, 32 if groups == 32 else 16, k, padding=d * (k - 1) // 2, dilation=d, groups=groups),
                      nn.ReLU())
    x = torch.randn(2, 3, *hw)
    check_torch_and_onnx(m, x, tmp_path)
    convs = [n.attrs["k"] for n in capture(m.eval(), x[:1]).nodes if n.op == "conv"]
    assert convs == [3, 1]
