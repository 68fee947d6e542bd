"""benchmarks/_op_profile.by_category: each profiled layer's time lands in exactly one place (a
fused 1x1 + depthwise kernel split between the two by their multiply-adds)."""

import torch

from benchmarks._op_profile import by_category
from patsparse.compiler.api import capture


def test_each_layer_counted_once_and_a_fused_block_split():
    m = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                            torch.nn.MaxPool2d(2)).eval()
    g = capture(m, torch.zeros(1, 4, 8, 8))
    nodes = {n.name: n for n in g.nodes}
    pw, dw, pool = (n.name for n in g.nodes)
    # the fused block first (nothing before it to be counted twice), then a pool
    rows = [{"name": dw, "kernel": "pw_dw", "ms": 1.0}, {"name": pool, "kernel": "maxpool", "ms": 0.5}]
    out = by_category(rows, nodes)
    assert abs(sum(out.values()) - 1.5) < 1e-12
    assert out["pooling"] == 0.5
    # 1x1: 8 x 8 x 8 outputs x 4 inputs; depthwise: 8 x 8 x 8 outputs x 9 taps
    assert abs(out["conv 1x1"] - 4 / 13) < 1e-12 and abs(out["depthwise"] - 9 / 13) < 1e-12
    rows = [{"name": pw, "kernel": "conv2d", "ms": 0.25}, *rows]  # a conv row before the block
    out = by_category(rows, nodes)
    assert abs(sum(out.values()) - 1.75) < 1e-12 and abs(out["conv 1x1"] - 0.25 - 4 / 13) < 1e-12
