"""patsparse.to_onnx / `patsparse export-onnx`: random pruned nets through ONNX Runtime (and
OpenVINO when installed) give PyTorch's numbers; zeros stay in place; metadata says what the
graph does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import patsparse as ps
from patsparse import models
from patsparse.cli import main
from patsparse.errors import FormatError, InputError, UnsupportedError
from patsparse.pruning.projection import project_model
from test_compiler import randomize_bn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def random_pruned(name: str, width: float, rate: float, seed: int, in_channels: int = 3) -> nn.Module:
    """A zoo net with random weights and batch-norm statistics (so folding BN matters), pruned."""
    torch.manual_seed(seed)
    model = randomize_bn(models.get(name, num_classes=10, in_channels=in_channels, width=width, variant="cifar"))
    project_model(model, rate=rate)
    return model.eval()


def ort_run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("name, width, rate, seed, shape", [
    ("convnet", 1.0, 4.0, 0, (1, 28, 28)), ("resnet8", 0.5, 8.0, 1, (3, 32, 32)),
    ("resnet18", 0.125, 6.0, 2, (3, 32, 32)), ("vgg16_bn", 0.125, 8.0, 3, (3, 32, 32)),
    ("mobilenet_v2", 0.25, 2.25, 4, (3, 32, 32)), ("resnet50", 0.125, 12.0, 5, (3, 32, 32)),
])
def test_random_pruned_nets_round_trip_through_onnx_runtime(tmp_path, name, width, rate, seed, shape):
    model = random_pruned(name, width, rate, seed, in_channels=shape[0])
    path = ps.to_onnx(model, torch.randn(1, *shape), tmp_path / "m.onnx")
    x = np.random.default_rng(seed).standard_normal((3, *shape)).astype(np.float32)  # batch is dynamic
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert relative_error(ort_run(path, x), want) <= 1e-4
    # zeros in place: every pruned conv weight is still a zero in the file (BN folding scales
    # output channels, which keeps zeros zero)
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d))
    graph = onnx.load(str(path)).graph
    stored = sum(int((onnx.numpy_helper.to_array(t) == 0).sum()) for t in graph.initializer if len(t.dims) == 4)
    assert stored == zeros > 0


def test_openvino_runs_the_export_with_pytorchs_numbers(tmp_path):
    ov = pytest.importorskip("openvino")
    model = random_pruned("resnet18", 0.125, 8.0, 7)
    path = ps.to_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx")
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert relative_error(np.asarray(compiled(x)[0]), want) <= 1e-4


def test_metadata_records_sparsity_shape_and_normalisation(tmp_path):
    model = random_pruned("resnet8", 0.5, 8.0, 0, in_channels=1).train()
    model.patsparse_normalization = {"mean": [0.286], "std": [0.353]}
    path = ps.to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    assert model.training, "export must leave the model in the mode it found it"
    meta = metadata(path)
    assert json.loads(meta["patsparse.input_shape"]) == [1, 28, 28]
    norm = json.loads(meta["patsparse.normalization"])
    assert norm["mean"] == [0.286] and norm["std"] == [0.353] and "255" in norm["formula"]
    sparsity = json.loads(meta["patsparse.sparsity"])
    report = ps.describe(model)
    assert sparsity["library_name"] == "phase2" and sparsity["requested_rate"] == 8.0
    assert len(sparsity["library"]) == 8 and all(len(p) == 4 for p in sparsity["library"])
    assert sparsity["nonzero_parameters"] == report.nonzero_parameters
    assert {k: v["kernels_kept"] for k, v in sparsity["layers"].items()} == \
        {layer.name: layer.kernels_kept for layer in report.layers}
    # explicit normalisation wins; none known means no key rather than a guess
    path = ps.to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m2.onnx", mean=[0.5], std=[0.25])
    assert json.loads(metadata(path)["patsparse.normalization"])["std"] == [0.25]
    del model.patsparse_normalization
    path = ps.to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m3.onnx")
    assert "patsparse.normalization" not in metadata(path)


def test_compiling_the_onnx_file_keeps_its_normalisation(tmp_path):
    """The normalisation to_onnx records travels on when the file is compiled or exported."""
    model = random_pruned("convnet", 0.5, 4.0, 0, in_channels=1)
    model.patsparse_normalization = {"mean": [0.286], "std": [0.353]}
    path = ps.to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    assert ps.compile(path, threads=1).manifest["normalization"] == model.patsparse_normalization
    assert "#define PS_MODEL_INPUT_STD {0.353f}" in (ps.export(path, out_dir=tmp_path / "c") / "model.h").read_text()
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"patsparse.normalization": '{"mean": [0.2], "std": [-1]}'})
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(FormatError, match="bad.onnx: metadata patsparse.normalization"):
        ps.compile(tmp_path / "bad.onnx", threads=1)


def test_bad_arguments_are_named(tmp_path):
    model = random_pruned("convnet", 0.5, 4.0, 0, in_channels=1)
    with pytest.raises(InputError, match="one per input channel"):
        ps.to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", mean=[0.1, 0.2], std=[1.0, 1.0])
    with pytest.raises(InputError, match="both mean and std"):
        ps.to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", mean=[0.1])
    with pytest.raises(InputError, match=r"\(N, C, H, W\) float tensor"):
        ps.to_onnx(model, torch.randn(1, 28, 28), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedError, match="adaptive_avg_pool2d"):  # 8x8 features to 7x7: no ONNX op
        ps.to_onnx(model, torch.randn(1, 1, 32, 32), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_onnx(tmp_path, capsys):
    model = random_pruned("resnet8", 0.5, 8.0, 3, in_channels=1)
    model.patsparse_normalization = {"mean": [0.286], "std": [0.353]}
    ps.save(model, tmp_path / "pruned", input_shape=(1, 28, 28))
    assert main(["export-onnx", str(tmp_path / "pruned"), "-o", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime gives PyTorch's output" in out and "input (batch, 1, 28, 28)" in out
    assert json.loads(metadata(tmp_path / "m.onnx")["patsparse.normalization"])["mean"] == [0.286]
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert relative_error(ort_run(tmp_path / "m.onnx", x), want) <= 1e-4

    assert main(["export-onnx", str(tmp_path / "missing"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "does not exist" in capsys.readouterr().err
    fast = ps.compile(model, torch.zeros(1, 1, 28, 28), threads=1)
    fast.save(tmp_path / "compiled")
    assert main(["export-onnx", str(tmp_path / "compiled"), "-o", str(tmp_path / "x.onnx")]) == 1
    assert "is a compiled model" in capsys.readouterr().err
    with pytest.raises(InputError, match="compiled model"):
        ps.to_onnx(fast, torch.zeros(1, 1, 28, 28), tmp_path / "x.onnx")


class Block(nn.Module):
    """conv -> BN -> activation, with a skip connection when the shape allows one."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, depthwise: bool, act: str):
        super().__init__()
        groups = cin if depthwise and cin == cout else 1
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "none": nn.Identity()}[act]
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        return x + y if self.skip else y


@given(st.data())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_architectures_round_trip(tmp_path, data):
    """Conv nets drawn at random (3x3 and 1x1, strides, depthwise, skips, pools), pruned at a
    random rate with random weights, give ONNX Runtime PyTorch's numbers."""
    seed = data.draw(st.integers(0, 2**16), label="seed")
    torch.manual_seed(seed)
    layers, c, size = [], data.draw(st.sampled_from([1, 3]), label="in channels"), 16
    cin = c
    for i in range(data.draw(st.integers(2, 5), label="blocks")):
        cout = data.draw(st.sampled_from([c, 8, 16]), label=f"width {i}")
        k = 3 if i == 0 else data.draw(st.sampled_from([3, 3, 1]), label=f"kernel {i}")
        stride = data.draw(st.sampled_from([1, 2])) if size > 4 else 1
        layers.append(Block(c, cout, k, stride, data.draw(st.booleans(), label=f"depthwise {i}"),
                            data.draw(st.sampled_from(["relu", "relu6", "none"]), label=f"act {i}")))
        size //= stride
        c = cout
        if size > 4 and data.draw(st.booleans(), label=f"pool {i}"):
            layers.append(data.draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
            size //= 2
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5))
    randomize_bn(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    rate = data.draw(st.sampled_from([2.25, 4.0, 8.0]), label="rate")
    try:
        project_model(model, rate=rate, layers=convs)
    except InputError:  # a rate that only depthwise (pattern-only) layers cannot reach
        project_model(model, rate=2.25, layers=convs)
    model.eval()
    path = ps.to_onnx(model, torch.randn(1, cin, 16, 16), tmp_path / "m.onnx")
    x = np.random.default_rng(seed).standard_normal((2, cin, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert relative_error(ort_run(path, x), want) <= 1e-4
