"""Saliency metrics on synthetic maps whose answer is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patsparse.errors import InputError
from patsparse.viz import metrics as M

N = 32
YY, XX = np.mgrid[0:N, 0:N].astype(np.float64)


def test_checkerboard_is_all_high_frequency_and_smooth_wave_none() -> None:
    checker = (-1.0) ** (XX + YY)
    assert M.high_frequency_fraction(checker) == pytest.approx(1.0)
    smooth = np.cos(2 * np.pi * 2 * XX / N)  # 2 cycles over 32 px: 0.125 of Nyquist
    assert M.high_frequency_fraction(smooth) == pytest.approx(0.0, abs=1e-12)
    assert M.high_frequency_fraction(np.full((N, N), 3.0)) == 0.0


def test_mixture_fraction_equals_amplitude_share() -> None:
    a, b = 2.0, 0.5
    low = a * np.cos(2 * np.pi * 3 * YY / N)
    high = b * np.cos(2 * np.pi * 12 * XX / N)  # 12/16 = 0.75 of Nyquist, above the 0.5 cutoff
    frac = M.high_frequency_fraction(low + high, cutoff=0.5)
    assert frac == pytest.approx(b ** 2 / (a ** 2 + b ** 2), rel=1e-9)
    # moving the cutoff above the high component sends everything to "low"
    assert M.high_frequency_fraction(low + high, cutoff=0.8) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(1e-3, 1e3))
def test_metrics_are_scale_invariant_and_bounded(seed: int, scale: float) -> None:
    m = np.random.default_rng(seed).normal(size=(16, 20))
    base = M.summarize(m, mask=m > 0)
    scaled = M.summarize(m * scale, mask=m > 0)
    for k in base:
        assert scaled[k] == pytest.approx(base[k], rel=1e-9, abs=1e-12)
    assert 0.0 <= base["hf_fraction"] <= 1.0
    assert 0.0 <= base["concentration"] <= 1.0


def test_white_noise_is_rougher_than_its_blur() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(N, N))
    k = np.ones(5) / 5
    blur = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, noise)
    blur = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, blur)
    assert M.high_frequency_fraction(noise) > 0.5 > M.high_frequency_fraction(blur)


def test_sharp_edge_beats_blurred_edge() -> None:
    step = (XX >= N / 2).astype(np.float64)
    ramp = np.clip((XX - N / 2) / 8 + 0.5, 0, 1)
    assert M.gradient_sharpness(step) > M.gradient_sharpness(ramp)
    assert M.laplacian_variance(step) > M.laplacian_variance(ramp)
    # hand-computed: central differences give 0.5 on the two columns beside the step
    assert M.gradient_sharpness(step) == pytest.approx(2 * 0.5 ** 2 / N)


def test_concentration_hand_computed() -> None:
    mask = np.zeros((N, N), bool)
    mask[8:24, 8:24] = True  # a quarter of the image
    assert M.concentration(mask.astype(float), mask) == pytest.approx(1.0)
    assert M.concentration(np.ones((N, N)), mask) == pytest.approx(0.25)
    m = np.ones((N, N))
    m[mask] = 3.0
    assert M.concentration(m, mask) == pytest.approx(3 * 256 / (3 * 256 + 768))


def test_to_map_reduces_channels_and_checks_shape() -> None:
    t = torch.zeros(1, 3, 4, 4)
    t[0, 1, 0, 0] = -2.0
    t[0, 2, 0, 0] = 1.0
    assert M.to_map(t)[0, 0] == 2.0
    assert M.to_map(t, reduce="abssum")[0, 0] == 3.0
    with pytest.raises(InputError, match="NaN"):
        M.to_map(np.full((4, 4), np.nan))
    with pytest.raises(InputError, match="batch of 2"):
        M.to_map(torch.zeros(2, 1, 4, 4))
    with pytest.raises(InputError, match="mask shape"):
        M.concentration(np.ones((4, 4)), np.ones((5, 5)))
    with pytest.raises(InputError, match="empty"):
        M.concentration(np.ones((4, 4)), np.zeros((4, 4)))


def test_correlation_ignores_contrast_and_offset() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(size=(3, 8, 8))
    assert M.correlation(2.5 * img + 7, img) == pytest.approx(1.0)
    assert M.correlation(-img, img) == pytest.approx(-1.0)
    assert abs(M.correlation(rng.normal(size=(3, 64, 64)), rng.normal(size=(3, 64, 64)))) < 0.05
    with pytest.raises(InputError, match="shapes differ"):
        M.correlation(img, img[:2])


def test_mean_metrics() -> None:
    out = M.mean_metrics([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}])
    assert out["a"] == pytest.approx((2.0, np.sqrt(2.0)))
    assert out["b"] == (2.0, 0.0)


def test_saliency_grid_writes_a_png(tmp_path) -> None:
    from patsparse.viz.figures import Panel, saliency_display, saliency_grid, to_display

    rng = np.random.default_rng(0)
    imgs = [torch.rand(1, 3, 16, 16), np.random.rand(16, 16)]
    cols = ["GBP dense", "GBP pruned", "inversion"]
    panels = [[Panel(rng.normal(size=(3, 16, 16))), Panel(rng.normal(size=(16, 16)), note="hf 0.5"),
               Panel(torch.rand(3, 16, 16), kind="image")] for _ in imgs]
    out = saliency_grid(imgs, cols, panels, tmp_path / "fig.png", row_labels=["a", "b"], title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert to_display(torch.rand(1, 3, 5, 5)).shape == (5, 5, 3)
    spike = np.zeros((20, 20))
    spike[5, :10] = 1.0
    spike[0, 0] = 1000.0  # one hot pixel must not wash out the ten ordinary ones
    shown = saliency_display(spike)
    assert shown.max() == 1.0 and (shown[5, 1:10] == 1.0).all()
    with pytest.raises(InputError, match="row 0 has 1 panels"):
        saliency_grid(imgs[:1], cols, [[Panel(np.ones((4, 4)))]], tmp_path / "bad.png")
