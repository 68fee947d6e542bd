"""save/load of pruned models: round trip, zoo rebuild, tamper detection, compiled dispatch."""

import json

import pytest
import torch
from torch import nn

import patsparse as ps
from patsparse.errors import FormatError, InputError
from patsparse.pruning.projection import project_model


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.Conv2d(16, 8, 1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def pruned(**kw):
    torch.manual_seed(0)
    m = UserNet()
    project_model(m, 6.0, "phase3", **kw)
    return m


def test_round_trip_user_model(tmp_path):
    m = pruned(layers=["body.0", "body.2", "body.3"], conv1x1="connectivity")  # body.3: 1x1, the last conv
    ps.save(m, tmp_path / "m.pats")
    assert {p.name for p in (tmp_path / "m.pats").iterdir()} == {"model.safetensors", "model.json"}
    with pytest.raises(FormatError, match="pass load\\(path, model="):
        ps.load(tmp_path / "m.pats")
    back = ps.load(tmp_path / "m.pats", model=UserNet())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(back(x), m.eval()(x))
    for name, e in m.patsparse_spec["layers"].items():
        assert torch.equal(back.patsparse_spec["layers"][name]["kernels"], e["kernels"])
    assert back.patsparse_spec["library"] == m.patsparse_spec["library"]
    assert str(ps.describe(back)) == str(ps.describe(m))


def test_zoo_model_rebuilt_from_arch(tmp_path):
    from patsparse import models

    arch = {"name": "resnet8", "num_classes": 10, "in_channels": 1, "width": 0.5, "variant": "cifar"}
    m = models.get(**arch)
    project_model(m, 8.0)
    ps.save(m, tmp_path / "z", arch=arch)
    back = ps.load(tmp_path / "z")
    x = torch.randn(1, 1, 28, 28)
    assert torch.equal(back(x), m.eval()(x))
    assert back.patsparse_arch == arch


def _tamper(path, fn):
    meta = json.loads((path / "model.json").read_text())
    fn(meta)
    (path / "model.json").write_text(json.dumps(meta))


def test_tampered_spec_names_layer_and_kernel(tmp_path):
    m = pruned()
    ps.save(m, tmp_path / "m")
    layer = "body.0"
    ids = m.patsparse_spec["layers"][layer]["kernels"]
    o, i = [int(v) for v in torch.nonzero(ids >= 0)[0]]
    # a kept kernel claimed pruned: its weights are now outside the mask
    _tamper(tmp_path / "m", lambda meta: meta["spec"]["layers"][layer]["kernels"][o].__setitem__(i, -1))
    with pytest.raises(FormatError, match=f"layer 'body.0' kernel \\(filter {o}, channel {i}\\) is pruned"):
        ps.load(tmp_path / "m", model=UserNet())
    ps.save(m, tmp_path / "m")
    _tamper(tmp_path / "m", lambda meta: meta["spec"]["layers"][layer]["kernels"][0].__setitem__(0, 4))
    with pytest.raises(FormatError, match="pattern id 4, out of range \\[-1, 3\\]"):
        ps.load(tmp_path / "m", model=UserNet())
    ps.save(m, tmp_path / "m")
    _tamper(tmp_path / "m", lambda meta: meta.__setitem__("version", 99))
    with pytest.raises(FormatError, match="version 99"):
        ps.load(tmp_path / "m", model=UserNet())


def test_tampered_weights_detected(tmp_path):
    from safetensors.torch import load_file, save_file

    m = pruned()
    ps.save(m, tmp_path / "m")
    w = load_file(str(tmp_path / "m" / "model.safetensors"))
    ids = m.patsparse_spec["layers"]["body.2"]["kernels"]
    o, i = [int(v) for v in torch.nonzero(ids < 0)[0]]
    w["body.2.weight"][o, i, 1, 1] = 0.5
    save_file(w, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(FormatError, match="does not match the hash"):
        ps.load(tmp_path / "m", model=UserNet())
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    del meta["weights_sha256"]  # a file written without the hash: the spec check still catches it
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=f"'body.2' kernel \\(filter {o}, channel {i}\\)"):
        ps.load(tmp_path / "m", model=UserNet())


def test_flipped_bit_in_a_kept_weight_is_detected(tmp_path):
    m = pruned()
    ps.save(m, tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x01  # the last weight's mantissa: the file still parses, the spec still holds
    f.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="model.safetensors does not match the hash"):
        ps.load(tmp_path / "m", model=UserNet())


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError):
        ps.save(42, tmp_path / "x")
    m = pruned()
    with torch.no_grad():
        m.body[0].weight.add_(1.0)  # breaks the attached spec
    with pytest.raises(InputError, match="changed after pruning"):
        ps.save(m, tmp_path / "x")
    with pytest.raises(FormatError, match="not a saved patsparse model"):
        ps.load(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    with pytest.raises(FormatError, match="not found"):
        ps.load(tmp_path / "other")
    ps.save(UserNet(), tmp_path / "dense")  # a dense model saves without a spec
    with pytest.raises(FormatError, match="does not match"):
        ps.load(tmp_path / "dense", model=nn.Sequential(nn.Conv2d(1, 8, 3)))


def test_compiled_dispatch_through_save_and_load(tmp_path):
    """ps.save on a compiled model writes its own directory; ps.load of it returns a CompiledModel."""
    from patsparse.compiler.runtime import CompiledModel

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    project_model(m, 4.0)
    x = torch.randn(1, 1, 8, 8)
    cm = ps.compile(m, x)  # default build cache: a re-run of the suite does not rebuild
    ps.save(cm, tmp_path / "c")
    assert (tmp_path / "c" / "manifest.json").is_file()
    back = ps.load(tmp_path / "c")
    assert isinstance(back, CompiledModel)
    y = torch.as_tensor(back(x))
    assert torch.allclose(y, m(x).detach(), atol=1e-4)


def test_zoo_model_round_trips_without_an_instance(tmp_path):
    import patsparse as ps
    from patsparse import models
    from patsparse.pruning.projection import project_model

    m = models.get("convnet", num_classes=10, in_channels=1, width=0.5, variant="cifar")
    project_model(m, rate=8.0, library="phase2")
    ps.save(m, tmp_path / "m.pats")
    back = ps.load(tmp_path / "m.pats")
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), m.eval()(x))
    assert back.patsparse_arch == m.patsparse_arch


def test_input_shape_is_recorded_and_checked(tmp_path):
    from patsparse import models
    from patsparse.bench.model import BenchModel

    m = models.get("convnet", num_classes=10, in_channels=1, width=0.5)
    ps.save(m, tmp_path / "a", input_shape=(1, 28, 28))
    back = ps.load(tmp_path / "a")
    assert back.patsparse_input_shape == (1, 28, 28)
    assert BenchModel.from_saved(tmp_path / "a").input_shape == (1, 28, 28)  # not the zoo's 32x32
    ps.save(back, tmp_path / "b")  # carried by the loaded model
    assert ps.load(tmp_path / "b").patsparse_input_shape == (1, 28, 28)
    with pytest.raises(InputError, match=r"input_shape must be one image's \(C, H, W\)"):
        ps.save(m, tmp_path / "c", input_shape=(28, 28))
    _tamper(tmp_path / "a", lambda meta: meta.update(input_shape=[1, -28, 28]))
    with pytest.raises(FormatError, match="input_shape"):
        ps.load(tmp_path / "a")


def test_input_normalisation_travels_from_a_trained_model(tmp_path):
    """patsparse train records mean/std; load keeps them, save writes them again."""
    from patsparse import models
    from patsparse.train import save_model

    arch = {"name": "convnet", "num_classes": 3, "in_channels": 1, "width": 1.0, "variant": "cifar"}
    m = models.get(**arch)
    save_model(tmp_path / "run", m, {"model": arch, "input_shape": [1, 28, 28], "mean": [0.29], "std": [0.35]})
    back = ps.load(tmp_path / "run")
    assert back.patsparse_normalization == {"mean": [0.29], "std": [0.35]}
    ps.save(back, tmp_path / "again")
    meta = json.loads((tmp_path / "again" / "model.json").read_text())
    assert (meta["mean"], meta["std"]) == ([0.29], [0.35])
    assert ps.load(tmp_path / "again").patsparse_normalization == back.patsparse_normalization
