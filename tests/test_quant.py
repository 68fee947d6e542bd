"""ps.quantize: the simulated int8 model against PyTorch's own quantised ops, saturation, fallback,
bad input, and save/load."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import patsparse as ps
from patsparse.errors import FormatError, InputError
from patsparse.quant import arith, load_quantized


def _net(act: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
              nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()]
    if act is not None:
        layers.append(act)
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def _loader(n=32, shape=(3, 12, 12)):
    torch.manual_seed(1)
    x = torch.randn(n, *shape)
    return [(x[i:i + 8], torch.zeros(8)) for i in range(0, n, 8)]


def test_conv_codes_match_pytorch_quantized_conv(one_thread):
    """One int8 conv (pattern zeros in the weights) against torch.ao's quantised conv (fbgemm):
    the same integer scheme, so at most one code apart where the float requantisation multiplier
    is rounded differently, and equal almost everywhere."""
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 12, 3, padding=1).eval()
    with torch.no_grad():
        conv.weight[:, :, 0, 0] = 0  # pattern zeros
        conv.weight[:, :, 2, :] = 0
    q = ps.quantize(nn.Sequential(conv, nn.ReLU()), [torch.randn(16, 16, 9, 9)])
    n = q.graph.nodes[0]
    assert (n.params["w_q"][:, :, 0, 0] == 0).all() and (n.params["w_q"][:, :, 2, :] == 0).all()
    x = torch.randn(4, 16, 9, 9)
    (s_in, zp_in), (s_out, zp_out) = (q._qp("input"), q._qp(n.name))
    codes = {"input": arith.quantize(x, s_in, zp_in)}
    ours = q.run_int8(n, codes)
    s_w = n.params["m"].astype(np.float64) * s_out / s_in
    xq = torch.quantize_per_tensor(x, s_in, zp_in, torch.quint8)
    assert torch.equal(xq.int_repr().to(torch.int32), codes["input"])
    wq = torch._make_per_channel_quantized_tensor(torch.from_numpy(n.params["w_q"]), torch.from_numpy(s_w),
                                                  torch.zeros(12, dtype=torch.int64), 0)
    bias = torch.from_numpy(n.params["bias_q"].astype(np.float64) * s_in * s_w).float()
    ref = torch.ao.nn.quantized.functional.conv2d(xq, wq, bias, padding=1, scale=s_out, zero_point=zp_out)
    ref = torch.relu(ref.dequantize()).div(s_out).round().to(torch.int32) + zp_out
    diff = (ours - ref).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99


def test_int8_arithmetic_is_integer_exact():
    """Accumulators are exact integers at the largest magnitudes (255 * -127 over many taps)."""
    x = torch.full((1, 64, 5, 5), 255, dtype=torch.int32)
    w = torch.full((3, 64, 3, 3), -127, dtype=torch.int8)
    acc = arith.conv_acc(x, 0, w, torch.tensor([7, 0, -7]), 1, 1)
    assert acc[0, 0, 2, 2].item() == 255 * -127 * 64 * 9 + 7
    assert acc[0, 2, 0, 0].item() == 255 * -127 * 64 * 4 - 7


def test_activations_saturate_like_fake_quant():
    """Values beyond the calibrated range clamp to 0 / 255, as torch.fake_quantize does."""
    x = torch.linspace(-50, 50, 1001)
    codes = arith.quantize(x, 0.1, 128)
    fake = torch.fake_quantize_per_tensor_affine(x, 0.1, 128, 0, 255)
    assert torch.equal(arith.dequantize(codes, 0.1, 128), fake)
    assert codes.min() == 0 and codes.max() == 255


def test_simulated_model_is_close_to_float(one_thread):
    net = _net()
    q = ps.quantize(net, _loader())
    assert q.fallback == []
    x = torch.cat([b[0] for b in _loader()])
    with torch.no_grad():
        yf, yq = net(x), q(x)
    assert (yf - yq).abs().max() < 0.05 * yf.abs().max()


def test_layer_without_int8_kernel_falls_back_and_is_listed(one_thread):
    net = _net(nn.Sigmoid())
    q = ps.quantize(net, _loader(), observer="minmax")
    assert len(q.fallback) == 1 and q.graph.node(q.fallback[0]).op == "act"
    x = torch.cat([b[0] for b in _loader()])
    with torch.no_grad():
        assert (net(x) - q(x)).abs().max() < 0.05


def test_empty_calibration_loader_is_a_clear_error():
    with pytest.raises(InputError, match="calibration loader gave no images"):
        ps.quantize(_net(), [])
    with pytest.raises(InputError, match="no images"):
        ps.quantize(_net(), [], example_input=torch.zeros(1, 3, 12, 12))
    with pytest.raises(InputError, match="observer"):
        ps.quantize(_net(), _loader(), observer="mse")


def test_save_load_round_trip_and_corruption(tmp_path, one_thread):
    q = ps.quantize(_net(nn.Sigmoid()), _loader())
    ps.save(q, tmp_path / "q")
    q2 = ps.load(tmp_path / "q")
    x = torch.randn(3, 3, 12, 12)
    assert torch.equal(q(x), q2(x)) and q2.fallback == q.fallback
    good = json.loads((tmp_path / "q" / "quantized.json").read_text())

    def broken(edit) -> None:
        meta = json.loads(json.dumps(good))
        edit(meta)
        (tmp_path / "q" / "quantized.json").write_text(json.dumps(meta))

    conv = next(i for i, d in enumerate(good["graph"]["nodes"]) if d["op"] == "conv")
    for edit, match in ((lambda m: m["qparams"]["input"].update(scale=-1.0), "scale"),
                        (lambda m: m["graph"]["nodes"][conv]["attrs"].update(stride="1; evil()"), "stride"),
                        (lambda m: m["graph"]["nodes"][conv]["attrs"]["q"].update(hi=300), "output range"),
                        (lambda m: m.update(format="pickle"), "not a patsparse quantized model")):
        broken(edit)
        with pytest.raises(FormatError, match=match):
            load_quantized(tmp_path / "q")
