"""The full networks of the seven families beyond the zoo (models/architectures.py), pattern-
projected at 8x, compile to generated code only (strict) and match PyTorch within 1e-4, traced
and through their ONNX export; the small ones at 64x64 in the fast suite, every one (and at the
size the benchmark measures) in the slow one."""

import collections

import pytest
import torch
from ops_check import check_torch_and_onnx

import patsparse as ps
from patsparse.models.architectures import ARCHITECTURES, build_architecture

# kernels each network must run on: its pruned 3x3 convs on pattern kernels, its pruned 1x1
# convs on virtual-kernel ones, and the op each family is known for
KERNELS = {
    "squeezenet1_1": {"pattern_conv", "grouped1x1", "maxpool", "concat"},
    "resnext50_32x4d": {"pattern_conv", "grouped1x1"},
    "mobilenet_v3_small": {"depthwise", "grouped1x1", "binary"},
    "mobilenet_v3_large": {"depthwise", "grouped1x1", "binary"},
    "efficientnet_b0": {"depthwise", "grouped1x1", "binary"},
    "deeplabv3_mobilenet_v3_large": {"pattern_conv", "phases", "depthwise", "resize"},
    "unet": {"pattern_conv", "pad", "concat", "maxpool"},
    "shufflenet_v2_x1_0": {"depthwise", "grouped1x1", "shuffle", "slice"},
}
FAST = ["squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x1_0"]


def check(name: str, size: int, tmp_path, onnx: bool = True) -> None:
    m = build_architecture(name, rate=8.0)
    x = torch.randn(2, 3, size, size)
    check_torch_and_onnx(m, x, tmp_path, onnx=onnx)
    kinds = collections.Counter(L["kernel"] for L in ps.compile(m, x[:1], threads=2, strict=True).manifest["layers"])
    assert KERNELS[name] <= set(kinds), f"{name}: {sorted(KERNELS[name] - set(kinds))} missing from {dict(kinds)}"


def test_every_architecture_has_its_expected_kernels_listed():
    assert set(KERNELS) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", FAST)
def test_small_architectures_compile_natively_and_match(name, tmp_path):
    check(name, 64, tmp_path, onnx=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if n not in FAST])
def test_architectures_compile_natively_and_match(name, tmp_path):
    check(name, 64, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architectures_at_their_benchmark_size(name, tmp_path):
    check(name, ARCHITECTURES[name].size, tmp_path, onnx=False)
