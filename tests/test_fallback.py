"""Fallback partitioning (compiler/fallback.py): ops without a kernel run in PyTorch / ONNX
Runtime between compiled segments, the report names them, strict=True refuses as before."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_compiler import assert_close

import patsparse as ps
from patsparse.compiler.fallback import Item, plan
from patsparse.errors import UnsupportedError


class Mixed(nn.Module):
    """conv -> bicubic upsampling (no kernel) -> conv, a residual add across the fallback op, and
    a Mish (no kernel) before the classifier."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.t = nn.Upsample(scale_factor=2, mode="bicubic")
        self.d = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        a = F.relu(self.c(x))
        y = self.d(self.t(a)) + a
        return self.fc(torch.flatten(F.mish(y), 1))


def _kinds(cm) -> list[str]:
    return ["native" if s.native else "fallback" for s in cm.segments]


def test_torch_model_with_unsupported_ops_runs_them_in_pytorch():
    m = Mixed().eval()
    x = torch.randn(3, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"run in PyTorch.*Upsample"):
        cm = ps.compile(m, x[:1], threads=2)
    with torch.no_grad():
        want = m(x)
    assert_close(cm(x), want)
    got = cm(x.numpy())
    assert isinstance(got, np.ndarray)
    assert_close(got, want)
    fell = dict(cm.fallback_ops)
    assert set(fell) == {"t (Upsample)", "add (add)", "mish (mish)"}
    assert "reads two tensors" in fell["add (add)"]
    assert _kinds(cm) == ["native", "fallback", "native", "fallback", "native"]
    report = cm.report()
    assert "3 of 8 ops run in PyTorch" in report and "resize mode 'bicubic'" in report
    assert abs(sum(float(line.split()[1].rstrip("%")) for line in report.splitlines()[1:]
                   if line.startswith("  ") and not line.startswith("      ")) - 100) < 0.5
    with pytest.raises(UnsupportedError, match="bicubic"):
        ps.compile(m, x[:1], strict=True)


def test_onnx_file_with_unsupported_ops_runs_them_in_onnx_runtime(tmp_path):
    m = Mixed().eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, x[:1], str(path), dynamo=False, opset_version=17)  # a fixed batch of 1
    with pytest.warns(UserWarning, match=r"run in ONNX Runtime.*Resize"):
        cm = ps.compile(str(path), threads=2)
    with torch.no_grad():
        assert_close(cm(x), m(x))  # batch 2: the fallback segments run image by image
    assert any("Resize" in op for op, _ in cm.fallback_ops)
    assert _kinds(cm)[:3] == ["native", "fallback", "native"]
    with pytest.raises(UnsupportedError, match="Resize mode cubic"):
        ps.compile(str(path), strict=True)


def _items(spec: str) -> list[Item]:
    """Items from 'name<-reads' tokens, '!' marking an unsupported one."""
    out = []
    for tok in spec.split():
        name, _, reads = tok.partition("<-")
        label = name.strip("!")
        out.append(Item(label, [r for r in reads.split(",") if r], [label], not name.startswith("!")))
    return out


def test_plan_cuts_and_demotes_so_each_compiled_segment_has_one_input_and_one_output():
    # a <- x; b (unsupported) <- a; c <- b; d <- c, a (a second outside input: demoted)
    items = _items("a<-x !b<-a c<-b d<-c,a e<-d")
    segs = plan(items, {"e"}, lambda v: True)
    assert [(s.native, [items[i].label for i in s.items]) for s in segs] == \
        [(True, ["a"]), (False, ["b"]), (True, ["c"]), (False, ["d"]), (True, ["e"])]
    assert "reads two tensors" in items[3].reason
    # a value read later from the middle of a segment ends that segment there (a cut, no demotion)
    items = _items("a<-x b<-a c<-b !d<-a,c")
    segs = plan(items, {"d"}, lambda v: True)
    assert [[items[i].label for i in s.items] for s in segs] == [["a"], ["b", "c"], ["d"]]
    assert all(it.native for it in items[:3])
    # an input a compiled segment cannot take (not an image tensor) demotes the node reading it
    items = _items("!a<-x b<-a c<-b")
    segs = plan(items, {"c"}, lambda v: v != "a")
    assert [(s.native, [items[i].label for i in s.items]) for s in segs] == [(False, ["a", "b"]), (True, ["c"])]
    assert "not one (N, C, H, W), (N, C, L) or (N, features) tensor" in items[1].reason


def test_cli_compile_prints_what_fell_back_and_saves(tmp_path, capsys):
    from patsparse.cli import main as cli_main

    path = tmp_path / "m.onnx"
    m = Mixed().eval()
    torch.onnx.export(m, torch.zeros(1, 3, 8, 8), str(path), dynamo=False, opset_version=17)
    with pytest.warns(UserWarning, match="ONNX Runtime"):
        assert cli_main(["compile", str(path), "-o", str(tmp_path / "out")]) == 0
    out, _ = capsys.readouterr()
    assert "run in ONNX Runtime (fallback)" in out and "Resize mode cubic" in out
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_close(ps.load(tmp_path / "out")(x), m(x))
    np.save(tmp_path / "x.npy", x.numpy())
    assert cli_main(["run", str(tmp_path / "out"), "--input", str(tmp_path / "x.npy"), "--output",
                     str(tmp_path / "y.npy")]) == 0
    assert "run in ONNX Runtime (fallback)" in capsys.readouterr().out
    with torch.no_grad():
        assert_close(np.load(tmp_path / "y.npy"), m(x))
    assert cli_main(["run", str(tmp_path / "out"), "--repeats", "3"]) == 0
    assert "ops in ONNX Runtime: median" in capsys.readouterr().out


def test_a_module_with_two_outputs_runs_with_the_fallback():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.c(x)
            return F.relu(y), F.mish(y)

    m = TwoHeads().eval()
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match="mish"):
        cm = ps.compile(m, x[:1], threads=1)
    got, want = cm(x.numpy()), m(x)
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        assert_close(g, w.detach())


def _saved(tmp_path, m, x):
    with pytest.warns(UserWarning):
        cm = ps.compile(m, x[:1], threads=1)
    return cm, cm.save(tmp_path / "m.partitioned")


@pytest.mark.parametrize("source", ["torch", "onnx"])
def test_partitioned_model_saves_and_loads_with_its_fallback_as_onnx(source, tmp_path):
    """Compiled segments as compiled-model directories, fallback segments as ONNX (a traced PyTorch
    segment exported and checked at save time), run by ONNX Runtime once loaded."""
    m = Mixed().eval()
    x = torch.randn(3, 3, 8, 8)
    if source == "onnx":
        path = tmp_path / "m.onnx"
        torch.onnx.export(m, x[:1], str(path), dynamo=False, opset_version=17)
        with pytest.warns(UserWarning):
            cm = ps.compile(str(path), threads=1)
        saved = ps.save(cm, tmp_path / "m.partitioned") or tmp_path / "m.partitioned"
    else:
        cm, saved = _saved(tmp_path, m, x)
    assert sorted(p.name for p in (saved / "segments").iterdir()) == \
        ["fallback1.onnx", "fallback3.onnx", "native0", "native2", "native4"]
    loaded = ps.load(saved)
    with torch.no_grad():
        assert_close(loaded(x), m(x))
    assert loaded.fallback_ops == cm.fallback_ops
    assert loaded.engine == "ONNX Runtime"
    assert f"{len(cm.fallback_ops)} of {len(cm.items)} ops run in ONNX Runtime" in loaded.report()
    assert_close(ps.load(loaded.save(tmp_path / "again"))(x.numpy()), m(x).detach())  # a loaded one saves too


def test_a_saved_partitioned_model_that_was_tampered_with_fails_to_load(tmp_path):
    import json

    from patsparse.errors import FormatError

    m = Mixed().eval()
    _, saved = _saved(tmp_path, m, torch.randn(1, 3, 8, 8))
    onnx_file = saved / "segments" / "fallback1.onnx"
    good = onnx_file.read_bytes()
    onnx_file.write_bytes(good[:-20] + bytes(20))
    with pytest.raises(FormatError, match="fallback1.onnx: does not match the hash"):
        ps.load(saved)
    onnx_file.write_bytes(good)
    meta_file = saved / "partition.json"
    meta = json.loads(meta_file.read_text())
    meta["segments"][2]["inputs"] = ["nowhere"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"segment 2 reads \['nowhere'\], computed nowhere before it"):
        ps.load(saved)
    meta_file.write_text("{not json")
    with pytest.raises(FormatError):
        ps.load(saved)
    _, saved = _saved(tmp_path / "b", m, torch.randn(1, 3, 8, 8))
    (saved / "segments" / "native2" / "graph.json").write_text("{}")
    with pytest.raises(FormatError, match="native2"):
        ps.load(saved)


def test_a_fallback_segment_with_no_safe_form_is_refused_naming_its_ops(tmp_path):
    class Sizes(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            size = x.shape[-2:]
            return F.interpolate(self.c(x), size=(size[0] * 2, size[1] * 2), mode="bicubic")

    m = Sizes().eval()
    with pytest.warns(UserWarning):
        cm = ps.compile(m, torch.randn(1, 3, 6, 6), threads=1)
    with pytest.raises(UnsupportedError, match=r"cannot save the fallback ops getattr_1 \(getattr\).*other than "
                                               "float32 tensors"):
        cm.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
