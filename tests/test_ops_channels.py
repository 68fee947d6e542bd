"""Concat along channels and split / chunk, from a traced module and an ONNX file, against
PyTorch; SqueezeNet's fire modules (with its ceil-mode pools) as the family test."""

import pytest
import torch
import torch.nn as nn
from ops_check import check_torch_and_onnx

from patsparse.compiler.capture import capture_torch
from patsparse.errors import UnsupportedError


class SplitJoin(nn.Module):
    """chunk, split with sizes, concats (one with the model input: a tensor with no halo) and
    pieces feeding convs with padding (their layouts differ from the concat's)."""

    def __init__(self, chunk: bool):
        super().__init__()
        self.chunk = chunk  # torch.onnx writes chunk with Shape ops: the ONNX test splits by size
        self.c1, self.c2 = nn.Conv2d(3, 10, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.c3 = nn.Conv2d(3 + 6 + 6 + 5 + 5, 5, 3, padding=1)

    def forward(self, x):
        y = self.c1(x)
        a, b = torch.chunk(y, 2, dim=1) if self.chunk else y.split(5, 1)
        p, q, r = torch.split(y, [4, 3, 3], dim=1)
        z = torch.cat([x, self.c2(p), torch.relu(torch.cat([q, r], 1)), torch.sigmoid(a), b], dim=1)
        return self.c3(z)


@pytest.mark.parametrize("size,chunk", [((9, 13), True), ((16, 16), False)])
def test_concat_split_chunk(size, chunk, tmp_path):
    torch.manual_seed(0)
    check_torch_and_onnx(SplitJoin(chunk), torch.randn(2, 3, *size), tmp_path, onnx=not chunk)


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze, self.e1, self.e3 = nn.Conv2d(cin, squeeze, 1), nn.Conv2d(squeeze, expand, 1), \
            nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.e1(x)), torch.relu(self.e3(x))], 1)


def test_family_squeezenet(tmp_path):
    """SqueezeNet 1.1 in small: ceil-mode max pools, fire modules, a 1x1 classifier conv."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                      Fire(16, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 8, 16),
                      nn.Dropout(), nn.Conv2d(32, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    check_torch_and_onnx(m, torch.randn(2, 3, 48, 48), tmp_path)


def test_bad_concat_and_split_name_the_node():
    class Bad(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=2)

    with pytest.raises(UnsupportedError, match="cat.*dim 2"):
        capture_torch(Bad(), torch.zeros(1, 3, 8, 8))

    class BadSplit(nn.Module):
        def forward(self, x):
            return torch.chunk(x, 2, dim=3)[0]

    with pytest.raises(UnsupportedError, match="chunk along dim 3"):
        capture_torch(BadSplit(), torch.zeros(1, 3, 8, 8))
