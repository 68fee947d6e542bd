"""Generated int8 kernels against the simulated model (patsparse.quant), bit for bit: random
networks (hypothesis) on the host (AVX-512 VNNI here), the x86-64-v4 (AVX-512BW, no VNNI),
AVX2 and portable targets, aarch64 NEON (sdot) under qemu, and the 4-way dot product of every
dialect at the saturation edges (codes 0 and 255, weights -127 and 127)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import patsparse as ps
from test_export import need_aarch64
from patsparse.compiler.build import compile_c
from patsparse.compiler.codegen.base import prelude_c
from patsparse.compiler.int8.build import BUILD_FLAGS, generate
from patsparse.compiler.int8.kernels import PRELUDE
from patsparse.compiler.target import TARGETS, detect
from patsparse.errors import InputError, UnsupportedError

NEON = TARGETS["aarch64-neon"]
X86_TARGETS = ["native", "x86-64-avx512", "x86-64-avx2", "generic"]


def _runnable(name: str):
    t = detect() if name == "native" else TARGETS[name]
    host_flags = detect().toolchain.cflags
    if name == "x86-64-avx512" and "__AVX512BW__" not in subprocess.run(
            [detect().toolchain.compiler(), *host_flags, "-dM", "-E", "-x", "c", "-"], input="",
            capture_output=True, text=True).stdout:
        pytest.skip("this CPU has no AVX-512")
    return t


class Net(nn.Module):
    """A random stack of what the int8 kernels cover: convs (any kernel size up to 5, stride 1 or
    2, pattern-pruned or dense, 1x1), residual adds, ReLU / ReLU6, max pool, global average
    pool and a linear layer."""

    def __init__(self, seed: int, cin: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        c, self.kinds, self.blocks = cin, [], nn.ModuleList()
        for _ in range(int(rng.integers(2, 5))):
            kind = str(rng.choice(["conv", "pattern", "res", "s2", "k1", "k5", "pool"]))
            out = c if kind == "res" else int(rng.choice([3, 4, 8, 13, 16]))
            if kind == "pool":
                blk, out = nn.MaxPool2d(3, 2, 1), c
            elif kind in ("conv", "pattern", "res"):
                blk = nn.Sequential(nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out))
            elif kind == "s2":
                blk = nn.Sequential(nn.Conv2d(c, out, 3, stride=2, padding=1))
            elif kind == "k1":
                blk = nn.Sequential(nn.Conv2d(c, out, 1))
            else:
                blk = nn.Sequential(nn.Conv2d(c, out, 5, padding=2))
            if kind == "pattern":  # four of nine taps, a third of the kernels pruned
                with torch.no_grad():
                    w = blk[0].weight
                    masks = [[0, 1, 3, 4], [1, 4, 5, 7], [3, 4, 6, 7], [4, 5, 7, 8]]
                    keep = torch.zeros(w.shape[0], w.shape[1], 9)
                    for f in range(w.shape[0]):
                        for ch in range(w.shape[1]):
                            if rng.random() > 0.33:
                                keep[f, ch, masks[int(rng.integers(4))]] = 1
                    w.mul_(keep.reshape(w.shape))
            for m in blk.modules() if isinstance(blk, nn.Sequential) else ():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 2.0)
            self.blocks.append(blk)
            self.kinds.append((kind, str(rng.choice(["relu", "relu6", "none"]))))
            c = out
        self.fc = nn.Linear(c, 7)

    def forward(self, x):
        for blk, (kind, act) in zip(self.blocks, self.kinds):
            y = blk(x)
            if kind == "res":
                y = y + x
            x = torch.relu(y) if act == "relu" else nn.functional.relu6(y) if act == "relu6" else y
        return self.fc(x.mean(dim=(2, 3)))


def _quantized(seed: int, shape=(3, 11, 9)):
    net = Net(seed, shape[0]).eval()
    x = torch.randn(24, *shape) * 1.5
    return ps.quantize(net, [x[:12], x[12:]], observer="minmax" if seed % 2 else "histogram"), x


def _check_exact(q, x, target_name, tmp_path):
    cm = ps.compile(q, x[:1], threads=2, target=None if target_name == "native" else target_name,
                    cache_dir=tmp_path)
    xs = torch.cat([x, x * 4])  # x * 4: far outside the calibrated range, so codes saturate
    with torch.no_grad():
        want = q(xs)
    got = cm(xs)
    assert torch.equal(got, want), (got - want).abs().max()


@pytest.mark.parametrize("target_name", X86_TARGETS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_random_networks_match_the_simulation_exactly(target_name, seed, tmp_path, one_thread):
    _runnable(target_name)
    q, x = _quantized(seed)
    _check_exact(q, x, target_name, tmp_path)


def test_resnet8_matches_the_simulation(tmp_path, one_thread):
    from patsparse import models

    net = models.get("resnet8", num_classes=10, in_channels=1, variant="cifar").eval()
    x = torch.randn(16, 1, 28, 28)
    q = ps.quantize(net, [x])
    _check_exact(q, x, "native", tmp_path)


def test_compile_refuses_fallback_layers_and_wrong_inputs(tmp_path, one_thread):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    x = torch.randn(8, 3, 6, 6)
    q = ps.quantize(net, [x])
    with pytest.raises(UnsupportedError, match="no int8 kernel"):
        ps.compile(q, x[:1], cache_dir=tmp_path)
    q2, x2 = _quantized(1)
    with pytest.raises(InputError, match="per-image shape"):
        ps.compile(q2, torch.zeros(1, 3, 5, 5), cache_dir=tmp_path)
    with pytest.raises(UnsupportedError, match="save the quantised model"):
        ps.save(ps.compile(q2, x2[:1], cache_dir=tmp_path), tmp_path / "cm")


# ---- the 4-way dot product of every dialect at its edges --------------------------------------

DOT_TEST = r"""
void dots(const int32_t *x, const int32_t *w, int32_t *out, int n) {
    for (int i = 0; i + VL <= n; i += VL) {
        vi xv; memcpy(&xv, x + i, sizeof xv);
        xv ^= (int32_t)PS_XMASK;  /* codes are laid out XOR PS_XMASK (kernels.ps_quads_flat) */
        vi acc = ps_dot4((vi){0} + 5, xv, ps_w4_bcast(w[i / VL]));
        acc += (PS_XOFF) * 0;  /* (the kernels add PS_XOFF * sum(w) to the accumulator's start) */
        memcpy(out + i, &acc, sizeof acc);
    }
}
"""
MAIN = r"""
#include <stdio.h>
int main(void) {
    static int32_t x[N], w[N], out[N];
    if (fread(x, 4, N, stdin) != N || fread(w, 4, N / VL, stdin) != N / VL) return 2;
    dots(x, w, out, N);
    fwrite(out, 4, N, stdout);
    return 0;
}
"""


def _edge_cases(vl: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    codes = rng.choice(np.array([0, 1, 127, 128, 254, 255], np.uint8), size=(n, 4))
    codes[: 4] = 255
    weights = rng.choice(np.array([-127, -1, 0, 1, 126, 127], np.int8), size=(n // vl, 4))
    weights[0] = -127
    weights[1] = 127
    return codes, weights


def _expected(codes, weights, vl, xoff):
    w = np.repeat(weights.astype(np.int64), vl, axis=0)
    return (5 + ((codes.astype(np.int64) - xoff) * w).sum(axis=1)).astype(np.int32)


@pytest.mark.parametrize("target_name", X86_TARGETS)
def test_dot4_at_saturation_edges_x86(target_name, tmp_path):
    import ctypes

    t = _runnable(target_name)
    src = prelude_c(t) + t.render(PRELUDE) + DOT_TEST + "int ps_xoff(void) { return PS_XOFF; } int vl(void) { return VL; }\n"
    lib = ctypes.CDLL(str(compile_c(src, name="dot4", target=t, cache_dir=tmp_path, extra_flags=BUILD_FLAGS)))
    vl, n = lib.vl(), 256
    codes, weights = _edge_cases(vl, n)
    out = np.zeros(n, np.int32)
    x, w = np.ascontiguousarray(codes).view("<i4").ravel(), np.ascontiguousarray(weights).view("<i4").ravel()
    lib.dots.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.dots(x.ctypes.data, w.ctypes.data, out.ctypes.data, n)
    assert lib.ps_xoff() == 0
    np.testing.assert_array_equal(out, _expected(codes, weights, vl, 0))


def _neon_program(src: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.with_suffix(".c")).write_text(src)
    subprocess.run([NEON.toolchain.compiler(), "-O2", "-fopenmp", "-std=gnu11", *BUILD_FLAGS, *NEON.toolchain.cflags,
                    str(out.with_suffix(".c")), "-o", str(out), "-lm"], check=True, capture_output=True)


def test_dot4_at_saturation_edges_neon_sdot(tmp_path):
    """sdot takes signed bytes: codes XOR 0x80 are code - 128, and PS_XOFF = 128 puts it back."""
    prefix = need_aarch64()
    n = 256
    _neon_program(prelude_c(NEON) + NEON.render(PRELUDE) + DOT_TEST + f"#define N {n}\n" + MAIN, tmp_path / "dot")
    asm = subprocess.run([NEON.toolchain.compiler(), "-O2", "-S", "-o", "-", "-fopenmp", *NEON.toolchain.cflags,
                          str(tmp_path / "dot.c")], capture_output=True, text=True, check=True).stdout
    assert "sdot" in asm
    codes, weights = _edge_cases(4, n)
    inp = codes.tobytes() + weights.tobytes()
    r = subprocess.run([*prefix, str(tmp_path / "dot")], input=inp, capture_output=True, check=True)
    np.testing.assert_array_equal(np.frombuffer(r.stdout, "<i4"), _expected(codes, weights, 4, 128))


RUN_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
static void *slurp(const char *path, long *size) {
    FILE *f = fopen(path, "rb"); if (!f) exit(2);
    fseek(f, 0, SEEK_END); *size = ftell(f); fseek(f, 0, SEEK_SET);
    void *p = aligned_alloc(64, (*size + 63) / 64 * 64);
    if (fread(p, 1, *size, f) != (size_t)*size) exit(3);
    fclose(f); return p;
}
int main(int argc, char **argv) {
    long nb, nx; const float *blob = slurp(argv[1], &nb); const float *x = slurp(argv[2], &nx);
    int batch = atoi(argv[4]); long ny = atol(argv[5]);
    float *ws = aligned_alloc(64, ps_workspace_floats() * 4); memset(ws, 0, ps_workspace_floats() * 4);
    float *y = malloc(ny * 4 * batch);
    ps_forward(x, y, batch, ws, blob, 2, NULL);
    FILE *f = fopen(argv[3], "wb"); fwrite(y, 4, ny * batch, f); fclose(f);
    return 0;
}
"""


def _check_exact_on_aarch64(q, x, tmp_path: Path) -> str:
    """The NEON (sdot) build of ``q`` under qemu against the simulation, bit for bit; its source."""
    prefix = need_aarch64()
    prog = generate(q, NEON, 2)
    assert "ps_dot4" in prog.source
    _neon_program(prog.source + RUN_MAIN, tmp_path / "model")
    (tmp_path / "blob.bin").write_bytes(prog.blob)
    xs = torch.cat([x, x * 4])
    np.ascontiguousarray(xs.numpy(), "<f4").tofile(tmp_path / "in.bin")
    with torch.no_grad():
        want = q(xs).reshape(len(xs), -1).numpy()
    subprocess.run([*prefix, str(tmp_path / "model"), str(tmp_path / "blob.bin"), str(tmp_path / "in.bin"),
                    str(tmp_path / "out.bin"), str(len(xs)), str(want.shape[1])], check=True, capture_output=True)
    got = np.fromfile(tmp_path / "out.bin", "<f4").reshape(want.shape)
    np.testing.assert_array_equal(got, want)
    return prog.source


@pytest.mark.parametrize("seed", [5, 8, 13])
def test_random_networks_on_aarch64_under_qemu(seed, tmp_path):
    q, x = _quantized(seed)
    _check_exact_on_aarch64(q, x, tmp_path)


class Pyramid(nn.Module):
    """16x16 down to 1x1 by stride-2 convs (phase planes; the last, onto a plane without halo,
    gathered), 8x8 and 4x4 planes with a residual (compacted quads at 4, 8 and 16 lanes), a 2x2
    and a 1x1 plane (several kernels packed in a vector at 8 and 16 lanes), and convs of 24 and
    32 channels (channel quads: more kernels per filter than the accumulator chains, with a
    remainder)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        conv = lambda ci, co, s=1: nn.Conv2d(ci, co, 3, stride=s, padding=1)  # noqa: E731
        self.stem, self.down8, self.mid8 = conv(3, 16), conv(16, 24, 2), conv(24, 24)
        self.down4, self.mid4, self.down2, self.down1 = conv(24, 32, 2), conv(32, 32), conv(32, 32, 2), conv(32, 16, 2)
        self.head, self.fc = nn.Conv2d(16, 16, 1), nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.down8(torch.relu(self.stem(x))))
        x = torch.relu(self.mid8(x) + x)
        x = torch.relu(self.down4(x))
        x = nn.functional.relu6(self.mid4(x) + x)
        return self.fc(self.head(torch.relu(self.down1(torch.relu(self.down2(x))))).flatten(1))


def _pyramid():
    x = torch.randn(16, 3, 16, 16)
    return ps.quantize(Pyramid().eval(), [x]), x


@pytest.mark.parametrize("target_name", X86_TARGETS)
def test_strided_compacted_and_gathered_layers_match_the_simulation(target_name, tmp_path, one_thread):
    t = _runnable(target_name)
    q, x = _pyramid()
    src = generate(q, t, 2).source
    assert "in = scr +" in src and "corner[j]" in src  # phase planes, and the gather onto the 1x1 plane
    assert "ps_quad_vec(s[0]" in src and "rb + r *" in src  # compacted quads, a residual read by rows
    # kernels packed on the 1x1 plane, and on the 2x2 one above 4 lanes (at 4 it is compacted)
    assert src.count("_pdot(vi acc") == (1 if t.require_cpu("int8 test").lanes == 4 else 2)
    _check_exact(q, x, target_name, tmp_path)


def test_strided_compacted_and_gathered_layers_on_aarch64_under_qemu(tmp_path):
    q, x = _pyramid()
    src = _check_exact_on_aarch64(q, x, tmp_path)
    assert "in = scr +" in src and "corner[j]" in src and "ps_quad_vec(s[0]" in src and "_pdot(vi acc" in src
