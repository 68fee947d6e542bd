"""The OpenCL target against PyTorch, on whatever OpenCL device exists (PoCL in CI): every op,
the zoo models, random networks, schedules, tuning, save/load, and the errors of bad input."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import patsparse as ps
from patsparse.errors import BuildError, FormatError, InputError, UnsupportedError

cl = pytest.importorskip("pyopencl", reason="pyopencl is not installed (pip install 'patsparse[opencl]')")

from patsparse.compiler.api import capture  # noqa: E402
from patsparse.compiler.opencl import OpenCLModel, build_opencl, load, opencl_target  # noqa: E402
from patsparse.compiler.opencl.device import (check_fp32, check_memory, describe_device,  # noqa: E402
                                              list_devices, open_device, target_device)
from patsparse.compiler.target import get_target  # noqa: E402

try:
    list_devices()
except UnsupportedError as e:
    pytest.skip(f"no OpenCL platform on this machine: {e}", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
from test_compiler import (assert_close, assert_same_as_torch, pattern_prune, randomize_bn,  # noqa: E402
                           sparse_opsnet)


@pytest.fixture(scope="module")
def opsnet():
    m = sparse_opsnet()
    return m, ps.compile(m, torch.zeros(1, 3, 16, 16), target="opencl")


def test_every_op_matches_torch_any_batch_and_type(opsnet):
    m, cm = opsnet
    kinds = [layer["kernel"] for layer in cm.manifest["layers"]]
    assert kinds.count("pattern_conv") == 2 and {"conv2d", "depthwise", "maxpool", "avgpool", "linear"} <= set(kinds)
    # activations and residual adds are fused into the producing kernels, as on the CPU path
    assert len(kinds) == 8 and "ACT_relu6(" in cm.source and "res[" in cm.source
    for n in (3, 1, 5, 3):  # batch sizes change and come back
        assert_same_as_torch(cm, m, torch.randn(n, 3, 16, 16))
    assert cm(np.zeros((0, 3, 16, 16), np.float32)).shape == (0, 7)


def test_pattern_kernel_code_is_specialised(opsnet):
    _, cm = opsnet
    code = next(s.kernel.code for s in cm.plan.steps if s.kind == "pattern_conv")
    # one loop per mask run, taps at constant offsets, never a branch on the pattern id
    # taps 1, 3, 4, 5 of a row stride of 32: offsets 1, 32, 33, 34
    loop = next(ln for ln in code.splitlines() if "/* mask 0x03a */" in ln)
    assert all(f"xc[{o}]" in loop for o in (1, 32, 33, 34)) and "if" not in loop


def test_schedules_local_tiles_and_odd_shapes():
    m = sparse_opsnet()
    g = capture(m, torch.zeros(1, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = m(x)
    names = {layer["cl_name"]: layer["kernel"] for layer in build_opencl(g).manifest["layers"]}
    for pat in ({"tw": 4, "th": 4, "fg": 4, "local": 1, "cc": 3}, {"tw": 8, "th": 2, "fg": 3, "local": 1, "cc": 16},
                {"tw": 16, "th": 1, "fg": 5, "local": 0, "cc": 1}):
        scheds = {k: pat for k, v in names.items() if v == "pattern_conv"}
        scheds.update({k: {"lx": 4, "ly": 2, "tf": 3} for k, v in names.items() if v == "conv2d"})
        cm = build_opencl(capture(m, torch.zeros(1, 3, 16, 16)), schedules=scheds)
        assert_close(cm(x), want)
        if pat["local"]:
            assert "__local float tile[" in cm.source and "barrier(CLK_LOCAL_MEM_FENCE)" in cm.source


def test_fully_pruned_layer_and_non_square_plane():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1), nn.ReLU()).eval()
    with torch.no_grad():
        m[2].weight.zero_()  # no kernel left: the output is the bias
        m[0].weight[:, :, 0, :] = 0
        m[0].weight[:, :, :, 0] = 0  # the same 4 taps in every kernel
    x = torch.randn(2, 3, 9, 7)
    cm = ps.compile(m, x[:1], target="opencl")
    assert [layer["kernel"] for layer in cm.manifest["layers"]] == ["pattern_conv", "pattern_conv"]
    with torch.no_grad():
        assert_close(cm(x), m(x))


@pytest.mark.parametrize("name", ["opsnet", "vgg16_bn"])
def test_gpu_default_schedules_run_correctly_here(name):
    """The schedules a GPU gets by default (local-memory tiles, filter groups) are valid code:
    generated for a GPU-like description of this device and run on it."""
    from patsparse.compiler.opencl.plan import generate_all, plan_graph
    from patsparse.models import get

    if name == "opsnet":
        m, size = sparse_opsnet(), 16
    else:
        torch.manual_seed(0)
        m, size = pattern_prune(randomize_bn(get(name, num_classes=10, width=0.25, variant="cifar")).eval()), 32
    x = torch.randn(2, 3, size, size)
    gpu = dataclasses.replace(describe_device(open_device()), device_type="gpu", local_mem_bytes=32 << 10)
    plan = plan_graph(capture(m, x[:1]))
    generate_all(plan, gpu)
    scheds = {s.cname: s.kernel.schedule for s in plan.steps}
    assert any(sc.get("local") and sc["fg"] > 1 for sc in scheds.values())
    cm = build_opencl(capture(m, x[:1]), schedules=scheds)
    with torch.no_grad():
        assert_close(cm(x), m(x))


def test_threads_share_a_model_safely(opsnet):
    import test_compiler  # the CPU model's test, on the OpenCL model (same (model, compiled) pair)

    test_compiler.test_threads_share_a_model_safely(opsnet)


@pytest.mark.parametrize("name,variant,width,size,rate", [
    ("vgg16_bn", "cifar", 0.125, 32, 8.0),
    ("resnet18", "imagenet", 0.125, 64, 8.0),
    ("resnet8", "cifar", 0.5, 32, 4.0),
    ("convnet", "cifar", 1.0, 28, 4.0),
    ("mobilenet_v2", "cifar", 0.25, 32, None),
    pytest.param("resnet50", "cifar", 0.125, 32, 2.25, marks=pytest.mark.slow),
    pytest.param("resnet18", "cifar", 1.0, 32, 8.0, marks=pytest.mark.slow),  # full widths: slow tier
    pytest.param("mobilenet_v2", "imagenet", 1.0, 224, None, marks=pytest.mark.slow),
])
def test_zoo_model_small(name, variant, width, size, rate):
    from patsparse.models import get

    torch.manual_seed(0)
    in_ch = 1 if name == "convnet" else 3
    m = randomize_bn(get(name, num_classes=10, width=width, variant=variant, in_channels=in_ch)).eval()
    if rate:
        pattern_prune(m, rate)
    x = torch.randn(2, in_ch, size, size)
    cm = ps.compile(m, x[:1], target="opencl")
    with torch.no_grad():
        want = m(x)
    assert_close(cm(x), want)
    if rate:
        assert any(layer["kernel"] == "pattern_conv" for layer in cm.manifest["layers"])


class RandomNet(nn.Module):
    """A random stack: 3x3 / 1x1 / strided / depthwise convs, pattern-sparse or dense, with
    BN, ReLU or ReLU6, residual adds, pooling and a linear head."""

    def __init__(self, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.plan, c, size = [], 3, 16
        self.layers, self.acts = nn.ModuleList(), nn.ModuleList()
        for _ in range(int(rng.integers(3, 7))):
            kind = rng.choice(["conv3", "conv3", "conv1", "dw", "pool"])
            if kind == "pool" and size >= 4:
                mod, act = (nn.MaxPool2d(2) if rng.random() < 0.5 else nn.AvgPool2d(3, 2, padding=1)), nn.Identity()
                size = size // 2
                self.plan.append(False)
            elif kind == "dw":
                mod, act = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)), nn.ReLU6()
                self.plan.append(True)
            else:
                k = 3 if kind == "conv3" else 1
                stride = 2 if size >= 8 and rng.random() < 0.3 else 1
                f = int(rng.choice([4, 8, 13, 16]))
                conv = nn.Conv2d(c, f, k, stride=stride, padding=k // 2, bias=bool(rng.random() < 0.5))
                if k == 3 and rng.random() < 0.7:  # pattern-sparse: 4 of 9 taps, some kernels pruned
                    with torch.no_grad():
                        masks = torch.zeros(f, c, 9)
                        for i in range(f):
                            for j in range(c):
                                if rng.random() < 0.7:
                                    masks[i, j, rng.choice(9, 4, replace=False)] = 1
                        conv.weight.mul_(masks.view_as(conv.weight))
                act = nn.ReLU() if rng.random() < 0.7 else nn.ReLU6()
                mod = nn.Sequential(conv, nn.BatchNorm2d(f))
                self.plan.append(f == c and stride == 1 and rng.random() < 0.5)  # a residual add
                c, size = f, (size - 1) // stride + 1
            self.layers.append(mod)
            self.acts.append(act)
        self.head = nn.Linear(c * size * size, 5)

    def forward(self, x):
        for mod, act, residual in zip(self.layers, self.acts, self.plan):
            y = mod(x)
            x = act(y + x if residual else y)
        return self.head(torch.flatten(x, 1))


@pytest.mark.parametrize("seed", range(6))
def test_random_networks(seed):
    torch.manual_seed(seed)
    m = randomize_bn(RandomNet(seed)).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = m(x)
    assert_close(ps.compile(m, x[:1], target="opencl")(x), want)


def test_tuning_picks_measured_schedules_and_stays_correct():
    m = sparse_opsnet()
    cm = ps.compile(m, torch.zeros(1, 3, 16, 16), target="opencl", tune=True)
    from patsparse.compiler.opencl.schedule import candidates

    dev = describe_device(open_device())
    assert cm.manifest["tuned"]
    for layer, s in zip(cm.manifest["layers"], cm.plan.steps):
        assert layer["schedule"] in candidates(s.kind, s.in_layout, s.out_layout, s.stride, dev)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close(cm(x), m(x))


def test_save_load_round_trip_and_tampering(opsnet, tmp_path):
    m, cm = opsnet
    d = tmp_path / "m.ocl"
    ps.save(cm, d)
    assert {"manifest.json", "model.cl", "weights.bin", "graph.json", "graph.safetensors"} <= {p.name for p in d.iterdir()}
    again = ps.load(d)  # dispatched on the manifest's format
    assert isinstance(again, OpenCLModel) and again.manifest["target"] == "opencl"
    x = torch.randn(2, 3, 16, 16)
    np.testing.assert_array_equal(again(x).numpy(), cm(x).numpy())
    assert again.source == cm.source
    src = (d / "model.cl").read_text()
    (d / "model.cl").write_text(src.replace("ACT_relu(", "ACT_none(", 1))
    with pytest.raises(FormatError, match="model.cl does not match"):
        load(d)
    (d / "model.cl").write_text(src)
    raw = (d / "weights.bin").read_bytes()
    (d / "weights.bin").write_bytes(raw[:-4] + b"\0\0\x80\x3f")
    with pytest.raises(FormatError, match="weights.bin does not match"):
        load(d)
    (d / "weights.bin").write_bytes(raw)
    from patsparse.checkpoint import load_tensors, save_tensors

    t = load_tensors(d / "graph.safetensors")
    key = next(k for k in t if k.endswith(".weight"))
    t[key] = t[key] * 2
    save_tensors(d / "graph.safetensors", t)
    with pytest.raises(FormatError, match="does not regenerate"):
        load(d)
    (d / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(FormatError, match="not an OpenCL-compiled"):
        load(d)


def test_the_input_normalisation_travels_through_save_and_load(tmp_path):
    m = sparse_opsnet()
    m.patsparse_normalization = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}
    cm = ps.compile(m, torch.zeros(1, 3, 16, 16), target="opencl")
    assert cm.manifest["normalization"] == m.patsparse_normalization
    d = cm.save(tmp_path / "m.ocl")
    assert ps.load(d).manifest["normalization"] == m.patsparse_normalization
    man = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**man, "normalization": {"mean": [0.5], "std": [1.0]}}))
    with pytest.raises(FormatError, match="normalization.*one per input channel"):
        load(d)


def test_cli_compile_target_opencl(tmp_path, capsys):
    from patsparse.cli import main as cli_main

    m = sparse_opsnet()
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(m, torch.zeros(1, 3, 16, 16), str(onnx_path), dynamo=False, opset_version=17)
    out = tmp_path / "out"
    assert cli_main(["compile", str(onnx_path), "--target", "opencl", "-o", str(out)]) == 0
    assert "OpenCL device" in capsys.readouterr().out
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = m(x)
    assert_close(load(out)(x), want)
    # patsparse run opens it for the device at hand, on a file and timed
    np.save(tmp_path / "x.npy", x.numpy())
    assert cli_main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    assert_close(torch.from_numpy(np.load(tmp_path / "y.npy")), want)
    assert cli_main(["run", str(out), "--batch", "1", "--repeats", "2"]) == 0
    assert "OpenCL device" in capsys.readouterr().out
    assert cli_main(["run", str(out), "--profile"]) != 0
    assert "--threads and --profile are for CPU-compiled ones" in capsys.readouterr().err


def test_unknown_target_is_named(tmp_path, capsys):
    from patsparse.cli import main as cli_main

    with pytest.raises(InputError, match="unknown target 'vulkan'; known targets: .*opencl"):
        ps.compile(nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), target="vulkan")
    assert cli_main(["compile", str(tmp_path / "nothing.onnx"), "--target", "vulkan", "-o", str(tmp_path / "o")]) != 0
    assert "unknown target 'vulkan'" in capsys.readouterr().err


def test_opencl_target_in_the_registry_names_its_device():
    """"opencl" is a registry Target of kind opencl (no C toolchain, the default device);
    opencl_target(spec) is the same target with a chosen device's facts, and compiles there."""
    t = get_target("opencl")
    assert t.kind == "opencl" and t.cpu is None and t.toolchain is None and t.opencl is None
    chosen = opencl_target(0)
    dev = describe_device(list_devices()[0])
    assert chosen.kind == "opencl" and chosen.opencl == dev
    m = sparse_opsnet()
    cm = ps.compile(m, torch.zeros(1, 3, 16, 16), target=chosen)
    assert isinstance(cm, OpenCLModel) and cm.device == dev and cm.manifest["device"] == dev.name
    with pytest.raises(UnsupportedError, match="not present here"):
        target_device(dataclasses.replace(chosen, opencl=dataclasses.replace(dev, name="no such device")))
    with pytest.raises(UnsupportedError, match="no CPU code generator"):
        ps.export(m, torch.zeros(1, 3, 16, 16), "unused", target="opencl")


def test_builds_on_the_portable_graph():
    """The CPU lowering's fusions (conv + max pool, 1x1 + depthwise) are not applied: the OpenCL
    plan has a kernel per portable node, whatever this CPU would fuse."""
    from patsparse.compiler.codegen.lowering import lower
    from patsparse.compiler.target import generic_vectors

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 256, 1), nn.ReLU6(),
                      nn.Conv2d(256, 256, 3, padding=1, groups=256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(256, 4)).eval()
    x = torch.randn(2, 3, 128, 128)
    cpu = capture(m, x[:1])
    lower(cpu, generic_vectors(16, 32))  # a 32-register CPU fuses both pairs
    assert [sorted(k for k in ("pool", "expand") if k in n.attrs) for n in cpu.nodes][:2] == [["pool"], ["expand"]]
    cm = ps.compile(m, x[:1], target="opencl")
    assert [layer["kernel"] for layer in cm.manifest["layers"]] == \
        ["conv2d", "maxpool", "conv2d", "depthwise", "gap", "linear"]
    with torch.no_grad():
        assert_close(cm(x), m(x))


def test_no_opencl_platform_is_a_clear_error(tmp_path):
    # an ICD loader pointed at an empty vendor directory sees no platform at all
    env = {**os.environ, "OCL_ICD_VENDORS": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    code = ("import torch, patsparse as ps\n"
            "try:\n    ps.compile(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 8, 8), target='opencl')\n"
            "except ps.UnsupportedError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERR target 'opencl': no OpenCL platform or device found" in out.stdout, out.stdout + out.stderr


def test_device_without_float32_or_memory_is_refused(opsnet):
    _, cm = opsnet
    dev = describe_device(open_device())
    with pytest.raises(UnsupportedError, match="does not support IEEE float32"):
        check_fp32(dataclasses.replace(dev, fp32_config=0))
    small = dataclasses.replace(dev, global_mem_bytes=4096, max_alloc_bytes=4096)
    with pytest.raises(UnsupportedError, match=r"weights buffer needs .* MiB, above the largest allocation"):
        check_memory(small, cm._buffer_bytes(1), "model at batch 1")
    with pytest.raises(UnsupportedError, match=r"batch of 4: needs .* MiB of device memory"):
        check_memory(dataclasses.replace(dev, global_mem_bytes=1 << 16), cm._buffer_bytes(4), "batch of 4")


def test_kernel_build_failure_names_the_layer_and_keeps_source_and_log(monkeypatch, tmp_path):
    from patsparse.compiler.opencl.plan import emit_source, generate_all, plan_graph
    from patsparse.compiler.opencl.runtime import build_program

    monkeypatch.setenv("PATSPARSE_CACHE", str(tmp_path))
    d = open_device()
    plan = plan_graph(capture(sparse_opsnet(), torch.zeros(1, 3, 16, 16)))
    generate_all(plan, describe_device(d))
    broken = plan.steps[3]  # 'c3', a pattern conv: one undeclared name in its body
    broken.kernel.code = broken.kernel.code.replace("acc +=", "acc += undeclared_name +", 1)
    with pytest.raises(BuildError, match=r"layer 'c3'.*undeclared_name.*kept in") as e:
        build_program(cl.Context([d]), emit_source(plan), plan, describe_device(d))
    kept = Path(str(e.value).split("kept in ")[1])
    assert "undeclared_name" in (kept / "model.cl").read_text() and "undeclared_name" in (kept / "build.log").read_text()


@pytest.mark.parametrize("tail,why", [((nn.ReLU(), nn.Sigmoid()), "'2': channelwise has no OpenCL kernel"),
                                      ((nn.ReflectionPad2d(1),), "'1': pad has no OpenCL kernel"),
                                      ((nn.MaxPool2d(3, 2, ceil_mode=True),), "'1': pooling with ceil_mode"),
                                      ((nn.Hardswish(),), "'0': activation 'hardswish' is not in the OpenCL")])
def test_ops_without_an_opencl_kernel_are_refused_naming_the_layer(tail, why):
    """Not a kernel of another op: each CPU-only op kind is an UnsupportedError before any source."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3), *tail).eval()
    with pytest.raises(UnsupportedError, match=f"layer {why}"):
        ps.compile(m, torch.zeros(1, 3, 9, 9), target="opencl")
