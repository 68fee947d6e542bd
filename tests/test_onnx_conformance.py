"""ONNX conformance: small nets of the op set exported with torch.onnx.export, and ONNX's own
pytorch-converted backend models (they ship inside the onnx wheel), compiled through the ONNX
importer and compared with ONNX Runtime / the models' stored outputs.

Every backend model must either match within 1e-4 of its output scale or be refused with one of
the documented reasons (docs/COMPILER.md, "ONNX conformance"); none may give a wrong number or
crash. Natively (strict) and with the fallback, the number of matches may not drop below what
the compiler reaches today."""

import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper
from test_ops_movement import Movement

import patsparse as ps
from patsparse.errors import UnsupportedError
from patsparse.models.families import ShuffleUnit

BACKEND = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "pytorch-converted"
CASES = sorted(p.name for p in BACKEND.iterdir()) if BACKEND.is_dir() else []
# why a backend model may be refused (regex of the message); docs/COMPILER.md lists the same
REFUSALS = {
    r"input shape \(\d+(, \d+){3}\) must be a static": "3-D inputs (Conv3d, the 3-D pools and BatchNorm)",
    r"input of type INT64": "integer inputs (Embedding)",
    r"has no square equivalent": "non-square kernels without the padding that makes them square",
    r"1-D conv with kernel 3, dilation 1, stride 2 and padding \(0, 0\)": "a strided 1-D conv padded less than half its kernel",
    r"maxpool of a 1-D signal": "1-D pooling (natively)",
    r"asymmetric pads": "pooling with different paddings per axis",
    r"softmax over dim 3": "softmax over a spatial dim (natively)",
    r"Reshape to \(1, 3, 3, 4, 4\)": "pixel shuffle exported as a 6-D reshape / transpose (natively)",
    r"ONNX op (Exp|Gather|Abs|Unsqueeze) ": "ops outside the set (Exp, Gather, Abs, Unsqueeze)",
    r"Split along axis (-1|1); only the channel axis": "splitting a vector or a 1-D signal",
    r"ONNX Runtime cannot run": "opset-6 files ONNX Runtime does not run either (fallback)",
}
NATIVE_FLOOR, FALLBACK_FLOOR = 45, 57  # matches reached when this test was written


def _tensor(path: Path) -> np.ndarray:
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def _run_backend_case(name: str, strict: bool) -> str:
    """'match' or 'refused' (with a documented reason); an assertion error otherwise."""
    d = BACKEND / name
    x = _tensor(d / "test_data_set_0" / "input_0.pb")
    want = _tensor(d / "test_data_set_0" / "output_0.pb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = ps.compile(str(d / "model.onnx"), threads=1, strict=strict)
    except UnsupportedError as e:
        assert any(re.search(r, str(e)) for r in REFUSALS), f"{name}: refused for an undocumented reason: {e}"
        return "refused"
    got = np.asarray(cm(x.astype(np.float32))).reshape(want.shape)
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * max(1.0, float(np.abs(want).max())), f"{name}: wrong number, max abs error {err}"
    return "match"


# (native, with the fallback): a sample the default suite runs
FAST_CASES = {"test_Conv2d_dilated": ("match", "match"), "test_ConvTranspose2d": ("match", "match"),
              "test_ReflectionPad2d": ("match", "match"), "test_Softmax": ("match", "match"),
              "test_Linear_no_bias": ("match", "match"), "test_PixelShuffle": ("refused", "match"),
              "test_Conv3d": ("refused", "refused"), "test_Conv1d_dilated": ("match", "match"),
              "test_MaxPool1d": ("refused", "match")}


@pytest.mark.skipif(not CASES, reason="the onnx wheel ships no pytorch-converted backend models")
@pytest.mark.parametrize("name", sorted(FAST_CASES))
def test_backend_model_matches_or_is_refused_for_a_documented_reason(name):
    assert (_run_backend_case(name, True), _run_backend_case(name, False)) == FAST_CASES[name]


@pytest.mark.slow
@pytest.mark.skipif(not CASES, reason="the onnx wheel ships no pytorch-converted backend models")
def test_every_backend_model_matches_or_is_refused_and_coverage_does_not_drop():
    native = {c: _run_backend_case(c, True) for c in CASES}
    fallback = {c: _run_backend_case(c, False) for c in CASES}
    n_native, n_fallback = (sum(v == "match" for v in r.values()) for r in (native, fallback))
    assert n_native >= NATIVE_FLOOR, f"{n_native} of {len(CASES)} match natively"
    assert n_fallback >= FALLBACK_FLOOR, f"{n_fallback} of {len(CASES)} match with the fallback"
    assert all(fallback[c] == "match" for c in CASES if native[c] == "match")


class Decoder(nn.Module):
    """A U-Net decoder step: transposed-conv upsampling, a skip concat, bilinear resize, a
    reflect-padded conv, and a per-pixel class softmax."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fuse = nn.Conv2d(7, 6, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        y = torch.cat([self.up(F.relu(self.down(x))), x], 1)
        y = F.interpolate(F.hardswish(self.fuse(y)), scale_factor=2, mode="bilinear", align_corners=True)
        return F.log_softmax(y, 1)


@pytest.mark.parametrize("make,shape", [(lambda: ShuffleUnit(16), (16, 10, 12)), (Decoder, (3, 12, 10)), (Movement, (3, 9, 7))],
                         ids=["shufflenet_unit", "unet_decoder", "movement"])
def test_exported_nets_match_onnx_runtime(make, shape, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    m = make().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, *shape)
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, x, str(path), dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    got = ps.compile(str(path), threads=2, strict=True)(x.numpy())
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
