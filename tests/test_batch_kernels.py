"""Batched kernels (``NAME_nb``) alone against PyTorch: dense implicit GEMM row tiles (both walks
of batch.py), channel-vector tiles, Winograd, and the pattern conv's channel-tile and channel-major layouts,
on 3 images in workspace-like slots (outputs start as NaN, halos must stay zero)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patsparse.compiler.codegen.base import SLACK
from patsparse.compiler.codegen.ctest import KernelRunner, from_layout, interior_mask, to_layout
from patsparse.compiler.codegen.dense_conv import gen_conv2d
from patsparse.compiler.codegen.depthwise import gen_depthwise
from patsparse.compiler.codegen.gemm import gen_linear
from patsparse.compiler.codegen.pattern_conv import gen_pattern_conv
from patsparse.compiler.layout import Layout, round_up
from patsparse.compiler.runtime import aligned_empty
from patsparse.compiler.target import detect
from patsparse.errors import InputError
from test_pattern_conv import pattern_weight

HOST = detect()
IMAGES = 3


def run_batched(kernel, weight: np.ndarray, xs: np.ndarray, bias: np.ndarray, res: np.ndarray,
                lin: Layout, lout: Layout) -> np.ndarray:
    """``kernel`` on the images ``xs`` (N, C, H, W) in one NAME_nb call: the (N, ...) outputs."""
    runner = KernelRunner(kernel)
    stride = round_up(max(lin.size, lout.size) + SLACK, 16)
    n = len(xs)
    inp, out, rbuf = (aligned_empty(n * stride) for _ in range(3))
    inside = interior_mask(lout)
    for b in range(n):
        inp[b * stride: b * stride + lin.size + SLACK] = to_layout(xs[b], lin)
        rbuf[b * stride: b * stride + lout.size + SLACK] = to_layout(res[b], lout)
        out[b * stride: b * stride + lout.size + SLACK] = np.where(inside, np.nan, 0.0)
    runner.run_images(inp, out, runner.pack(weight), bias, rbuf, n, stride)
    got = []
    for b in range(n):
        img = out[b * stride: b * stride + lout.size + SLACK]
        assert not np.any(img[~inside]), f"{kernel.name} wrote outside image {b}'s interior"
        got.append(from_layout(img, lout))
    return np.stack(got)


def check(kernel, weight, lin: Layout, lout: Layout, stride: int, padding: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((IMAGES, lin.C, lin.H, lin.W)).astype(np.float32)
    bias = rng.standard_normal(lout.C).astype(np.float32)
    res = rng.standard_normal((IMAGES, lout.C, lout.H, lout.W)).astype(np.float32)
    got = run_batched(kernel, weight, xs, bias, res, lin, lout)
    y = F.conv2d(torch.from_numpy(xs), torch.from_numpy(weight), torch.from_numpy(bias), stride=stride,
                 padding=padding)
    want = torch.relu(y + torch.from_numpy(res)).numpy()
    assert np.isfinite(got).all(), "some output pixels were never written"
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * max(1.0, float(np.abs(want).max())), f"max abs error {err}"


@pytest.mark.parametrize("cin,cout,H,stride,schedule,walk", [
    (8, 12, 4, 1, {"mr": 4, "nr": 3}, "pooled"),     # tiles span images (4 row slots, 3 per tile)
    (64, 8, 30, 1, {"mr": 4, "nr": 2}, "each"),      # large planes: image by image
    (8, 16, 9, 2, {"mr": 4, "nr": 2, "s2": 1}, None),  # stride 2 read in place
    (24, 20, 7, 1, {"np": 5}, None),                 # channel-vector tiles
    (16, 20, 9, 2, {"np": 4}, None),                 # ... read at stride 2 in place
    # Winograd, the block's tiles in one GEMM (batched where the weights are 10x an image's scratch)
    (352, 352, 4, 1, {"wino": 2, "mr": 4, "nr": 1}, None),
    (336, 336, 7, 1, {"wino": 4, "mr": 4, "nr": 1}, None),  # R > 1 tile rows per transform unit
])
def test_dense_batched(cin, cout, H, stride, schedule, walk):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((cout, cin, 3, 3)) / (3 * cin) ** 0.5).astype(np.float32)
    Ho = (H + 2 - 3) // stride + 1
    lin, lout = Layout(cin, H, H, 1), Layout(cout, Ho, Ho, 1)
    k = gen_conv2d("conv_b", cin=cin, cout=cout, k=3, stride=stride, padding=1, in_layout=lin,
                   out_layout=lout, act="relu", has_residual=True, schedule=schedule, target=HOST, images=8)
    assert k.batched
    if walk:
        assert f"more images: {walk}" in k.code
    check(k, w, lin, lout, stride, 1)


@pytest.mark.parametrize("H,stride,schedule", [(4, 1, {"mr": 8, "nr": 3, "compact": 1}),
                                               (7, 2, {"mr": 4, "nr": 1, "compact": 1})])
def test_compact_1x1_batched(H, stride, schedule):
    """1x1 convs over the flattened plane: the prep packs the block's images, tiles span them."""
    cin, cout = 12, 20
    w = (np.random.default_rng(3).standard_normal((cout, cin, 1, 1)) / cin ** 0.5).astype(np.float32)
    Ho = (H - 1) // stride + 1
    lin, lout = Layout(cin, H, H, 1), Layout(cout, Ho, Ho, 1)
    k = gen_conv2d("pw_b", cin=cin, cout=cout, k=1, stride=stride, in_layout=lin, out_layout=lout,
                   act="relu", has_residual=True, schedule=schedule, target=HOST, images=8)
    assert k.batched and "compact-plane prep" in k.code
    check(k, w, lin, lout, stride, 0)


@pytest.mark.parametrize("layout,H,stride,extra", [("ct", 12, 1, {}), ("ct", 11, 2, {"s2": 1}),
                                                   ("cm", 4, 1, {"pack": 1}), ("cm", 2, 1, {})])
def test_pattern_batched(layout, H, stride, extra):
    w = pattern_weight(20, 24, keep=0.5, dense_frac=0.05, small_frac=0.2)
    Ho = (H + 2 - 3) // stride + 1
    lin, lout = Layout(24, H, H, 1), Layout(20, Ho, Ho, 1)
    k = gen_pattern_conv("pconv_b", w, stride=stride, padding=1, in_layout=lin, out_layout=lout, act="relu",
                         has_residual=True, schedule={"layout": layout, **extra}, target=HOST, threads=2)
    assert k.batched
    check(k, w, lin, lout, stride, 1)


@pytest.mark.parametrize("C,H,pin,out_features,mr", [(20, 1, 1, 13, 8), (6, 3, 1, 33, 4)])
def test_linear_batched(C, H, pin, out_features, mr):
    """Each pass's weight rows serve every image of the block (features flattened C-H-W)."""
    rng = np.random.default_rng(2)
    n = C * H * H
    w = (rng.standard_normal((out_features, n)) / n ** 0.5).astype(np.float32)
    lin, lout = Layout(C, H, H, pin), Layout(out_features, 1, 1, 1)
    k = gen_linear("fc_b", in_features=n, out_features=out_features, in_layout=lin, out_layout=lout,
                   act="relu", has_residual=True, schedule={"mr": mr}, target=HOST)
    assert k.batched
    xs = rng.standard_normal((IMAGES, C, H, H)).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    res = rng.standard_normal((IMAGES, out_features, 1, 1)).astype(np.float32)
    got = run_batched(k, w, xs, bias, res, lin, lout)
    want = np.maximum(xs.reshape(IMAGES, n) @ w.T + bias + res.reshape(IMAGES, -1), 0)
    assert np.abs(got.reshape(IMAGES, -1) - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_team_free_kernels_are_those_without_shared_scratch_or_barriers():
    """A layer-major run calls a team-free kernel on every image of the block with one barrier
    after the last (graph._step_lines): a depthwise conv reading its input in place is; one
    through phase planes (a scratch the whole team fills, then a barrier) is not."""
    lay = Layout(8, 9, 9, 1)
    direct = gen_depthwise("dw_d", channels=8, in_layout=lay, out_layout=lay, target=HOST)
    planes = gen_depthwise("dw_p", channels=8, in_layout=Layout(8, 9, 9, 0), out_layout=lay, target=HOST)
    assert direct.team_free and not planes.team_free


def test_winograd_batched_only_where_its_weights_outweigh_an_images_scratch():
    """A block shares one Winograd call where re-reading the transformed weights per image
    costs more than the block's scratch leaving cache (winograd.WINO_BATCH_RATIO); the kernel
    still runs one image per call elsewhere."""
    def kernel(c: int, H: int):
        lay = Layout(c, H, H, 1)
        return gen_conv2d("wino", cin=c, cout=c, k=3, padding=1, in_layout=lay, out_layout=lay,
                          schedule={"wino": 2, "mr": 4, "nr": 1}, target=HOST)
    assert kernel(512, 7).batched and not kernel(128, 7).batched and not kernel(512, 56).batched


def test_a_kernel_with_a_prep_is_not_batched():
    """A stride-2 conv through phase planes (one image's scratch) runs one image per call."""
    lin, lout = Layout(8, 9, 9, 0), Layout(8, 5, 5, 1)
    k = gen_conv2d("conv_p", cin=8, cout=8, k=3, stride=2, padding=1, in_layout=lin, out_layout=lout,
                   target=HOST, images=8)
    assert not k.batched
    with pytest.raises(InputError, match="not batched"):
        KernelRunner(k).run_images(*(aligned_empty(16) for _ in range(5)), 2, 16)
