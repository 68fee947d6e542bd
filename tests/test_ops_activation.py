"""The activation family and standalone BatchNorm, against PyTorch: fused into every kernel
family's epilogue, standalone (on the model input, on a tensor with two readers, after a
standalone BatchNorm), captured from a traced module and from an ONNX file, with NaN and Inf."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ops_check import check_torch_and_onnx
from test_compiler import assert_close

import patsparse as ps
from patsparse.compiler.capture import capture_torch
from patsparse.compiler.passes import run_passes
from patsparse.errors import UnsupportedError

# name -> (module factory, ONNX opset that has the op as one node)
ACTS = {
    "leaky_relu": (lambda c: nn.LeakyReLU(0.1), 17),
    "prelu": (lambda c: nn.PReLU(c), 17),
    "prelu1": (lambda c: nn.PReLU(), 17),
    "elu": (lambda c: nn.ELU(0.7), 17),
    "selu": (lambda c: nn.SELU(), 17),
    "sigmoid": (lambda c: nn.Sigmoid(), 17),
    "hardsigmoid": (lambda c: nn.Hardsigmoid(), 17),
    "tanh": (lambda c: nn.Tanh(), 17),
    "silu": (lambda c: nn.SiLU(), 17),
    "hardswish": (lambda c: nn.Hardswish(), 17),
    "gelu": (lambda c: nn.GELU(), 20),
    "softplus": (lambda c: nn.Softplus(), 17),
    "clip": (lambda c: nn.Hardtanh(-1.0, 2.0), 17),
    "relu6": (lambda c: nn.ReLU6(), 17),
    "relu": (lambda c: nn.ReLU(), 17),
}


def _prune_3x3(conv: nn.Conv2d) -> nn.Conv2d:
    """One 4-tap pattern in every kernel: the layer goes to the pattern kernel."""
    mask = torch.zeros(3, 3)
    mask[0, 1] = mask[1, 0] = mask[1, 1] = mask[1, 2] = 1
    conv.weight.data *= mask
    return conv


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    g = torch.Generator().manual_seed(c)
    bn.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
    bn.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return bn


class Net(nn.Module):
    """The activation after every kernel family (dense 3x3, pattern 3x3 on rows, stride 2 and a
    tiny plane, depthwise, 1x1, max/avg pool, global pool, linear) and standalone three ways."""

    def __init__(self, make):
        super().__init__()
        self.a_in = make(3)                                   # on the model input: standalone
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), make(8)        # dense conv
        self.c2, self.a2 = _prune_3x3(nn.Conv2d(8, 8, 3, padding=1)), make(8)  # pattern, rows
        self.c3 = nn.Conv2d(8, 8, 1)                          # read twice: its act is standalone
        self.a3 = make(8)
        self.c4 = _prune_3x3(nn.Conv2d(8, 8, 3, padding=1))  # + residual c3
        self.pool, self.ap = nn.MaxPool2d(2), make(8)          # max pool epilogue
        self.bn, self.abn = _bn(8), make(8)                   # standalone BN (after a pool)
        self.c5, self.a5 = _prune_3x3(nn.Conv2d(8, 16, 3, stride=2, padding=1)), make(16)  # stride 2
        self.dw, self.adw = nn.Conv2d(16, 16, 3, padding=1, groups=16), make(16)
        self.c6, self.a6 = _prune_3x3(nn.Conv2d(16, 16, 3, padding=1)), make(16)  # 4x4 plane
        self.avg, self.aavg = nn.AvgPool2d(2), make(16)
        self.gap, self.agap = nn.AdaptiveAvgPool2d(1), make(16)
        self.fc, self.afc = nn.Linear(16, 5), nn.Tanh()

    def forward(self, x):
        x = self.a1(self.c1(self.a_in(x)))
        x = self.a2(self.c2(x))
        y = self.c3(x)
        x = self.c4(self.a3(y)) + y
        x = self.abn(self.bn(self.ap(self.pool(x))))
        x = self.a5(self.c5(x))
        x = self.a6(self.c6(self.adw(self.dw(x))))
        x = self.agap(self.gap(self.aavg(self.avg(x))))
        return self.afc(self.fc(torch.flatten(x, 1)))


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_torch_and_onnx(name, tmp_path):
    make, opset = ACTS[name]
    torch.manual_seed(0)
    m = Net(make).eval()
    x = torch.randn(2, 3, 16, 16) * 2
    check_torch_and_onnx(m, x, tmp_path, opset=opset)
    kinds = {layer["kernel"] for layer in ps.compile(m, x[:1], threads=2).manifest["layers"]}  # build cached
    assert {"pattern_conv", "conv2d", "depthwise", "linear", "maxpool", "channelwise"} <= kinds


SPECIALS = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 25.0, -3.0, 3.0,
                         -100.0, 100.0, 1e-3, -1e-3, 88.0, -88.0, 6.0, -6.0, 0.5])


@pytest.mark.parametrize("name", sorted(ACTS))
def test_activation_nan_inf_like_pytorch(name):
    """Standalone on the input (every special value in every lane position) and fused into a
    conv whose bias is a special value: NaN stays NaN and Inf maps as PyTorch maps it."""
    make = ACTS[name][0]
    x = SPECIALS.roll(5).repeat(3 * 19).reshape(1, 3, 17, 19)
    m = nn.Sequential(make(3)).eval()
    with torch.no_grad():
        want = m(x)
    got = torch.as_tensor(ps.compile(m, x, threads=2)(x))
    if name == "gelu":  # PyTorch's vectorised erf gives NaN at +inf, the formula (and we) inf
        want = torch.where(x == float("inf"), x, want)
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-6, rtol=1e-5)
    conv = nn.Conv2d(1, SPECIALS.numel(), 1)
    conv.weight.data.zero_()
    conv.bias.data.copy_(SPECIALS)
    m = nn.Sequential(conv, make(SPECIALS.numel())).eval()
    x = torch.zeros(1, 1, 3, 5)
    with torch.no_grad():
        want = m(x)
    if name == "gelu":
        want = torch.where(conv(x) == float("inf"), conv(x), want)
    torch.testing.assert_close(torch.as_tensor(ps.compile(m, x, threads=2)(x)), want, equal_nan=True,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("make", [nn.Sigmoid, nn.SiLU])
def test_sigmoid_and_silu_vector_exp_over_the_float_range(make):
    """Sigmoid and SiLU take their exp from a vector polynomial (ps_vexp), not libm: every range
    it treats apart (overflow, underflow, the clamps, the polynomial) against PyTorch."""
    x = torch.cat([torch.linspace(-120, 120, 6000), torch.linspace(-1, 1, 2001), torch.linspace(-90, -86, 500),
                   torch.linspace(86, 90, 500), torch.linspace(-106, -100, 500)])
    x = x[: x.numel() // 30 * 30].reshape(1, 3, -1, 10)
    m = nn.Sequential(make()).eval()
    torch.testing.assert_close(torch.as_tensor(ps.compile(m, x, threads=1)(x)), m(x), atol=1e-30, rtol=3e-7)


def _special_bias(layer: nn.Module) -> nn.Module:
    layer.bias.data.copy_(SPECIALS)
    return layer


N = SPECIALS.numel()
# one network per kernel family whose epilogue (bias, activation) sees every special value
# (the fused 1x1 + depthwise kernel only runs on tensors of a MB: test_pw_dw.py)
EPILOGUES = {
    "conv2d": (3, lambda: [_special_bias(nn.Conv2d(3, N, 3, padding=1)), nn.ReLU6()]),
    "pattern_conv": (3, lambda: [nn.Conv2d(3, 8, 1), _special_bias(_prune_3x3(nn.Conv2d(8, N, 3, padding=1))),
                                 nn.ReLU6()]),
    "depthwise": (N, lambda: [_special_bias(nn.Conv2d(N, N, 3, padding=1, groups=N)), nn.ReLU6()]),
    "conv_pool": (3, lambda: [_special_bias(nn.Conv2d(3, N, 3, padding=1)), nn.ReLU6(), nn.MaxPool2d(2)]),
    "linear": (3, lambda: [nn.Flatten(), _special_bias(nn.Linear(3 * 64, N)), nn.ReLU6()]),
}


@pytest.mark.parametrize("kind", sorted(EPILOGUES))
def test_every_kernel_epilogue_keeps_nan_and_inf_as_pytorch(kind):
    """A special bias (NaN, +-Inf, -0.0, values around 6) through each kernel family's fused
    epilogue: NaN stays NaN, Inf maps as PyTorch maps it."""
    channels, layers = EPILOGUES[kind]
    torch.manual_seed(0)
    m = nn.Sequential(*layers()).eval()
    x = torch.randn(2, channels, 8, 8)
    with torch.no_grad():
        want = m(x)
    cm = ps.compile(m, x[:1], threads=2)
    assert kind in {layer["kernel"] for layer in cm.manifest["layers"]}
    torch.testing.assert_close(torch.as_tensor(cm(x)), want, equal_nan=True, atol=1e-5, rtol=1e-5)


class Functional(nn.Module):
    """The functional and method forms; a BatchNorm on the model input (standalone)."""

    def __init__(self):
        super().__init__()
        self.bn, self.c = _bn(3), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x = torch.sigmoid(F.elu(self.c(F.leaky_relu(self.bn(x), 0.2)), alpha=0.5))
        x = torch.clamp(F.hardswish(x.tanh()), min=-0.1)
        return F.selu(F.softplus(F.gelu(F.silu(x)), beta=2.0, threshold=3.0))


def test_functional_forms_and_standalone_bn():
    torch.manual_seed(1)
    m = Functional().eval()
    x = torch.randn(2, 3, 10, 12) * 3
    with torch.no_grad():
        want = m(x)
    g = run_passes(capture_torch(m, x[:1]))
    # leaky_relu fused into the BatchNorm's affine node, elu into the conv, the rest standalone
    assert [(n.op, n.act.split(":")[0]) for n in g.nodes[:3]] == [("affine", "leaky_relu"), ("conv", "elu"),
                                                                   ("act", "sigmoid")]
    assert [n.op for n in g.nodes[3:]] == ["act"] * 7
    assert_close(ps.compile(m, x[:1], threads=2)(x), want)


def test_unsupported_activation_forms_name_the_node():
    with pytest.raises(UnsupportedError, match=r"'1'.*approximate='tanh'"):
        capture_torch(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(approximate="tanh")), torch.zeros(1, 3, 8, 8))
    with pytest.raises(UnsupportedError, match=r"'1'.*Mish"):
        capture_torch(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Mish()), torch.zeros(1, 3, 8, 8))
