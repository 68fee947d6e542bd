"""Numbers for the paper's Figure-5 claim: pattern-pruned networks "capture more image details
and less noise". A picture alone cannot be wrong; these can.

Every function takes a saliency map (a 2-D array, or a (C, H, W) / (1, C, H, W) tensor that
:func:`to_map` reduces to 2-D) and is invariant to the map's overall scale, because maps of two
different networks have arbitrary, unrelated magnitudes.

- :func:`high_frequency_fraction`: share of spectral energy above a radial frequency cutoff.
  Speckle noise lives there; a lower share means a smoother, less noisy map.
- :func:`gradient_sharpness` and :func:`laplacian_variance`: how crisp the map's edges are
  (Tenengrad and variance of Laplacian, the usual focus measures), on the map scaled to max |value| = 1.
- :func:`correlation`: how faithfully an inverted representation reproduces the image.
- :func:`concentration`: share of saliency mass on the object when an object mask exists
  (Fashion-MNIST: the garment's pixels; the background is black), i.e. signal vs background noise.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..errors import InputError

ArrayLike = np.ndarray | torch.Tensor


def to_map(saliency: ArrayLike, reduce: str = "absmax") -> np.ndarray:
    """A 2-D float64 map from a saliency tensor: ``absmax`` over channels (Simonyan et al.) or
    ``abssum``. Accepts (H, W), (C, H, W) or (1, C, H, W)."""
    a = to_array(saliency)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(f"to_map: expected one map, got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim == 3:
        if reduce == "absmax":
            a = np.abs(a).max(0)
        elif reduce == "abssum":
            a = np.abs(a).sum(0)
        else:
            raise InputError(f"to_map: reduce must be 'absmax' or 'abssum', got {reduce!r}")
    if a.ndim != 2 or min(a.shape) < 3:
        raise InputError(f"to_map: expected a 2-D map of at least 3x3, got shape {a.shape}")
    return a


def _unit(m: np.ndarray) -> np.ndarray:
    peak = np.abs(m).max()
    return m / peak if peak > 0 else m


def radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """Radial frequency of each FFT bin as a fraction of Nyquist (0 = DC, 1 = Nyquist on an axis)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return np.sqrt(fx ** 2 + fy ** 2) / 0.5


def high_frequency_fraction(saliency: ArrayLike, cutoff: float = 0.5) -> float:
    """Fraction of the map's (mean-removed) spectral energy at radial frequency > ``cutoff``
    times Nyquist. 0 for a constant map. A fine checkerboard gives ~1, a smooth blob ~0."""
    if not 0 < cutoff < np.sqrt(2):
        raise InputError(f"high_frequency_fraction: cutoff must be in (0, sqrt 2), got {cutoff}")
    m = to_map(saliency)
    power = np.abs(np.fft.fft2(m - m.mean())) ** 2
    total = power.sum()
    if total <= 0:
        return 0.0
    return float(power[radial_frequency(m.shape) > cutoff].sum() / total)


def gradient_sharpness(saliency: ArrayLike) -> float:
    """Mean squared gradient magnitude (Tenengrad focus measure, central differences) of the map
    scaled to max |value| = 1. Squared on purpose: the plain mean |gradient| of a monotone edge
    equals its height whatever its width, so it cannot tell a sharp edge from a blurred one."""
    gy, gx = np.gradient(_unit(to_map(saliency)))
    return float((gx ** 2 + gy ** 2).mean())


def laplacian_variance(saliency: ArrayLike) -> float:
    """Variance of the 5-point Laplacian (interior pixels) of the map scaled to max |value| = 1."""
    m = _unit(to_map(saliency))
    lap = m[1:-1, :-2] + m[1:-1, 2:] + m[:-2, 1:-1] + m[2:, 1:-1] - 4 * m[1:-1, 1:-1]
    return float(lap.var())


def concentration(saliency: ArrayLike, mask: ArrayLike) -> float:
    """Share of the map's absolute mass that falls inside the object ``mask`` (bool, same H, W).
    Compare with the mask's area share: a map that ignores the object scores about that."""
    m = np.abs(to_map(saliency))
    k = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    k = np.squeeze(k).astype(bool)
    if k.shape != m.shape:
        raise InputError(f"concentration: mask shape {k.shape} differs from map shape {m.shape}")
    if not k.any():
        raise InputError("concentration: the object mask is empty")
    total = m.sum()
    return float(m[k].sum() / total) if total > 0 else 0.0


def correlation(image: ArrayLike, reference: ArrayLike) -> float:
    """Pearson correlation of two images of the same shape (all channels): how faithfully an
    inverted representation reproduces the original, whatever its contrast and offset."""
    a = to_array(image)
    b = to_array(reference)
    if a.shape != b.shape:
        raise InputError(f"correlation: shapes differ: {a.shape} vs {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def to_array(x: ArrayLike) -> np.ndarray:
    """float64 numpy copy of a tensor or array (no reduction), rejecting NaN/Inf."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError("the array contains NaN or Inf")
    return a


def summarize(saliency: ArrayLike, mask: ArrayLike | None = None, cutoff: float = 0.5) -> dict[str, float]:
    """All metrics of one map in a dict (``concentration`` only when a mask is given)."""
    out = {
        "hf_fraction": high_frequency_fraction(saliency, cutoff),
        "grad_sharpness": gradient_sharpness(saliency),
        "laplacian_var": laplacian_variance(saliency),
    }
    if mask is not None:
        out["concentration"] = concentration(saliency, mask)
    return out


def mean_metrics(rows: list[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation of each metric over several maps."""
    if not rows:
        raise InputError("mean_metrics: no rows")
    keys = sorted(set().union(*rows))
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        out[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out
