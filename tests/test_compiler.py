"""patsparse.compile end to end against PyTorch: ops, zoo models, runtime, save/load, ONNX, CLI."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import patsparse as ps
from patsparse.cli import main as cli_main
from patsparse.compiler.package import load_compiled
from patsparse.compiler.runtime import FORMAT_VERSION, CompiledModel
from patsparse.errors import FormatError, InputError, UnsupportedError


def assert_close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * scale, f"max abs error {err} > 1e-4 * {scale}"


def randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model


def pattern_prune(model, rate=8.0):
    from patsparse.pruning.projection import project_model

    project_model(model, rate=rate)
    return model


class OpsNet(nn.Module):
    """Every supported op spelled the ways models write them."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.c3 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.c4 = nn.Conv2d(24, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.act6 = nn.Hardtanh(0.0, 6.0)
        self.avg = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.ident = nn.Identity()
        self.fc = nn.Linear(24 * 2 * 2, 7)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = torch.add(self.c2(x), x).relu()
        x = self.pool(x)
        x = F.relu6(self.c3(x))
        x = self.act6(self.dw(self.c4(x)) + x)
        x = self.ident(self.drop(self.avg(x)))
        return self.fc(x.view(x.size(0), -1))


def sparse_opsnet():
    torch.manual_seed(0)
    m = randomize_bn(OpsNet()).eval()
    with torch.no_grad():  # pattern weights on c2/c3 (pattern conv), dense elsewhere
        for conv in (m.c2, m.c3):
            w = conv.weight
            keep = torch.rand(w.shape[:2]) < 0.4
            mask = torch.zeros(w.shape[0], w.shape[1], 9)
            mask[..., [1, 3, 4, 5]] = 1
            w.mul_(mask.view_as(w) * keep[..., None, None])
    return m


@pytest.fixture(scope="module")
def opsnet_compiled():
    m = sparse_opsnet()
    return m, ps.compile(m, torch.zeros(1, 3, 16, 16), threads=2)


def test_every_op_matches_torch_batch_and_types(opsnet_compiled):
    m, cm = opsnet_compiled
    kinds = [layer["kernel"] for layer in cm.manifest["layers"]]
    assert kinds.count("pattern_conv") == 2 and "depthwise" in kinds and "maxpool" in kinds
    # one thread team per forward pass: no kernel opens a parallel region of its own
    assert cm.source.count("#pragma omp parallel") == 1 and "omp single" not in cm.source
    assert cm.source.count("ps_barrier();") >= len(kinds)
    assert_same_as_torch(cm, m, torch.randn(3, 3, 16, 16))
    assert cm.is_compiled_patsparse


def assert_same_as_torch(cm, m, x):
    """``cm(x)`` is a tensor with PyTorch's numbers, and ``cm(x.numpy())`` the same as an array."""
    with torch.no_grad():
        want = m(x)
    got = cm(x)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape
    assert_close(got, want)
    got_np = cm(x.numpy())
    assert isinstance(got_np, np.ndarray)
    np.testing.assert_array_equal(got_np, got.numpy())


def test_threads_share_a_model_safely(opsnet_compiled):
    m, cm = opsnet_compiled
    xs = [torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with torch.no_grad():
        want = [m(x) for x in xs]
    got = [None] * 4

    def work(i):
        for _ in range(5):
            got[i] = cm(xs[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for g, w in zip(got, want):
        assert_close(g, w)


def test_bad_input_shape_is_named(opsnet_compiled):
    _, cm = opsnet_compiled
    with pytest.raises(InputError, match=r"\(N, 3, 16, 16\)"):
        cm(torch.zeros(1, 3, 8, 8))


def test_unsupported_op_named_before_codegen(monkeypatch):
    import patsparse.compiler.api as api

    def no_build(*a, **k):
        raise AssertionError("code was generated for an unsupported model")

    monkeypatch.setattr(api, "compile_c", no_build)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Mish())
    with pytest.raises(UnsupportedError, match=r"'1'.*Mish"):
        ps.compile(m, torch.zeros(1, 3, 8, 8), strict=True)
    with pytest.raises(UnsupportedError, match="padding mode 'circular'"):
        ps.compile(nn.Sequential(nn.Conv2d(3, 4, 3, padding_mode="circular")), torch.zeros(1, 3, 8, 8), strict=True)


@pytest.mark.parametrize("name,variant,width,size,rate", [
    ("vgg16_bn", "cifar", 0.125, 32, 8.0),
    ("resnet18", "imagenet", 0.125, 64, 8.0),
    pytest.param("resnet50", "cifar", 0.125, 32, 2.25, marks=pytest.mark.slow),  # bottlenecks: slow tier
    ("mobilenet_v2", "cifar", 0.25, 32, None),
])
def test_zoo_model_small(name, variant, width, size, rate):
    from patsparse.models import get

    torch.manual_seed(0)
    m = randomize_bn(get(name, num_classes=10, width=width, variant=variant)).eval()
    if rate:
        pattern_prune(m, rate)
    x = torch.randn(2, 3, size, size)
    cm = ps.compile(m, x[:1], threads=2)
    with torch.no_grad():
        want = m(x)
    assert_close(cm(x), want)
    if rate:
        assert any(layer["kernel"] == "pattern_conv" for layer in cm.manifest["layers"])


@pytest.mark.slow
@pytest.mark.parametrize("name,variant,size", [
    ("vgg16_bn", "cifar", 32), ("vgg16_bn", "imagenet", 224), ("resnet18", "cifar", 32),
    ("resnet18", "imagenet", 224), ("resnet50", "imagenet", 224), ("mobilenet_v2", "imagenet", 224),
])
def test_zoo_model_full_width(name, variant, size):
    from patsparse.models import get

    torch.manual_seed(0)
    m = randomize_bn(get(name, variant=variant)).eval()
    if name != "mobilenet_v2":
        pattern_prune(m, 8.0)
    x = torch.randn(2, 3, size, size)
    cm = ps.compile(m, x[:1], threads=2)
    with torch.no_grad():
        want = m(x)
    assert_close(cm(x), want)


def test_profile_times_every_layer(opsnet_compiled):
    _, cm = opsnet_compiled
    x = torch.randn(2, 3, 16, 16)
    rows = cm.profile(x, repeats=3, warmup=1)
    assert [r["name"] for r in rows] == [layer["name"] for layer in cm.manifest["layers"]]
    assert all(r["ms"] > 0 and r["gflops"] >= 0 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    want = cm(x)  # profiling leaves the numbers alone
    np.testing.assert_array_equal(cm.run_numpy(x.numpy(), np.zeros(len(rows))), want.numpy())
    with pytest.raises(InputError, match="float64 array of"):
        cm.run_numpy(x.numpy(), np.zeros(len(rows) + 1))


def test_save_load_regenerates_and_checks_hashes(opsnet_compiled, tmp_path):
    import json

    m, cm = opsnet_compiled
    x = torch.randn(2, 3, 16, 16)
    want = cm(x)
    d = cm.save(tmp_path / "net")
    loaded = ps.load(d)
    assert isinstance(loaded, CompiledModel)
    assert d not in loaded.lib_path.parents  # built from the regenerated source, never the directory's
    np.testing.assert_array_equal(loaded(x).numpy(), want.numpy())
    trusted = load_compiled(d, trust_native_code=True)
    assert trusted.lib_path == d / "libmodel.so"
    np.testing.assert_array_equal(trusted(x).numpy(), want.numpy())
    (d / "libmodel.so").unlink()  # nothing but the graph is needed
    man = json.loads((d / "manifest.json").read_text())
    man["toolchain"] = "built-elsewhere"
    man["format_version"] = FORMAT_VERSION - 1  # an older patsparse's: regenerated, not misread
    (d / "manifest.json").write_text(json.dumps(man))
    assert_close(ps.load(d)(x), want)
    assert json.loads((d / "manifest.json").read_text()) == man  # loading never writes
    man["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(FormatError, match="format 99"):
        ps.load(d)
    man["format_version"] = FORMAT_VERSION
    (d / "manifest.json").write_text(json.dumps(man))
    raw = bytearray((d / "graph.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (d / "graph.safetensors").write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="graph.safetensors"):
        ps.load(d)


def test_onnx_file_compiles_to_the_same_numbers(tmp_path):
    pytest.importorskip("onnx")
    m = sparse_opsnet()
    path = tmp_path / "net.onnx"
    torch.onnx.export(m, torch.zeros(1, 3, 16, 16), str(path), dynamo=False, opset_version=17)
    cm = ps.compile(str(path), threads=2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close(cm(x), m(x))
    assert sum(layer["kernel"] == "pattern_conv" for layer in cm.manifest["layers"]) == 2


def test_cli_compile_and_run(tmp_path, capsys):
    m = sparse_opsnet()
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(m, torch.zeros(1, 3, 16, 16), str(onnx_path), dynamo=False, opset_version=17)
    out = tmp_path / "net.compiled"
    assert cli_main(["compile", str(onnx_path), "-o", str(out), "--threads", "1"]) == 0
    assert "pattern_conv" in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli_main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    with torch.no_grad():
        assert_close(np.load(tmp_path / "y.npy"), m(torch.from_numpy(x)).numpy())
    assert cli_main(["run", str(out), "--repeats", "3", "--profile"]) == 0
    printed = capsys.readouterr().out
    assert "median" in printed and "GFLOP/s" in printed and "pattern_conv" in printed
    assert cli_main(["run", str(tmp_path / "missing")]) == 1


ASAN_SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from test_compiler import sparse_opsnet
from test_pattern_conv import pattern_weight, run_conv, reference, assert_close
from patsparse.compiler.api import capture, build_from_graph
flags = ("-fsanitize=address", "-fno-omit-frame-pointer")
# one kernel on exact-size buffers: any read or write past its slack is caught
rng = np.random.default_rng(0)
for stride in (1, 2):
    w = pattern_weight(8, 5, keep=0.5, dense_frac=0.1)
    x = rng.standard_normal((5, 7, 9)).astype(np.float32)
    assert_close(run_conv(w, x, stride=stride, out_pad=0, extra_flags=flags), reference(w, x, stride=stride))
m = sparse_opsnet()
cm = build_from_graph(capture(m, torch.zeros(1, 3, 16, 16)), threads=2, extra_flags=flags)
x = torch.randn(2, 3, 16, 16)
with torch.no_grad():
    err = (cm(x) - m(x)).abs().max().item()
assert err < 1e-4, err
print("ASAN-CLEAN")
"""


def test_generated_code_under_address_sanitizer():
    lib = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not lib or not os.path.isabs(lib):
        pytest.skip("libasan not available")
    tests = str(Path(__file__).parent)
    env = dict(os.environ, LD_PRELOAD=lib, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")
    proc = subprocess.run([sys.executable, "-c", ASAN_SCRIPT.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "ASAN-CLEAN" in proc.stdout, proc.stderr[-3000:]


def test_tuning_picks_a_measured_schedule_and_stays_correct():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()).eval()
    with torch.no_grad():
        m[0].weight.mul_((torch.rand(16, 8, 1, 1) < 0.3) * torch.tensor([0, 1, 0, 1, 1, 1, 0, 0, 0.]).view(1, 1, 3, 3))
    cm = ps.compile(m, torch.zeros(1, 8, 12, 12), threads=2, tune=True)
    assert cm.manifest["tuned"]
    layer = next(l for l in cm.manifest["layers"] if l["kernel"] == "pattern_conv")
    from patsparse.compiler.codegen.pattern_conv import candidate_schedules
    from patsparse.compiler.layout import Layout
    from patsparse.compiler.target import detect

    measured = candidate_schedules(Layout(8, 12, 12), Layout(16, 12, 12), detect(), 2)
    chosen = {k: v for k, v in layer["schedule"].items() if k != "vl"}
    assert any(all(chosen.get(k) == v for k, v in c.items()) for c in measured), chosen
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        assert_close(cm(x), m(x))


def test_onnx_zoo_model_with_shared_weight_aliases(tmp_path):
    """torch's exporter routes some weights through Identity nodes; capture must follow them."""
    from patsparse.models import get

    torch.manual_seed(0)
    m = randomize_bn(get("resnet18", num_classes=10, width=0.125, variant="imagenet")).eval()
    pattern_prune(m, 8.0)
    path = tmp_path / "r18.onnx"
    torch.onnx.export(m, torch.zeros(1, 3, 32, 32), str(path), dynamo=False, opset_version=17)
    cm = ps.compile(str(path), threads=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(cm(x), m(x))


def test_tuner_candidates_include_the_default_dense_schedule():
    """The tuner measures the dense conv's untuned default among its candidates (it used to
    rank them without the input channels and kernel size, and could leave the default out)."""
    from patsparse.compiler.api import capture
    from patsparse.compiler.codegen.graph import generate_kernels
    from patsparse.compiler.codegen.kernels import candidates
    from patsparse.compiler.codegen.plan import plan_graph

    m = nn.Sequential(nn.Conv2d(512, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 32, 1)).eval()
    plan = plan_graph(capture(m, torch.zeros(1, 512, 7, 7)))
    generate_kernels(plan)
    for s in plan.steps:  # a candidate names the knobs it sets; the generator fills in the rest
        default = plan.schedules[s.cname]
        assert any(all(default.get(k) == v for k, v in c.items()) for c in candidates(s, plan.target)), \
            (s.cname, default)


def test_generated_source_is_the_same_in_every_process():
    """The plan must not depend on Python's per-process string hashing: the source is the build
    cache key, so a different buffer order in a new process rebuilt a model compiled before."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, torch\n"
            "from patsparse.compiler.api import capture\n"
            "from patsparse.compiler.codegen.graph import emit_model, generate_kernels, pack_blob\n"
            "from patsparse.compiler.codegen.plan import plan_graph\n"
            "from patsparse.models import get\n"
            "torch.manual_seed(0)\n"
            "m = get('resnet18', num_classes=10, width=0.125, variant='imagenet').eval()\n"
            "plan = plan_graph(capture(m, torch.zeros(1, 3, 32, 32)), threads=2)\n"
            "generate_kernels(plan); pack_blob(plan)\n"
            "print(hashlib.sha256(emit_model(plan).encode()).hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(digests) == 1


def test_runtime_never_imports_the_compiler():
    """The runtime only wraps a built library: loading (which builds) sits above it, so there is
    no api -> runtime -> api circle and a library can be wrapped where no compiler exists."""
    code = ("import sys, patsparse.compiler.runtime; "
            "print(sorted(m for m in sys.modules if m.startswith('patsparse.compiler.') and m != 'patsparse.compiler.runtime'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}).stdout
    assert out.strip() == "[]"
