"""``patsparse.export``: standalone C projects, built by their own Makefile and run without Python.

The aarch64 cases cross-compile with Debian's gcc-aarch64-linux-gnu and run under qemu-aarch64
(Debian qemu-user); they skip, naming the package, where those are not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import patsparse as ps
from patsparse.cli import main as cli_main
from patsparse.compiler.export import WEIGHTS_MAGIC
from patsparse.compiler.target import TARGETS
from patsparse.errors import BuildError, InputError, UnsupportedError
from test_compiler import randomize_bn, sparse_opsnet

NEON = TARGETS["aarch64-neon"]


def need_aarch64() -> tuple[str, ...]:
    """The qemu prefix that runs aarch64 programs; skips naming the missing Debian package."""
    for tool, package in ((NEON.toolchain.cc, NEON.toolchain.package), ("qemu-aarch64", NEON.toolchain.runner_package)):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (Debian: apt-get install {package})")
    return NEON.toolchain.run_prefix()


def build_and_run(out: Path, x: np.ndarray, prefix: tuple[str, ...] = (), make_args: tuple[str, ...] = ()) -> np.ndarray:
    """`make` in the export, then run_model on ``x`` (N, C, H, W): the (N, ...) output."""
    subprocess.run(["make", "-s", "-C", str(out), *make_args], check=True, capture_output=True)
    np.ascontiguousarray(x, "<f4").tofile(out / "in.bin")
    r = subprocess.run([*prefix, str(out / "run_model"), str(out / "in.bin"), str(out / "out.bin"), "3"],
                       capture_output=True, text=True, check=True)
    assert "median latency:" in r.stdout and "over 3 runs, batch" in r.stdout
    return np.fromfile(out / "out.bin", "<f4").reshape(len(x), -1)


def check(got: np.ndarray, model: nn.Module, x: np.ndarray) -> None:
    with torch.no_grad():
        want = model(torch.from_numpy(x)).reshape(len(x), -1).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


class RandomNet(nn.Module):
    """A random stack of the supported ops (seeded): 3x3 convs (pattern-pruned or dense, stride
    1 or 2), 1x1 + depthwise blocks, residual adds, pools, ReLU/ReLU6, then pool + linear."""

    def __init__(self, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        c, self.blocks = 8, nn.ModuleList()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.kinds = []
        for _ in range(int(rng.integers(3, 6))):
            kind = str(rng.choice(["conv", "conv_s2", "res", "pwdw", "pool"]))
            out = int(rng.choice([8, 12, 16, 24]))
            if kind == "conv":
                blk = nn.Sequential(nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU())
            elif kind == "conv_s2":
                blk = nn.Sequential(nn.Conv2d(c, out, 3, stride=2, padding=1), nn.ReLU6())
            elif kind == "res":
                out = c
                blk = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            elif kind == "pwdw":
                blk = nn.Sequential(nn.Conv2d(c, out, 1), nn.ReLU6(), nn.Conv2d(out, out, 3, padding=1, groups=out),
                                    nn.ReLU6())
            else:
                out = c
                blk = nn.MaxPool2d(2) if rng.random() < 0.5 else nn.AvgPool2d(2)
            self.blocks.append(blk)
            self.kinds.append(kind)
            c = out
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for kind, blk in zip(self.kinds, self.blocks):
            x = F.relu(blk(x) + x) if kind == "res" else blk(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def random_net(seed: int) -> nn.Module:
    from patsparse.pruning.projection import project_model

    torch.manual_seed(seed)
    m = randomize_bn(RandomNet(seed)).eval()
    project_model(m, rate=4.0)
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_networks_on_aarch64_under_qemu(tmp_path, seed):
    prefix = need_aarch64()
    m = random_net(seed)
    x = np.random.default_rng(seed).standard_normal((2, 3, 20, 20)).astype(np.float32)
    out = ps.export(m, torch.from_numpy(x[:1]), tmp_path / "proj", target="aarch64-linux-gnu")
    assert (out / "weights.bin").read_bytes()[:8] == WEIGHTS_MAGIC
    assert "aarch64-linux-gnu-gcc" in (out / "Makefile").read_text()
    check(build_and_run(out, x, prefix), m, x)


@pytest.mark.slow
@pytest.mark.parametrize("name,variant,size", [("vgg16_bn", "cifar", 32), ("resnet18", "imagenet", 64),
                                               ("resnet50", "imagenet", 64), ("mobilenet_v2", "imagenet", 96),
                                               ("resnet8", "cifar", 32), ("convnet", "cifar", 28)])
def test_zoo_on_aarch64_under_qemu(tmp_path, name, variant, size):
    from patsparse.models import get
    from patsparse.pruning.projection import project_model

    prefix = need_aarch64()
    torch.manual_seed(0)
    in_ch = 1 if name == "convnet" else 3
    m = randomize_bn(get(name, num_classes=10, width=0.125, variant=variant, in_channels=in_ch)).eval()
    project_model(m, rate=8.0)
    x = np.random.default_rng(0).standard_normal((1, in_ch, size, size)).astype(np.float32)
    out = ps.export(m, torch.from_numpy(x), tmp_path / name, target="aarch64-neon")
    check(build_and_run(out, x, prefix), m, x)


def test_native_export_runs_here_with_and_without_openmp(tmp_path):
    m = sparse_opsnet()
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = ps.export(m, torch.from_numpy(x[:1]), tmp_path / "native")
    header = (out / "model.h").read_text()
    assert "ps_model_run" in header and "#define PS_MODEL_INPUT_FLOATS 768L" in header
    check(build_and_run(out, x), m, x)
    subprocess.run(["make", "-s", "-C", str(out), "clean"], check=True)
    # a toolchain without OpenMP: the single-threaded stand-ins
    check(build_and_run(out, x, make_args=("OPENMP=-Inoomp -Wno-unknown-pragmas",)), m, x)


def test_header_states_the_input_normalisation(tmp_path):
    """A model trained on normalised input says so in model.h, as C a program can use; one
    that states none says that instead of leaving the reader to guess."""
    m, x = sparse_opsnet(), torch.zeros(1, 3, 16, 16)
    m.patsparse_normalization = {"mean": [0.5, 0.25, 1e-05], "std": [0.2, 0.3, 2.0]}
    header = (ps.export(m, x, tmp_path / "a") / "model.h").read_text()
    assert "#define PS_MODEL_INPUT_MEAN {0.5f, 0.25f, 1e-05f}" in header
    assert "#define PS_MODEL_INPUT_STD {0.2f, 0.3f, 2.0f}" in header
    (tmp_path / "use.c").write_text('#include "model.h"\nconst float mean[] = PS_MODEL_INPUT_MEAN, '
                                    'std[] = PS_MODEL_INPUT_STD;\n_Static_assert(sizeof mean == 3 * sizeof(float), "");\n')
    subprocess.run(["gcc", "-fsyntax-only", "-Werror", "-I", str(tmp_path / "a"), str(tmp_path / "use.c")], check=True)
    del m.patsparse_normalization
    header = (ps.export(m, x, tmp_path / "b") / "model.h").read_text()
    assert "states no input normalisation" in header and "PS_MODEL_INPUT_MEAN" not in header


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    m, x = sparse_opsnet(), torch.zeros(1, 3, 16, 16)
    with pytest.raises(InputError, match="unknown target 'mips'.*aarch64-linux-gnu"):
        ps.export(m, x, tmp_path / "a", target="mips")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty.*overwrite"):
        ps.export(m, x, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]

    class Mish(nn.Module):
        def forward(self, x):
            return F.mish(x)

    with pytest.raises(UnsupportedError):
        ps.export(nn.Sequential(nn.Conv2d(3, 4, 3), Mish()), x, tmp_path / "b")
    gpu_less = TARGETS["aarch64-neon"]
    from dataclasses import replace

    missing = replace(gpu_less, toolchain=replace(gpu_less.toolchain, cc="aarch64-no-such-gcc"))
    with pytest.raises(BuildError, match="gcc-aarch64-linux-gnu"):
        ps.export(m, x, tmp_path / "c", target=missing)
    assert not any((tmp_path / d).exists() for d in "abc")
    ps.export(m, x, busy, overwrite=True)
    assert (busy / "model.c").is_file() and (busy / "notes.txt").is_file()


def test_cli_export(tmp_path, capsys):
    from patsparse.models import get

    ps.save(get("resnet8", num_classes=10, width=0.25, variant="cifar").eval(), tmp_path / "m.pats")
    rc = cli_main(["export", str(tmp_path / "m.pats"), "--input-shape", "3,16,16", "-o", str(tmp_path / "e")])
    assert rc == 0 and (tmp_path / "e" / "Makefile").is_file()
    assert "run_model" in capsys.readouterr().out
    rc = cli_main(["export", str(tmp_path / "m.pats"), "--input-shape", "3,16,16", "-o", str(tmp_path / "e")])
    assert rc == 1 and "not empty" in capsys.readouterr().err
    rc = cli_main(["export", str(tmp_path / "m.pats"), "--input-shape", "3,16,16", "-o", str(tmp_path / "f"),
                   "--target", "vax"])
    assert rc == 1 and "known targets" in capsys.readouterr().err
