"""The accuracy grid script on a tiny budget (scikit-learn digits, 1 epoch): rows are stored as
they finish, a re-run resumes instead of retraining, and the RESULTS.md section is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from patsparse.errors import FormatError, InputError
from patsparse.train.resume import EpochCheckpoint

from benchmarks import _report as report
from benchmarks import accuracy as acc
from benchmarks import results

ROWS = "dense,pattern-phase2,magnitude-8x"


def _argv(tmp: Path, rows: str = ROWS) -> list[str]:
    return ["--dataset", "digits", "--budget", "tiny", "--models", "convnet", "--rows", rows,
            "--out", str(tmp / "runs"), "--results", str(tmp / "RESULTS.md"), "--quiet", "--threads", "2"]


def test_grid_runs_resumes_and_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "RESULTS.md").write_text("# Results\n\n<!-- section:other -->\nkept\n<!-- /section:other -->\n")
    assert acc.main(_argv(tmp_path)) == 0
    cell_dir = tmp_path / "runs" / "digits" / "tiny" / "convnet" / "seed0"
    stored = {p.stem: json.loads(p.read_text()) for p in cell_dir.glob("*.json")}
    assert set(stored) == {"dense", "pattern-phase2", "magnitude-8x"}
    assert (cell_dir / "dense.safetensors").exists() and (cell_dir / "pattern-phase2.safetensors").exists()
    assert not (cell_dir / "magnitude-8x.safetensors").exists()
    assert not list(cell_dir.glob("partial/*"))  # a finished row leaves no partial state
    for row in stored.values():
        assert 0.0 <= row["acc"] <= 1.0
        assert row["date"].endswith("UTC") and row["command"].startswith("python -m benchmarks.accuracy")
        assert row["machine"]["cores"] >= 1 and row["config"]["seed"] == 0
    assert stored["dense"]["rate_3x3"] == pytest.approx(1.0)
    assert stored["pattern-phase2"]["rate_3x3"] == pytest.approx(2.25, rel=0.02)
    assert stored["magnitude-8x"]["rate_3x3"] == pytest.approx(8.0, rel=0.02)

    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- section:other -->\nkept" in text  # another script's section survives
    assert "## Accuracy grid: digits, budget `tiny`" in text
    assert "| pattern-phase2 | 2.25x |" in text and "| pc-16x |" not in text
    assert "Not run for convnet at this budget: dense-ft, pattern-phase1" in text
    assert "Which claims hold here" in text and "| undecided |" in text  # one seed decides nothing
    # every run with its provenance lives beside the rows, linked from the section
    runs = (tmp_path / "runs" / "digits" / "tiny" / "runs.md").read_text()
    assert "[runs.md](runs/digits/tiny/runs.md)" in text and "| convnet | magnitude-8x | 0 |" in runs
    assert "- C1: `python -m benchmarks.accuracy" in runs

    # resume: nothing is retrained, and the section is rewritten identically
    def boom(*a, **k):
        raise AssertionError("a finished row was run again")

    monkeypatch.setattr(acc, "run_row", boom)
    assert acc.main(_argv(tmp_path)) == 0
    assert (tmp_path / "RESULTS.md").read_text() == text

    # a stored row from another configuration is refused, not silently mixed in
    path = cell_dir / "dense.json"
    row = json.loads(path.read_text())
    row["config"]["dense_epochs"] = 99
    path.write_text(json.dumps(row))
    with pytest.raises(FormatError, match="another configuration"):
        acc.main(_argv(tmp_path))


def test_missing_row_after_dense_reuses_stored_dense(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert acc.main(_argv(tmp_path, "dense")) == 0
    calls = []
    real = acc.run_row
    monkeypatch.setattr(acc, "run_row", lambda cell, row, *a: calls.append(row.id) or real(cell, row, *a))
    assert acc.main(_argv(tmp_path, "dense,filter-8x")) == 0
    assert calls == ["filter-8x"]


def test_a_stopped_dense_row_goes_on_exactly_from_its_last_epoch(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense parent takes hours here: a run stopped after two of three epochs continues from
    the stored epoch to the very weights an uninterrupted run reaches, and never under another
    configuration or from a damaged file."""
    cell = acc.Cell("digits", acc.BUDGETS["tiny"], "convnet", 0, None, "cpu", False)
    config = {"row": "dense", "epochs": 3}
    pointer = tmp_path / "partial" / "dense.json"
    train, _ = cell.loaders()
    whole = cell.build()
    acc.train_plain(whole, train, 3, 0.05, cell, "dense")

    real, done = acc.train_epoch, []

    def stop_in_third_epoch(*a, **k):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return real(*a, **k)

    monkeypatch.setattr(acc, "train_epoch", stop_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        acc.train_plain(cell.build(), train, 3, 0.05, cell, "dense", EpochCheckpoint(pointer, config))
    monkeypatch.setattr(acc, "train_epoch", real)

    with pytest.raises(FormatError, match="another configuration"):
        acc.train_plain(cell.build(), train, 3, 0.05, cell, "dense",
                        EpochCheckpoint(pointer, {**config, "epochs": 4}))
    checkpoint = EpochCheckpoint(pointer, config)
    resumed = cell.build()
    acc.train_plain(resumed, train, 3, 0.05, cell, "dense", checkpoint)
    assert checkpoint.earlier > 0 and checkpoint.elapsed() > checkpoint.earlier
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name

    data = bytearray(checkpoint.tensors.read_bytes())
    data[-1] ^= 0xFF
    checkpoint.tensors.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="does not match the hash"):
        acc.train_plain(cell.build(), train, 3, 0.05, cell, "dense", EpochCheckpoint(pointer, config))
    checkpoint.clear()
    assert not list((tmp_path / "partial").iterdir())


def test_a_run_of_one_model_keeps_the_other_models_tables(tmp_path: Path) -> None:
    """The grid runs in pieces (one process per model): each piece's report covers every stored
    model, so the last piece to finish does not drop the others from RESULTS.md."""
    assert acc.main(_argv(tmp_path, "dense")) == 0
    other = tmp_path / "runs" / "digits" / "tiny" / "resnet8" / "seed0"
    other.mkdir(parents=True)
    row = json.loads((tmp_path / "runs" / "digits" / "tiny" / "convnet" / "seed0" / "dense.json").read_text())
    row["config"]["model"] = "resnet8"
    (other / "dense.json").write_text(json.dumps(row))
    assert acc.main([*_argv(tmp_path, "dense"), "--report-only"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "### resnet8" in text and "### convnet" in text
    assert text.index("### resnet8") < text.index("### convnet")  # the default models' order first


def test_results_summary_states_each_claim_first(tmp_path: Path) -> None:
    res = tmp_path / "RESULTS.md"
    res.write_text("# Results\n\n<!-- section:theory -->\nt\n<!-- /section:theory -->\n")
    assert acc.main(_argv(tmp_path, "dense,pattern-phase2,pattern-random")) == 0
    assert results.main(["--dataset", "digits", "--budget", "tiny", "--steps", "summary",
                         "--out", str(tmp_path / "runs"), "--results", str(res)]) == 0
    text = res.read_text()
    assert text.index("section:summary") < text.index("section:theory") < text.index("section:accuracy")
    summary = text[text.index("section:summary"):text.index("/section:summary")]
    assert "| Phase-2 masks sum to the Gaussian and ELoG reference filters (section 4) |" in summary
    assert "Designed Phase-2 library beats random 4-entry masks" in summary and "convnet" in summary
    assert "--budget paper" in summary  # the GPU command for paper-scale rows
    claims = summary.split("(section 4) |", 1)[1].split("\n", 1)[1]  # the rows after the theory row
    assert "| undecided |" in claims and "| yes |" not in claims  # one seed decides nothing
    assert "| not run | - |" in summary  # claims whose rows were not run stay in the table
    assert "| claim | our evidence (`tiny`) | holds at `tiny`? |" in summary
    # another budget's stored rows add its verdict beside the lead budget's
    small = tmp_path / "runs" / "digits" / "small"
    small.mkdir(parents=True)
    for row in (tmp_path / "runs" / "digits" / "tiny").rglob("*.json"):
        dest = small / row.relative_to(tmp_path / "runs" / "digits" / "tiny")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(row.read_text())
    assert results.main(["--dataset", "digits", "--budget", "tiny", "--steps", "summary",
                         "--out", str(tmp_path / "runs"), "--results", str(res)]) == 0
    assert "| claim | our evidence (`tiny`) | holds at `tiny`? | at `small`? |" in res.read_text()


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="matches no row"):
        acc.main(["--rows", "nothing*", "--dataset", "digits"])
    with pytest.raises(InputError, match="data-root"):
        acc.main(["--dataset", "imagenet"])
    with pytest.raises(InputError, match="unknown model"):
        acc.main(["--models", "alexnet", "--dataset", "digits"])


def _rows(accs: list[float]) -> list[dict]:
    return [{"acc": a, "config": {"seed": s}} for s, a in enumerate(accs)]


def test_verdict_needs_the_whole_paired_interval_past_the_bar() -> None:
    assert acc.verdict(_rows([0.90]), _rows([0.80]), 0.0)[0] == "undecided"  # one seed
    word, m, h = acc.verdict(_rows([0.901, 0.899, 0.900]), _rows([0.800, 0.801, 0.799]), 1.0)
    assert word == "holds" and m == pytest.approx(10.0) and h < 1
    assert acc.verdict(_rows([0.80, 0.81, 0.79]), _rows([0.90, 0.91, 0.89]), -0.3)[0] == "fails"
    # a mean loss of 0.2 points whose interval reaches -1.5 does not show "loses at most 0.3"
    assert acc.verdict(_rows([0.89, 0.905, 0.899]), _rows([0.90, 0.90, 0.90]), -0.3)[0] == "undecided"
    # pairing by seed: a shared seed effect cancels, so a steady 0.1-point loss is decided
    word, m, _ = acc.verdict(_rows([0.799, 0.899, 0.849]), _rows([0.80, 0.90, 0.85]), -0.3)
    assert word == "holds" and m == pytest.approx(-0.1)


def test_random_control_library_is_valid_and_seeded() -> None:
    from patsparse.patterns.library import validate_library

    a, b = acc.random_library(8, 0), acc.random_library(8, 1)
    validate_library(a)
    assert a.shape == (8, 3, 3) and (a.flatten(1).sum(1) == 4).all()
    assert not (a == b).all()
    assert (acc.random_library(8, 0) == a).all()


def test_update_section_replaces_only_its_own(tmp_path: Path) -> None:
    p = tmp_path / "R.md"
    report.update_section("a", "first", p)
    report.update_section("b", "second", p)
    report.update_section("a", "third", p)
    text = p.read_text()
    assert "first" not in text and "third" in text and "second" in text
    assert text.index("third") < text.index("second")


def test_results_theory_step(tmp_path: Path) -> None:
    assert results.main(["--steps", "theory", "--docs", str(tmp_path / "docs"),
                     "--results", str(tmp_path / "docs" / "RESULTS.md")]) == 0
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "- gaussian: holds" in text and "- elog: holds" in text
    assert "](theory_identities.png)" in text and (tmp_path / "docs" / "theory_identities.png").exists()
    with pytest.raises(InputError, match="--steps"):
        results.main(["--steps", "everything"])


@pytest.mark.slow
def test_results_extraction_step_on_tiny_budget(tmp_path: Path) -> None:
    argv = ["--dataset", "digits", "--budget", "tiny", "--steps", "extraction", "--extraction-model", "convnet",
            "--out", str(tmp_path / "runs" / "accuracy"), "--docs", str(tmp_path / "docs"),
            "--results", str(tmp_path / "docs" / "RESULTS.md"), "--quiet"]
    assert results.main(argv) == 0
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "| 126 -> 32 |" in text and "| 8 -> 4 |" in text
    assert "of the extracted 8 patterns coincide with the designed Phase-2 library" in text
    assert (tmp_path / "docs" / "extraction_digits.png").exists()
    assert results.main(argv) == 0  # stored: the second run only rewrites the section
    assert (tmp_path / "docs" / "RESULTS.md").read_text() == text


def test_oneshot_pattern_rows_retrain_as_long_as_the_baselines() -> None:
    cell = acc.Cell("fashion-mnist", acc.BUDGETS["medium"], "vgg16_bn", 0, None, "cpu", False, "")
    rows = {r.id: r for r in acc.ROWS}
    one, admm = cell.recipe(rows["pc-8x-oneshot"]), cell.recipe(rows["pc-8x"])
    assert one.oneshot and not admm.oneshot
    assert one.retrain_epochs == cell.budget.prune_epochs == admm.admm_iters * admm.epochs + admm.retrain_epochs
    assert cell.config(rows["magnitude-8x"])["retrain"]["lr"] == one.retrain_rate  # same retraining rate too


def test_the_report_counts_the_budgets_seeds_not_one_runs(tmp_path: Path) -> None:
    """A run of one seed (``--seeds 1``, a piece of the grid) reports the budget's whole plan."""
    (tmp_path / "RESULTS.md").write_text("# Results\n")
    argv = ["--dataset", "digits", "--budget", "medium", "--models", "convnet", "--seeds", "1", "--report-only",
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "RESULTS.md"), "--quiet"]
    assert acc.main(argv) == 0
    seeds = acc.BUDGETS["medium"].seeds
    assert f"{len(acc.ROWS)} rows x {seeds} seeds" in (tmp_path / "RESULTS.md").read_text()


def test_rows_stored_before_a_recipe_knob_existed_still_count() -> None:
    """A knob added to PruneRecipe after a row ran is missing from its stored recipe: at its default
    the row is the same configuration, set to anything else it is not."""
    cell = acc.Cell("fashion-mnist", acc.BUDGETS["medium"], "vgg16_bn", 0, None, "cpu", False, "")
    row = {r.id: r for r in acc.ROWS}["pc-8x-oneshot"]
    current = cell.config(row)
    stored = {**current, "recipe": {k: v for k, v in current["recipe"].items() if k != "reconstruct"}}
    assert acc.same_config(stored, current) and acc.same_config(current, current)
    assert not acc.same_config(stored, {**current, "recipe": {**current["recipe"], "reconstruct": 64}})
    assert not acc.same_config({**stored, "seed": 1}, current)
    assert not acc.same_config(None, current)
    older = {**current, "recipe": {k: v for k, v in current["recipe"].items() if k != "steps"}}
    assert not acc.same_config(older, current)  # not a known later field: no guess about what ran
    grid = report.BENCH / "accuracy/fashion-mnist/medium"
    for model, seed, row in (("resnet18", 0, "pc-8x-oneshot"), ("resnet18", 0, "dense"), ("vgg16_bn", 1, "magnitude-8x")):
        real = json.loads((grid / f"{model}/seed{seed}/{row}.json").read_text())["config"]
        cell = acc.Cell("fashion-mnist", acc.BUDGETS["medium"], model, seed, None, "cpu", False, "")
        assert acc.same_config(real, cell.config({r.id: r for r in acc.ROWS}[row])), (model, seed, row)
