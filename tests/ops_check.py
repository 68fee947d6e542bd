"""What the op tests (test_ops_*.py) share: compile a module from its trace and from its ONNX
export and compare both with PyTorch."""

import torch
import torch.nn as nn
from test_compiler import assert_close

import patsparse as ps


def check_torch_and_onnx(m: nn.Module, x: torch.Tensor, tmp_path, *, onnx: bool = True, opset: int = 17) -> None:
    """``m`` compiled from a torch.fx trace and (``onnx``) from its ONNX export at ``opset``
    matches PyTorch on ``x`` (batch 2: the first image is the example input)."""
    m = m.eval()
    with torch.no_grad():
        want = m(x)
    assert_close(ps.compile(m, x[:1], threads=2, strict=True)(x), want)
    if onnx:
        path = tmp_path / "m.onnx"
        torch.onnx.export(m, x[:1], str(path), dynamo=False, opset_version=opset)
        assert_close(ps.compile(str(path), threads=2, strict=True)(x), want)
