"""``patsparse bench``: the three kinds of MODEL the command takes, end to end."""

import json

import pytest
import torch
from torch import nn

from patsparse.cli import main

# the peers read the legacy exporter's opset-17 ONNX (DeepSparse needs it): deliberate here
pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")


def test_bench_onnx_file(tmp_path, capsys):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    rc = main(["bench", str(path), "--engines", "onnxruntime,torch", "--batch", "3", "--repeats", "4",
               "--warmup", "1", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"), "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    r = json.loads((tmp_path / "r.json").read_text())
    ort, torch_engine = r["engines"]
    assert ort["status"] == "ok" and len(ort["samples_ms"]) == 4 and r["input_shape"] == [3, 3, 8, 8]
    assert torch_engine["status"] == "unavailable" and "needs a PyTorch model" in torch_engine["reason"]
    assert "ONNX Runtime (the model was given as ONNX)" in r["reference"]
    assert (tmp_path / "r.png").stat().st_size > 0 and "| ONNX Runtime |" in out


def test_bench_zoo_model_at_a_rate(tmp_path, capsys):
    rc = main(["bench", "resnet18", "--rate", "8", "--width", "0.125", "--engines", "torch,onnxruntime",
               "--repeats", "4", "--warmup", "1", "--json", str(tmp_path / "r.json"), "-q"])
    assert rc == 0, capsys.readouterr()
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["rate"] == 8.0 and r["input_shape"] == [1, 3, 32, 32]
    assert [e["status"] for e in r["engines"]] == ["ok", "ok"]
    assert 6 < r["macs_dense"] / r["macs_sparse"] < 9  # 3x3 convs at 8x, 1x1/linear dense


def test_bench_bad_model(capsys):
    assert main(["bench", "no-such-net", "--engines", "onnxruntime"]) == 1
    assert "no-such-net" in capsys.readouterr().err


def test_onnx_inputs_rejected_clearly(tmp_path):
    from patsparse.bench.model import BenchModel
    from patsparse.errors import FormatError, InputError

    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    two = tmp_path / "two.onnx"
    torch.onnx.export(Two(), (torch.zeros(1, 3), torch.zeros(1, 3)), str(two), dynamo=False, opset_version=17)
    with pytest.raises(InputError, match="one input"):
        BenchModel.from_onnx(two)
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(nn.Conv2d(3, 2, 1), (torch.zeros(2, 3, 4, 4),), str(fixed), dynamo=False, opset_version=17)
    m = BenchModel.from_onnx(fixed)
    assert m.input_shape == (3, 4, 4)
    with pytest.raises(InputError, match="fixed batch of 2"):
        m.materialise(tmp_path / "w", m.example(5))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(FormatError, match="junk.onnx"):
        BenchModel.from_onnx(tmp_path / "junk.onnx")
