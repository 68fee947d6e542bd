"""The pattern-sparse 3x3 kernel against PyTorch: masks, strides, paddings, odd sizes, epilogues."""

import ctypes
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from patsparse.compiler.build import compile_c
from patsparse.compiler.codegen.base import SLACK, prelude_c
from patsparse.compiler.codegen.ctest import width_target
from patsparse.compiler.codegen.pattern_conv import (WEIGHT_PREFETCH, candidate_schedules, cm_fits, ct_rows,
                                                     default_schedule, flat_fits, gen_pattern_conv, support_c,
                                                     tap_pack)
from patsparse.compiler.target import TARGETS, detect
from patsparse.compiler.layout import Layout
from patsparse.compiler.reorder import FULL_MASK, analyse, reorder
from patsparse.compiler.storage import pack, unpack
from patsparse.errors import InputError, UnsupportedError

PHASE2 = [(0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8),
          (1, 3, 4, 5), (1, 3, 4, 7), (1, 4, 5, 7), (3, 4, 5, 7)]

HOST = detect()
# schedule-only checks: the ISAs with 16 lanes and 32 registers, 8 lanes and 16 registers
T16, T8 = TARGETS["x86-64-avx512"], TARGETS["x86-64-avx2"]


def pattern_weight(F_, C, keep=0.3, dense_frac=0.0, small_frac=0.0, seed=0):
    """Random (F, C, 3, 3) weight: phase-2 patterns, a fraction of kernels kept, some dense or
    with fewer than 4 non-zeros (the paths a model pruned by another tool can hit)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((F_, C, 9)).astype(np.float32)
    mask = np.zeros((F_, C, 9), dtype=bool)
    for f in range(F_):
        for c in range(C):
            u = rng.random()
            if u < dense_frac:
                mask[f, c] = True
            elif rng.random() < keep:
                pos = list(PHASE2[rng.integers(len(PHASE2))])
                if rng.random() < small_frac:
                    pos = pos[: rng.integers(1, 4)]
                mask[f, c, pos] = True
    return (w * mask).reshape(F_, C, 3, 3)


def to_layout(x: np.ndarray, L: Layout) -> np.ndarray:
    buf = np.zeros(L.size + SLACK, dtype=np.float32)
    planes = buf[: L.size].reshape(L.C, -1)[:, : (L.H + 2 * L.pad) * L.ld].reshape(L.C, L.H + 2 * L.pad, L.ld)
    planes[:, L.pad: L.pad + L.H, L.pad: L.pad + L.W] = x
    return buf


def from_layout(buf: np.ndarray, L: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(interior, halo copy with the interior zeroed)."""
    planes = buf[: L.size].reshape(L.C, -1)[:, : (L.H + 2 * L.pad) * L.ld].reshape(L.C, L.H + 2 * L.pad, L.ld)
    inner = planes[:, L.pad: L.pad + L.H, L.pad: L.pad + L.W].copy()
    halo = buf.copy()
    hv = halo[: L.size].reshape(L.C, -1)[:, : (L.H + 2 * L.pad) * L.ld].reshape(L.C, L.H + 2 * L.pad, L.ld)
    hv[:, L.pad: L.pad + L.H, L.pad: L.pad + L.W] = 0
    return inner, halo


def run_conv(weight, x, *, stride=1, padding=1, act="none", residual=None, in_pad=1, out_pad=1,
             schedule=None, bias=None, vl=None, extra_flags=(), threads=0):
    """Run the generated kernel once: alone, or in a team of ``threads`` threads."""
    F_, C = weight.shape[:2]
    _, H, W = x.shape
    Ho, Wo = (H + 2 * padding - 3) // stride + 1, (W + 2 * padding - 3) // stride + 1
    Li, Lo = Layout(C, H, W, in_pad), Layout(F_, Ho, Wo, out_pad)
    gk = gen_pattern_conv("conv", weight, stride=stride, padding=padding, in_layout=Li, out_layout=Lo,
                          act=act, has_residual=residual is not None, schedule=schedule,
                          target=HOST if vl is None else width_target(vl))
    src = prelude_c(gk.target) + support_c(gk.target) + gk.code + r"""
void run(const float *in, float *out, const float *w, const float *b, const float *res) {
    conv(in, out, w, b, res);
}
void run_team(const float *in, float *out, const float *w, const float *b, const float *res, int n) {
    omp_set_num_threads(n);
    PS_TEAM_LOOP(1, conv(in, out, w, b, res));
}
"""
    lib = ctypes.CDLL(str(compile_c(src, name="pconv_test", target=gk.target, extra_flags=extra_flags)))
    wp = gk.pack(weight)
    bias = np.zeros(F_, np.float32) if bias is None else bias.astype(np.float32)
    xin = to_layout(x, Li)
    out = np.zeros(Lo.size + SLACK, np.float32)
    res = to_layout(residual, Lo) if residual is not None else None
    p = lambda a: a.ctypes.data_as(ctypes.c_void_p) if a is not None else None  # noqa: E731
    if threads:
        lib.run_team(p(xin), p(out), p(wp), p(bias), p(res), ctypes.c_int(threads))
    else:
        lib.run(p(xin), p(out), p(wp), p(bias), p(res))
    inner, halo = from_layout(out, Lo)
    assert not halo.any(), "kernel wrote outside the interior"
    return inner


def reference(weight, x, *, stride=1, padding=1, act="none", residual=None, bias=None):
    y = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight),
                 None if bias is None else torch.from_numpy(bias), stride=stride, padding=padding)[0]
    if residual is not None:
        y = y + torch.from_numpy(residual)
    y = {"none": y, "relu": torch.relu(y), "relu6": y.clamp(0, 6)}[act]
    return y.numpy()


def assert_close(got, want):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= 1e-4 * scale, f"max abs error {err} > 1e-4 * {scale}"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("act,res", [("relu", False), ("relu6", True), ("none", True)])
def test_pattern_conv_matches_torch(stride, act, res):
    rng = np.random.default_rng(1)
    w = pattern_weight(24, 16, keep=0.4, dense_frac=0.05, small_frac=0.2)
    x = rng.standard_normal((16, 13, 19)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    Ho, Wo = (13 - 1) // stride + 1, (19 - 1) // stride + 1
    r = rng.standard_normal((24, Ho, Wo)).astype(np.float32) if res else None
    got = run_conv(w, x, stride=stride, act=act, residual=r, bias=b)
    assert_close(got, reference(w, x, stride=stride, act=act, residual=r, bias=b))


@settings(max_examples=12, deadline=None)
@given(F_=st.integers(1, 20), C=st.integers(1, 12), H=st.integers(1, 20), W=st.integers(1, 37),
       stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1]), out_pad=st.sampled_from([0, 1, 3]),
       rows=st.integers(1, 6), vecs=st.integers(1, 4), order=st.sampled_from(["tf", "ft"]),
       tiny=st.sampled_from([None, "flat", "cm", "ct"]), unroll=st.integers(1, 4),
       cblk=st.sampled_from([0, 1, 3, 8]), seed=st.integers(0, 999))
def test_pattern_conv_shapes_property(F_, C, H, W, stride, padding, out_pad, rows, vecs, order, tiny,
                                      unroll, cblk, seed):
    if padding == 0 and (H < 3 or W < 3):
        H, W = max(H, 3), max(W, 3)
    rng = np.random.default_rng(seed)
    w = pattern_weight(F_, C, keep=0.5, dense_frac=0.1, small_frac=0.2, seed=seed)
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    Ho, Wo = (H + 2 * padding - 3) // stride + 1, (W + 2 * padding - 3) // stride + 1
    if tiny == "ct":
        schedule = {"layout": "ct", "vecs": vecs}
    elif tiny and flat_fits(Layout(C, H, W), Layout(F_, Ho, Wo), HOST):
        schedule = {"layout": tiny, "unroll": unroll}
    else:
        schedule = {"rows": rows, "vecs": vecs, "order": order, "cblk": cblk if order == "tf" else 0}
    got = run_conv(w, x, stride=stride, padding=padding, out_pad=out_pad, in_pad=max(1, padding),
                   schedule=schedule)
    assert_close(got, reference(w, x, stride=stride, padding=padding))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout,unroll", [("flat", 1), ("flat", 3), ("cm", 1)])
def test_tiny_plane_layouts(stride, layout, unroll):
    rng = np.random.default_rng(4)
    w = pattern_weight(20, 24, keep=0.4, dense_frac=0.05, small_frac=0.2)
    x = rng.standard_normal((24, 4, 4)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    Ho = (4 - 1) // stride + 1
    r = rng.standard_normal((20, Ho, Ho)).astype(np.float32)
    sched = {"layout": layout, "unroll": unroll}
    got = run_conv(w, x, stride=stride, act="relu6", residual=r, bias=b, schedule=sched)
    assert_close(got, reference(w, x, stride=stride, act="relu6", residual=r, bias=b))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("threads,vecs,rows", [(0, 2, 1), (2, 2, 1), (3, 1, 1), (5, 3, 1), (2, 2, 3),
                                               (0, 1, 4), (3, 3, 2)])
def test_channel_tile_layout(stride, threads, vecs, rows):
    """Tiles of rows x vecs split over a team; odd sizes leave narrower last tiles (right and bottom)."""
    rng = np.random.default_rng(9)
    w = pattern_weight(12, 10, keep=0.4, dense_frac=0.05, small_frac=0.2)
    x = rng.standard_normal((10, 11, 37)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    Ho, Wo = (11 - 1) // stride + 1, (37 - 1) // stride + 1
    r = rng.standard_normal((12, Ho, Wo)).astype(np.float32)
    got = run_conv(w, x, stride=stride, act="relu6", residual=r, bias=b, threads=threads, vl=8,
                   schedule={"layout": "ct", "vecs": vecs, "rows": rows})
    assert_close(got, reference(w, x, stride=stride, act="relu6", residual=r, bias=b))


@pytest.mark.parametrize("layout", ["rows", "ct"])
@pytest.mark.parametrize("in_pad", [1, 2])
@pytest.mark.parametrize("W", [12, 13, 16, 17, 31, 32])
def test_stride2_phase_prep_through_the_halo(layout, in_pad, W):
    """Stride 2 reads phase planes built through the input's zero halo (the model input's,
    without a halo, takes the bounds-checked prep: test_codegen_dense); widths around a
    vector's multiple put the last phase columns inside and past the source row."""
    rng = np.random.default_rng(W + in_pad)
    w = pattern_weight(6, 5, keep=0.6, dense_frac=0.1)
    x = rng.standard_normal((5, 9, W)).astype(np.float32)
    got = run_conv(w, x, stride=2, in_pad=in_pad, act="relu", schedule={"layout": layout})
    assert_close(got, reference(w, x, stride=2, act="relu"))


@pytest.mark.parametrize("threads", [2, 3, 7])
@pytest.mark.parametrize("hw,pack", [((4, 4), 1), ((2, 2), 2), ((2, 2), 1)])
def test_channel_major_layout_in_a_team(threads, hw, pack):
    """Threads split the input channels and sum their partial planes; with 7 threads and 5
    channels some threads get none and add zeros."""
    rng = np.random.default_rng(8)
    C = 5 if threads == 7 else 24
    w = pattern_weight(20, C, keep=0.5, dense_frac=0.05, small_frac=0.2)
    x = rng.standard_normal((C, *hw)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    r = rng.standard_normal((20, *hw)).astype(np.float32)
    got = run_conv(w, x, act="relu", residual=r, bias=b, schedule={"layout": "cm", "pack": pack}, vl=8,
                   threads=threads)
    assert_close(got, reference(w, x, act="relu", residual=r, bias=b))




@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hoist", [0, 1])
def test_channel_tile_hoisted_inputs(stride, hoist):
    """Input vectors loaded once per channel (hoist 1) or per mask run, with or without the input
    prefetch, give the same numbers; the default hoists at stride 2 only."""
    rng = np.random.default_rng(12)
    w = pattern_weight(12, 10, keep=0.5, dense_frac=0.1)
    x = rng.standard_normal((10, 13, 21)).astype(np.float32)
    for ipf in (0, 1, 3):  # input prefetch: none, the next channel, past the last one
        sched = {"layout": "ct", "vecs": 1, "rows": 3, "hoist": hoist, "ipf": ipf}
        got = run_conv(w, x, stride=stride, act="relu", schedule=sched, vl=8, threads=2)
        assert_close(got, reference(w, x, stride=stride, act="relu"))
    Li, Lo = Layout(10, 13, 21), Layout(12, (13 - 1) // stride + 1, (21 - 1) // stride + 1)
    dflt = gen_pattern_conv("c", w, stride=stride, padding=1, in_layout=Li, out_layout=Lo,
                            schedule={"layout": "ct"}, target=width_target(8)).schedule
    assert dflt["hoist"] == int(stride == 2)
    with pytest.raises(InputError, match="hoist"):
        gen_pattern_conv("c", w, stride=stride, padding=1, in_layout=Li, out_layout=Lo,
                         schedule={"layout": "ct", "hoist": 2}, target=width_target(8))
    with pytest.raises(InputError, match="ipf"):
        gen_pattern_conv("c", w, stride=stride, padding=1, in_layout=Li, out_layout=Lo,
                         schedule={"layout": "ct", "ipf": -1}, target=width_target(8))

@pytest.mark.parametrize("vl", [8, 16])
@pytest.mark.parametrize("in_pad", [1, 2])
def test_channel_tile_stride2_reads_in_place(vl, in_pad):
    """Stride-2 channel tiles read the input in place (s2 1: ps_load_s2 through the halo) or
    through phase planes (s2 0), with tiles of one or two vectors, hoisted or not, odd sizes
    (tails of every vector) and halos of 1 and 2; the default is in place, and stride 1 has no
    s2 key."""
    rng = np.random.default_rng(13)
    w = pattern_weight(11, 6, keep=0.5, dense_frac=0.1)
    x = rng.standard_normal((6, 19, 45)).astype(np.float32)
    want = reference(w, x, stride=2, act="relu")
    for s2 in (0, 1):
        for vecs, hoist in ((1, 1), (2, 0)):
            sched = {"layout": "ct", "vecs": vecs, "rows": 3, "hoist": hoist, "s2": s2}
            assert_close(run_conv(w, x, stride=2, act="relu", in_pad=in_pad, schedule=sched, vl=vl, threads=2),
                         want)
    Li, Lo = Layout(6, 19, 45), Layout(11, 10, 23)
    assert gen_pattern_conv("c", w, stride=2, padding=1, in_layout=Li, out_layout=Lo,
                            schedule={"layout": "ct"}, target=width_target(vl)).schedule["s2"] == 1
    assert "s2" not in gen_pattern_conv("c", w, stride=1, padding=1, in_layout=Li, out_layout=Layout(11, 19, 45),
                                        schedule={"layout": "ct"}, target=width_target(vl)).schedule
    with pytest.raises(InputError, match="s2"):
        gen_pattern_conv("c", w, stride=2, padding=1, in_layout=Li, out_layout=Lo,
                         schedule={"layout": "ct", "s2": 3}, target=width_target(vl))


@pytest.mark.parametrize("wpf", [0, 16, WEIGHT_PREFETCH])
def test_channel_major_weight_prefetch(wpf):
    """The weight-stream and input prefetches (any distance, also past the end of the data) only
    move data; the default turns the weight prefetch on, ``wpf`` 0 leaves it out of the code."""
    rng = np.random.default_rng(9)
    w = pattern_weight(16, 24, keep=0.5, dense_frac=0.05)
    x = rng.standard_normal((24, 4, 4)).astype(np.float32)
    L = (Layout(24, 4, 4), Layout(16, 4, 4))
    gk = gen_pattern_conv("c", w, stride=1, padding=1, in_layout=L[0], out_layout=L[1],
                          schedule={"layout": "cm", "wpf": wpf}, target=width_target(8))
    assert ("__builtin_prefetch(wk + " in gk.code) == (wpf > 0)
    assert gen_pattern_conv("c", w, stride=1, padding=1, in_layout=L[0], out_layout=L[1],
                            target=width_target(8)).schedule["wpf"] == WEIGHT_PREFETCH
    for ipf in (0, 2, 30):  # input prefetch channels ahead: none, default, past the thread's share
        got = run_conv(w, x, act="relu", schedule={"layout": "cm", "wpf": wpf, "ipf": ipf}, vl=8, threads=2)
        assert_close(got, reference(w, x, act="relu"))
    for bad in ({"wpf": -4}, {"ipf": -1}):
        with pytest.raises(InputError, match=next(iter(bad))):
            gen_pattern_conv("c", w, stride=1, padding=1, in_layout=L[0], out_layout=L[1],
                             schedule={"layout": "cm", **bad}, target=width_target(8))

# Tap packing (2 or 4 taps of a kernel in one vector) at each vector width (run_conv builds
# each width on this host: natively, with the wider ISA off, or 16 lanes emulated).
@pytest.mark.parametrize("layout", ["flat", "cm"])
@pytest.mark.parametrize("vl,in_hw,stride,g", [(8, (2, 2), 1, 2), (8, (4, 3), 2, 2), (16, (2, 2), 1, 4),
                                               (16, (3, 8), 2, 2), (4, (1, 1), 1, 4)])
def test_tap_packed_tiny_layouts(layout, vl, in_hw, stride, g):
    """Packed copies hold every mask's taps (a dense kernel's 9 padded with zero slots)."""
    rng = np.random.default_rng(6)
    w = pattern_weight(18, 20, keep=0.5, dense_frac=0.05, small_frac=0.2)
    x = rng.standard_normal((20, *in_hw)).astype(np.float32)
    b = rng.standard_normal(18).astype(np.float32)
    Ho, Wo = (in_hw[0] - 1) // stride + 1, (in_hw[1] - 1) // stride + 1
    assert tap_pack(Layout(18, Ho, Wo), width_target(vl)) == g
    r = rng.standard_normal((18, Ho, Wo)).astype(np.float32)
    sched = {"layout": layout, "unroll": 1 + (vl == 8), "pack": g, "prefetch": int(vl == 16)}
    got = run_conv(w, x, stride=stride, act="relu", residual=r, bias=b, schedule=sched, vl=vl)
    assert_close(got, reference(w, x, stride=stride, act="relu", residual=r, bias=b))


def test_channel_major_past_the_flat_copies_limit():
    """cm copies one channel at a time, so a 7x7 plane with many channels (AVX-512: 4 vectors)
    runs channel-major by default even where the flat layout's copies would leave L2."""
    rng = np.random.default_rng(11)
    C, Li, Lo = 300, Layout(300, 7, 7), Layout(6, 7, 7)
    assert cm_fits(Lo, T16) and not flat_fits(Li, Lo, T16) and not cm_fits(Lo, T8)
    assert default_schedule(Li, Lo, T16)["layout"] == "cm"
    w = pattern_weight(6, C, keep=0.5, dense_frac=0.05)
    x = rng.standard_normal((C, 7, 7)).astype(np.float32)
    assert_close(run_conv(w, x, act="relu", vl=16), reference(w, x, act="relu"))
    with pytest.raises(InputError, match="use the 'cm' layout"):
        gen_pattern_conv("c", w, stride=1, padding=1, in_layout=Li, out_layout=Lo,
                         schedule={"layout": "flat"}, target=width_target(16))
    with pytest.raises(InputError, match="at most 4 vectors"):
        gen_pattern_conv("c", w, stride=1, padding=1, in_layout=Li, out_layout=Lo,
                         schedule={"layout": "cm"}, target=width_target(8))


def test_tap_pack_choice_and_errors():
    assert tap_pack(Layout(8, 4, 4), T8) == 1 and tap_pack(Layout(8, 2, 2), T8) == 2
    assert tap_pack(Layout(8, 1, 1), T8) == 1  # 8 taps per vector: a kernel has at most 4 (+ dense)
    w = pattern_weight(4, 4, keep=0.8)
    L = Layout(4, 2, 2)
    with pytest.raises(InputError, match="pack 4"):
        gen_pattern_conv("c", w, stride=1, padding=1, in_layout=L, out_layout=L,
                         schedule={"layout": "flat", "pack": 4}, target=width_target(8))
    assert gen_pattern_conv("c", w, stride=1, padding=1, in_layout=L, out_layout=L, target=width_target(8)).schedule["pack"] == 2
    # every 4-mask in use: the packed copies would leave L2, so the layer runs unpacked
    masks = list(itertools.combinations(range(9), 4))
    many = np.zeros((4, 512, 9), np.float32)
    for c in range(512):
        many[:, c, masks[c % len(masks)]] = 1.0
    big = Layout(512, 2, 2)
    k = gen_pattern_conv("c", many.reshape(4, 512, 3, 3), stride=1, padding=1, in_layout=big,
                         out_layout=Layout(4, 2, 2), schedule={"layout": "flat", "pack": 2}, target=width_target(8))
    assert k.schedule["pack"] == 1


def test_generic_vector_width_fallback():
    """The same generator with 4-float vectors, built without AVX: the portable path."""
    rng = np.random.default_rng(2)
    w = pattern_weight(8, 6, keep=0.6, dense_frac=0.1)
    x = rng.standard_normal((6, 9, 11)).astype(np.float32)
    for stride in (1, 2):
        got = run_conv(w, x, stride=stride, vl=4)
        assert_close(got, reference(w, x, stride=stride))
    tiny = x[:, :3, :3]
    for sched in ({"layout": "flat", "unroll": 2}, {"layout": "cm"}):
        got = run_conv(w, tiny, vl=4, schedule=sched)
        assert_close(got, reference(w, tiny))


def test_all_pruned_and_dense_layers():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 8, 8)).astype(np.float32)
    zero = np.zeros((4, 5, 3, 3), np.float32)
    assert_close(run_conv(zero, x, act="relu", bias=np.ones(4, np.float32)), np.ones((4, 8, 8)))
    dense = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    assert analyse(dense).masks == (FULL_MASK,)
    assert_close(run_conv(dense, x), reference(dense, x))


def test_storage_roundtrip_and_reorder_invariants():
    w = pattern_weight(32, 20, keep=0.3, dense_frac=0.05, small_frac=0.3, seed=5)
    sp = analyse(w)
    ro = reorder(sp)
    np.testing.assert_array_equal(unpack(pack(sp, ro, w), sp.masks), w)
    assert sorted(ro.perm.tolist()) == list(range(32))
    counts = (sp.kernel_mask[ro.perm] >= 0).sum(axis=1)
    assert (np.diff(counts) <= 0).all(), "filters not grouped by kernel count"
    assert ro.cidx.size == sp.n_kernels  # one index per kernel, no per-weight indices
    assert all(bin(m).count("1") in (4, 9) for m in sp.masks)


def test_pack_rejects_weights_outside_compiled_sparsity():
    w = pattern_weight(4, 4, keep=0.5, seed=7)
    sp = analyse(w, "layer1.conv")
    ro = reorder(sp)
    w2 = w.copy()
    f, c = np.argwhere((sp.kernel_mask < 0))[0]
    w2[f, c, 1, 1] = 1.0
    with pytest.raises(InputError, match="layer1.conv"):
        pack(sp, ro, w2, "layer1.conv")


def test_bad_geometry_is_named():
    w = pattern_weight(4, 4)
    with pytest.raises(UnsupportedError, match="stride 1 or 2, not 3"):
        gen_pattern_conv("c", w, stride=3, padding=1, in_layout=Layout(4, 8, 8), out_layout=Layout(4, 3, 3), target=HOST)
    with pytest.raises(InputError, match="output layout"):
        gen_pattern_conv("c", w, stride=1, padding=1, in_layout=Layout(4, 8, 8), out_layout=Layout(4, 7, 7), target=HOST)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_channel_blocked_row_tile_in_a_team(stride, threads):
    """Blocks of input channels, partial sums kept in the output between blocks: the last block
    adds bias and residual, applies the activation and zeroes the tail lanes (halo checked)."""
    rng = np.random.default_rng(7)
    w = pattern_weight(21, 37, keep=0.9, dense_frac=0.1, small_frac=0.2, seed=3)
    x = rng.standard_normal((37, 15, 21)).astype(np.float32)
    b = rng.standard_normal(21).astype(np.float32)
    Ho, Wo = (15 - 1) // stride + 1, (21 - 1) // stride + 1
    r = rng.standard_normal((21, Ho, Wo)).astype(np.float32)
    for cblk, vecs, vl in ((5, 2, None), (16, 2, None), (36, 2, None), (5, 1, None), (16, 1, 8), (7, 2, 4)):
        # vecs 1 (and 4- and 8-float vectors): several column tiles per row, each starting its
        # (filter, block) from the same cursor
        got = run_conv(w, x, stride=stride, act="relu6", residual=r, bias=b, threads=threads, vl=vl,
                       schedule={"layout": "rows", "rows": 4, "vecs": vecs, "cblk": cblk})
        assert_close(got, reference(w, x, stride=stride, act="relu6", residual=r, bias=b))


def test_channel_blocking_default_follows_density():
    L = Layout(64, 32, 32)
    dense_ish = pattern_weight(64, 64, keep=1.0)
    sparse = pattern_weight(64, 64, keep=0.25)
    rows = {"layout": "rows"}  # (the default layout of this shape is a channel tile)
    assert gen_pattern_conv("c", dense_ish, stride=1, padding=1, in_layout=L, out_layout=L,
                            target=width_target(16), schedule=rows).schedule["cblk"] == 16
    assert gen_pattern_conv("c", sparse, stride=1, padding=1, in_layout=L, out_layout=L,
                            target=width_target(16), schedule=rows).schedule["cblk"] == 0
    assert gen_pattern_conv("c", dense_ish, stride=1, padding=1, in_layout=L, out_layout=L, target=width_target(16),
                            schedule={"layout": "rows", "cblk": 0}).schedule["cblk"] == 0
    # a prefetch the caller chose is kept
    assert gen_pattern_conv("c", dense_ish, stride=1, padding=1, in_layout=L, out_layout=L, target=width_target(16),
                            schedule={"layout": "rows", "prefetch": 1}).schedule["prefetch"] == 1
    with pytest.raises(InputError, match="cblk"):
        gen_pattern_conv("c", dense_ish, stride=1, padding=1, in_layout=L, out_layout=L, target=width_target(16),
                         schedule={"layout": "rows", "order": "ft", "cblk": 8})


def test_tuning_space_is_sane():
    cands = candidate_schedules(Layout(64, 32, 32), Layout(64, 32, 32), HOST)
    assert cands and all(c["rows"] * c["vecs"] <= 24 for c in cands if c["layout"] == "rows")
    tiny = candidate_schedules(Layout(512, 4, 4), Layout(512, 4, 4), HOST)
    assert {c["layout"] for c in tiny} == {"rows", "flat", "cm", "ct"}
    assert default_schedule(Layout(512, 4, 4), Layout(512, 4, 4), HOST)["layout"] == "cm"
    # 32 registers: one-vector channel tiles as tall as the registers allow (balanced over a team)
    assert default_schedule(Layout(64, 56, 56), Layout(128, 28, 28), T16) == {"layout": "ct", "vecs": 1, "rows": 8, "hoist": 1}
    assert default_schedule(Layout(64, 56, 56), Layout(128, 28, 28), T16, 2) == {"layout": "ct", "vecs": 1, "rows": 7, "hoist": 1}
    assert default_schedule(Layout(64, 32, 32), Layout(64, 32, 32), T16) == {"layout": "ct", "vecs": 1, "rows": 8, "hoist": 0}
    assert default_schedule(Layout(128, 28, 28), Layout(128, 28, 28), T16) == {"layout": "ct", "vecs": 1, "rows": 8, "hoist": 0}
    # more filters: one-vector rows still run channel tiles, as tall as the registers allow
    assert default_schedule(Layout(256, 14, 14), Layout(256, 14, 14), T16) == {"layout": "ct", "vecs": 1, "rows": 8, "hoist": 0}
    assert default_schedule(Layout(256, 28, 28), Layout(256, 28, 28), T16)["layout"] == "rows"
    # register bound: (3 rows + 2) distinct input vectors per column, 32 registers; AVX2 as before
    assert [ct_rows(Layout(8, 64, 14), T16, v) for v in (1, 2)] == [8, 3]
    assert [ct_rows(Layout(8, 64, 14), T8, v) for v in (1, 2)] == [3, 1]
    assert default_schedule(Layout(64, 32, 32), Layout(64, 32, 32), T8)["layout"] == "rows"
    assert default_schedule(Layout(64, 56, 56), Layout(128, 28, 28), T8) == {"layout": "ct", "vecs": 2, "rows": 1, "hoist": 1}


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("size", [7, 14, 16, 28, 56])
def test_channel_tiles_balance_the_team(threads, size):
    """With the team size known, ct rows are chosen so the static split of tiles is even: the
    busiest thread within 5% of the best row count's (ResNet-18's 14-row layer: 6-row tiles gave
    one of two threads 12 rows, 7-row tiles give 7), and when not the best itself, every
    thread's share made of whole rows of tiles."""
    out, vl, t16 = Layout(256, size, size), 16, TARGETS["x86-64-avx512"]
    nv = -(-size // vl)

    def busiest(rows: int) -> int:  # rows (+1 per tile) of the busiest thread, omp static split
        costs = [min(rows, size - h) + 1 for h in range(0, size, rows) for _ in range(-(-nv // 2))]
        q, rem = divmod(len(costs), threads)
        cut = [t * q + min(t, rem) for t in range(threads + 1)]
        return max(sum(costs[cut[t]:cut[t + 1]]) for t in range(threads))

    plain, balanced = ct_rows(out, t16, 2), ct_rows(out, t16, 2, threads=threads)
    ncols = -(-nv // 2)
    best = min(busiest(r) for r in range(1, plain + 1))
    assert 1 <= balanced <= plain and busiest(balanced) <= 1.05 * best
    if busiest(balanced) > best:
        ntiles = -(-size // balanced) * ncols
        assert all((t * (ntiles // threads) + min(t, ntiles % threads)) % ncols == 0 for t in range(1, threads))
    assert ct_rows(out, t16, 2, limit=2, threads=threads) <= 2
    if size == 14:
        assert default_schedule(Layout(128, 28, 28), out, t16, threads=2) == {"layout": "ct", "vecs": 1, "rows": 7, "hoist": 1}
    if size == 56 and threads == 2:  # 8-row tiles (28 of them) would split inside a row of tiles
        assert default_schedule(Layout(64, 56, 56), Layout(64, 56, 56), t16, threads=2)["rows"] == 7
