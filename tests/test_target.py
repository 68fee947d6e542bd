"""Targets: the registry, the dialects' rendering, and the portable target end to end on this host."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import patsparse as ps
from patsparse.compiler.api import build_from_graph
from patsparse.compiler.codegen.base import prelude_c
from patsparse.compiler.codegen.common import helpers_c
from patsparse.compiler.codegen.pattern_conv import support_c
from patsparse.compiler.ir import Graph
from patsparse.compiler.target import TARGETS, detect, generic_vectors, get_target, known_targets
from patsparse.compiler.target.dialect import CDialect
from patsparse.errors import BuildError, InputError, UnsupportedError
from test_compiler import assert_close, randomize_bn, sparse_opsnet

CODEGEN = Path(ps.__file__).parent / "compiler" / "codegen"
# what only a target's dialect may say: x86 intrinsics and headers, NEON headers, inline asm
ISA_WORDS = re.compile(r"_mm\d*_|__m\d+|immintrin|arm_neon|__AVX|__ARM_NEON|__builtin_ia32|__asm__|\"\+[vwx]\"")


def test_registry_names_and_errors():
    assert {"x86-64-avx512", "x86-64-avx2", "aarch64-neon", "generic"} <= set(TARGETS)
    assert get_target("aarch64-linux-gnu") is TARGETS["aarch64-neon"]
    assert get_target("native") == detect() == get_target(None)
    with pytest.raises(InputError, match="unknown target 'sparc'.*aarch64-neon.*opencl.*x86-64-avx2"):
        get_target("sparc")
    assert set(known_targets()) >= {"native", "aarch64-linux-gnu", "x86_64", "opencl"}
    assert get_target("opencl").kind == "opencl" and get_target("opencl").cpu is None
    neon = TARGETS["aarch64-neon"].cpu
    assert (neon.lanes, neon.vector_registers, neon.vreg_constraint) == (4, 32, "w")
    with pytest.raises(InputError, match="lanes must be 4, 8 or 16"):
        generic_vectors(6)


def test_host_detection_matches_the_compiler():
    host = detect()
    assert host.kind == "cpu" and host.name in TARGETS
    assert host.cpu == TARGETS[host.name].cpu  # capabilities from the registry, flags for this host


@pytest.mark.parametrize("name", sorted(n for n, t in TARGETS.items() if t.kind == "cpu"))
def test_every_slot_is_filled_and_isa_words_stay_in_the_dialect(name):
    t = TARGETS[name]
    text = prelude_c(t) + helpers_c(t) + support_c(t)
    assert "/*@" not in text
    for word in ("PS_KEEP", "ps_load_s2", "PC_SPREAD4", "vmax", "vload_lanes", "ps_pause"):
        assert word in text
    if name == "aarch64-neon":
        assert '"+w"' in text and "#define VL 4" in text and "_mm" not in text and "immintrin" not in text
    if name == "generic":
        assert "__asm__" not in text and "_mm" not in text


def test_kernel_generators_name_no_isa():
    """Generator modules speak the dialect's vocabulary only (docstrings may mention machines)."""
    for path in sorted(CODEGEN.glob("*.py")):
        code = re.sub(r'"""(?:.|\n)*?"""', "", path.read_text())  # docstrings
        code = "\n".join(line.split("#")[0] if not line.lstrip().startswith("#") else "" for line in code.splitlines())
        found = ISA_WORDS.findall(code)
        assert not found, f"{path.name} names an ISA: {sorted(set(found))}"


def test_dialect_rejects_an_unknown_slot():
    with pytest.raises(KeyError, match="nonsense"):
        TARGETS["generic"].cpu.dialect.render("/*@nonsense@*/\n")
    assert isinstance(TARGETS["generic"].cpu.dialect, CDialect)


def test_non_cpu_target_is_refused_by_cpu_generators():
    with pytest.raises(UnsupportedError, match="'opencl' \\(opencl\\) has no CPU code generator"):
        TARGETS["opencl"].require_cpu("pattern conv")


def test_missing_compiler_names_the_package():
    t = replace(TARGETS["aarch64-neon"], toolchain=replace(TARGETS["aarch64-neon"].toolchain, cc="no-such-cc-xyz"))
    with pytest.raises(BuildError, match="apt-get install gcc-aarch64-linux-gnu"):
        t.toolchain.compiler()


def test_compile_refuses_a_target_of_another_machine():
    with pytest.raises(InputError, match="use patsparse.export"):
        ps.compile(sparse_opsnet(), torch.zeros(1, 3, 16, 16), target="aarch64-neon")
    if "avx512fp16" in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has AVX512-FP16, the extension the check below asks for")
    host = detect()
    fp16 = replace(host, name="x86-fp16", toolchain=replace(host.toolchain, cflags=(*host.toolchain.cflags, "-mavx512fp16")))
    with pytest.raises(InputError, match="needs __AVX512FP16__.*lacks"):
        ps.compile(sparse_opsnet(), torch.zeros(1, 3, 16, 16), target=fp16)


@pytest.mark.parametrize("lanes,registers", [(4, 16), (16, 32)])
def test_generic_vectors_match_torch(lanes, registers):
    """The portable target (no intrinsics) on every op, at 4 lanes and at 16 lanes scheduled for
    32 registers (so the fused and channel-tile paths of AVX-512 run through generic vectors)."""
    m = sparse_opsnet()
    t = generic_vectors(lanes, registers)
    cm = ps.compile(m, torch.zeros(1, 3, 16, 16), threads=2, target=t)
    assert cm.manifest["target"] == t.name and cm.manifest["vl"] == lanes
    assert "__asm__" not in cm.source and "_mm" not in cm.source
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close(cm(x), m(x))


def test_saved_graph_is_portable_and_lowering_is_per_target(tmp_path):
    """The compiled model stores the graph before the target's fusions: a 7x7 stem + max pool
    fuse when lowered for a CPU target (32 or 16 registers), and the stored IR keeps the pool (and
    still runs)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(1, 3, 40, 40)
    for t in (generic_vectors(16, 32), generic_vectors(4, 16)):
        cm = ps.compile(m, x, threads=1, target=t)
        kinds = [L["kernel"] for L in cm.manifest["layers"]]
        assert "conv_pool" in kinds and "maxpool" not in kinds
        graph = json.loads((cm.save(tmp_path / t.name) / "graph.json").read_text())
        assert [n["op"] for n in graph["nodes"]][:2] == ["conv", "maxpool"]
        assert all("pool" not in n["attrs"] for n in graph["nodes"])
        again = build_from_graph(Graph.from_json(*cm._graph), threads=1, target=t)  # what loading regenerates
        assert [L["kernel"] for L in again.manifest["layers"]] == kinds
        with torch.no_grad():
            assert_close(cm(x), m(x))
            assert_close(again(x), m(x))


@pytest.mark.slow
@pytest.mark.parametrize("name,variant,size", [("resnet18", "imagenet", 64), ("mobilenet_v2", "imagenet", 64),
                                               ("vgg16_bn", "cifar", 32)])
def test_generic_vectors_zoo_match_torch(name, variant, size):
    from patsparse.models import get
    from patsparse.pruning.projection import project_model

    torch.manual_seed(0)
    m = randomize_bn(get(name, num_classes=10, width=0.125, variant=variant)).eval()
    project_model(m, rate=8.0)
    cm = ps.compile(m, torch.zeros(1, 3, size, size), threads=2, target=generic_vectors(16, 32))
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        want = m(x)
    got = cm(x)
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))
