"""benchmarks/prune_defaults.py: the page has one section per swept model, paired intervals from
two seeds on, and the command of every run."""

import json
from pathlib import Path

from benchmarks import prune_defaults as pd


def _row(config: str, rate: float, seed: int, diff: float, model: str = "resnet18 (width 0.25)") -> dict:
    return {"config": config, "knobs": pd.CONFIGS[config], "rate": rate, "seed": seed, "subset": 6000,
            "model": model, "dense_acc": 0.9, "acc": 0.9 + diff / 100, "diff_points": diff,
            "final_gap_points": 1.0, "final_reach": 3.0, "seconds": 10.0, "date": "2026-01-01 00:00 UTC",
            "commit": "abc1234", "command": "python -m x",
            "machine": {"cpu": "Test CPU", "cores": 2, "torch_threads": 1, "gpu": "none", "python": "3.11",
                        "torch": "2.13.0", "os": "Linux"}}


def test_report_only_renders_every_model(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    vgg = {**_row("default", 16.0, 0, -0.5, "vgg16_bn (width 0.25)"), "hard_pruned_acc": 0.85}
    for name, rows in {"r18": [_row("default", 8.0, 0, -0.2), _row("default", 8.0, 1, 0.2)], "vgg": [vgg]}.items():
        d = out / name / "subset6000"
        d.mkdir(parents=True)
        for r in rows:
            (d / f"{r['config']}-{r['rate']:g}x-seed{r['seed']}.json").write_text(json.dumps(r))
    model_dir = tmp_path / "r18"
    model_dir.mkdir()
    (model_dir / "model.json").write_text(json.dumps({"dataset": "fashion-mnist"}))
    page = tmp_path / "page.md"
    assert pd.main(["--model-dir", str(model_dir), "--out", str(out), "--docs", str(page), "--report-only"]) == 0
    text = page.read_text()
    assert "### resnet18 (width 0.25), dense test accuracy 90.00% (`r18`)" in text
    assert "### vgg16_bn (width 0.25), dense test accuracy 90.00% (`vgg`)" in text
    # two seeds: mean with a t-interval (12.71 * stdev / sqrt 2 = 2.54); one seed: the mean alone
    assert "| 8x | default | (the defaults) | 2 | +0.00 ± 2.54 |" in text
    # the accuracy right after hard pruning, where a row has it
    assert "| 16x | default | (the defaults) | 1 | -0.50 | -5.00 |" in text
    assert "| 8x | default | (the defaults) | 2 | +0.00 ± 2.54 | - |" in text
    assert "Commands: `python -m x`" in text
