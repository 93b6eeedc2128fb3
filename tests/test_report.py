"""finexp-report: grouping, mean ± std over seeds, failed and unfinished runs, other keys, and the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from finexp.report import find_runs, main, summarize


def fake_run(root: Path, name: str, *, adapter: str = "lora", seed: int = 1, auroc: float | None = 0.8,
             lr: float = 1e-4, epsilon: float | None = None, trainable: int = 1000, error: str | None = None,
             baseline: bool = False) -> Path:  # fmt: skip
    """A run directory as finexp-train leaves it (metrics.json only when it completed, error.json when it failed)."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "seed": seed,
        "model": {"name": "tfidf_logreg" if baseline else "minilm", "kind": "baseline" if baseline else "transformer"},
        "optimizer": {"lr": lr},
        "privacy": {"name": "dp_sgd" if epsilon else "none", "epsilon": epsilon},
        "paths": {"output_dir": str(run)},
        "callbacks": {"model_checkpoint": {"dirpath": f"{run}/checkpoints"}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"adapter": adapter, "model": config["model"]["name"], "task": "credit_scoring"}
    (run / "run_info.json").write_text(json.dumps({"seed": seed, "choices": choices, "monitor": "val/auroc"}))
    if error:
        (run / "error.json").write_text(json.dumps({"status": "failed", "error": error, "type": "RuntimeError"}))
    elif auroc is not None:
        metrics = {"status": "completed", "monitor": "val/auroc", "test/auroc": auroc, "val/auroc": auroc + 0.01,
                   "params/trainable": trainable, "params/trainable_pct": trainable / 1e5, "time/epoch_s": 10.0,
                   "memory/peak_mb": 900.0, "checkpoint/size_mb": trainable / 1e4}  # fmt: skip
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for i, (adapter, seed, auroc) in enumerate(
        [("full", 1, 0.80), ("full", 2, 0.82), ("full", 3, 0.84), ("lora", 1, 0.78), ("lora", 2, 0.80)]
    ):
        fake_run(root, str(i), adapter=adapter, seed=seed, auroc=auroc, trainable=100_000 if adapter == "full" else 500)
    fake_run(root, "5", adapter="ia3", error="CUDA out of memory")
    fake_run(root, "6", adapter="bottleneck", auroc=None)  # still running: run_info.json only
    fake_run(root, "baselines/0", adapter="full", auroc=0.75, trainable=50, baseline=True)
    return root


def test_report_aggregates_seeds_and_lists_failed_and_unfinished(sweep, capsys):
    main([str(sweep)])
    table = pd.read_csv(sweep / "report.csv")
    rows = table.set_index("adapter")
    assert rows.loc["full", "mean"] == pytest.approx(0.82) and rows.loc["full", "std"] == pytest.approx(0.02)
    assert rows.loc["full", "runs"] == 3 and rows.loc["lora", "runs"] == 2
    assert rows.loc["lora", "trainable_pct"] == pytest.approx(0.005)
    assert rows.loc["tfidf_logreg (baseline)", "runs"] == 1  # a baseline is named by its model, not its adapter
    assert table["adapter"].iloc[0] == "full"  # best first
    assert set(table["metric"]) == {"test/auroc"}  # the monitor, val/ -> test/
    report = (sweep / "report.md").read_text()
    assert "0.8200 ± 0.0200" in report
    assert "## Failed runs" in report and "`5` (adapter=ia3" in report and "CUDA out of memory" in report
    assert "## Unfinished runs" in report and "`6` (adapter=bottleneck" in report
    assert (sweep / "report.png").stat().st_size > 1000
    assert "written:" in capsys.readouterr().out


def test_runs_differing_in_more_than_the_seed_are_separate_rows(tmp_path):
    for i, lr in enumerate([1e-4, 1e-4, 1e-3]):
        fake_run(tmp_path, str(i), seed=i, lr=lr)
    rows = summarize(find_runs(tmp_path)).set_index("adapter")
    assert rows.loc["lora (optimizer.lr=0.0001)", "runs"] == 2 and rows.loc["lora (optimizer.lr=0.001)", "runs"] == 1


def test_group_by_a_dotted_config_key_and_plot_it(tmp_path):
    for i, (epsilon, auroc) in enumerate([(1.0, 0.6), (1.0, 0.62), (8.0, 0.75), (8.0, 0.77)]):
        fake_run(tmp_path, str(i), seed=i, epsilon=epsilon, auroc=auroc)
    main([str(tmp_path), "--by", "privacy.epsilon", "--x", "privacy.epsilon", "--out", str(tmp_path / "report")])
    table = pd.read_csv(tmp_path / "report" / "report.csv").set_index("privacy.epsilon")
    assert table.loc[8.0, "mean"] == pytest.approx(0.76) and table.loc[1.0, "runs"] == 2
    assert (tmp_path / "report" / "report.png").is_file()


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no runs found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Statistics: bootstrap intervals, paired tests against a baseline, LaTeX/HTML, --reproduce
# ---------------------------------------------------------------------------------------------------------------
def write_predictions(run: Path, gold: np.ndarray, correct: np.ndarray, seed: int, fingerprint: str = "abc") -> None:
    """A test_predictions.csv (classes good/bad) right exactly where ``correct``, and the split's fingerprint."""
    rng = np.random.default_rng(seed)
    labels = ["good", "bad"]
    right = np.where(gold == 1, 0.7, 0.3)  # P(bad) on the right side of 0.5
    p_bad = np.where(correct, right, 1 - right) + rng.uniform(-0.15, 0.15, len(gold))
    frame = pd.DataFrame({"row": range(len(gold)), "row_id": [f"id{i}" for i in range(len(gold))],
                          "gold": [labels[g] for g in gold], "predicted": [labels[int(p > 0.5)] for p in p_bad],
                          "prob_good": 1 - p_bad, "prob_bad": p_bad})  # fmt: skip
    frame.to_csv(run / "test_predictions.csv", index=False)
    info = json.loads((run / "run_info.json").read_text())
    info |= {"labels": labels, "data_fingerprint": {"test": fingerprint}, "command": ["finexp-train", "-m", "x=1"]}
    info |= {"git": {"finexp": {"commit": "a" * 40, "dirty": False}}, "versions": {"torch": "2.4", "finexp": "0.1"}}
    (run / "run_info.json").write_text(json.dumps(info))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["monitor"], metrics["test/accuracy"] = "val/accuracy", float(correct.mean())
    (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def paired_sweep(tmp_path: Path) -> Path:
    """full is right on 30 more of 500 rows than freeze (every seed); lora predicts exactly as full."""
    root = tmp_path / "paired"
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 500)
    for i, (adapter, seed) in enumerate((a, s) for a in ("full", "freeze", "lora") for s in (1, 2, 3)):
        correct = np.zeros(500, bool)
        correct[: 400 - 5 * seed] = True
        if adapter == "freeze":
            correct[rng.choice(np.flatnonzero(correct), 30, replace=False)] = False
        run = fake_run(root, str(i), adapter=adapter, seed=seed)
        write_predictions(run, gold, correct, seed)
    return root


def test_paired_tests_mark_what_differs_from_the_baseline(paired_sweep, capsys):
    main([str(paired_sweep), "--baseline", "adapter=full", "--resamples", "500", "--format", "latex,html"])
    rows = pd.read_csv(paired_sweep / "report.csv").set_index("adapter")
    assert rows.loc["full", "baseline"] and not rows.loc["lora", "baseline"]
    assert rows.loc["freeze", "delta"] == pytest.approx(-30 / 500)
    assert rows.loc["freeze", "significant"] and rows.loc["freeze", "p_bootstrap_holm"] < 0.05
    assert rows.loc["freeze", "mcnemar_test"] == "chi-square, continuity-corrected"  # 30 discordant rows per seed
    assert (
        rows.loc["lora", "delta"] == 0 and rows.loc["lora", "p_bootstrap"] == 1 and not rows.loc["lora", "significant"]
    )
    assert rows.loc["full", "boot_low"] < rows.loc["full", "mean"] < rows.loc["full", "boot_high"]
    report = (paired_sweep / "report.md").read_text()
    assert "## Paired comparisons" in report and "freeze: Δ = -0.0600" in report and "**significant**" in report
    tex = (paired_sweep / "report.tex").read_text()
    assert tex.count("{") == tex.count("}") and r"\toprule" in tex and r"\bottomrule" in tex
    assert tex.count(r"\\") == 1 + 3  # the header and one row per adapter
    assert r"$^\dagger$" in tex.split("freeze", 1)[1].split(r"\\")[0]  # the dagger on freeze's row
    html = (paired_sweep / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64" in html
    assert r"\begin{table}" in capsys.readouterr().out  # --format latex prints the LaTeX table


def test_runs_on_different_test_splits_are_refused_for_paired_tests(paired_sweep):
    run = paired_sweep / "3"  # freeze, seed 1: another split
    info = json.loads((run / "run_info.json").read_text())
    info["data_fingerprint"]["test"] = "zzz"
    info["git"]["finexp"]["commit"] = "b" * 40
    (run / "run_info.json").write_text(json.dumps(info))
    main([str(paired_sweep), "--baseline", "adapter=full", "--resamples", "100", "--reproduce"])
    rows = pd.read_csv(paired_sweep / "report.csv").set_index("adapter")
    assert np.isnan(rows.loc["freeze", "p_bootstrap"]) and "different test splits" in rows.loc["freeze", "note"]
    report = (paired_sweep / "report.md").read_text()
    assert "freeze: its runs were tested on different test splits (data fingerprints abc, zzz)" in report
    assert "## Reproduce" in report and "finexp-train -m x=1   # 9 runs" in report
    assert "`3`: code version bbbbbbbbbbbb, most runs aaaaaaaaaaaa" in report
    assert "`3` (credit_scoring): test split fingerprint zzz" in report


def test_bad_report_options_are_one_line_errors(paired_sweep, capsys):
    for args, message in (
        (["--baseline", "adapter=ia3"], "--baseline adapter=ia3 matches no row"),
        (["--baseline", "full"], "expected key=value"),
        (["--alpha", "1.5"], "--alpha 1.5: must be in (0, 1)"),
        (["--format", "pdf"], "--format pdf: unknown"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([str(paired_sweep), *args])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
