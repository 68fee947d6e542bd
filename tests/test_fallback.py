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
    with pytest.raises(UnsupportedError, match="cannot save.*3 ops of this model run in PyTorch"):
        cm.save("unused")
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


def test_cli_compile_prints_what_fell_back_and_refuses_to_save(tmp_path, capsys):
    from patsparse.cli import main as cli_main

    path = tmp_path / "m.onnx"
    torch.onnx.export(Mixed().eval(), torch.zeros(1, 3, 8, 8), str(path), dynamo=False, opset_version=17)
    with pytest.warns(UserWarning, match="ONNX Runtime"):
        assert cli_main(["compile", str(path), "-o", str(tmp_path / "out")]) != 0
    out, err = capsys.readouterr()
    assert "run in ONNX Runtime (fallback)" in out and "Resize mode cubic" in out
    assert "cannot save" in err and not (tmp_path / "out").exists()


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
