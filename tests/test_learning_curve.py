"""experiment=few_shot_curve composes as a sweep; finexp-report --curve draws the learning curve from run dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from finexp.config import config_dir, validate_config
from finexp.report import main


def test_few_shot_curve_experiment_composes_as_a_sweep(sentiment_csv):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=few_shot_curve", "task=sentiment", f"data.path={sentiment_csv}"],
            return_hydra_config=True,
        )
        setfit = compose("train", overrides=["experiment=few_shot_curve", "method=setfit", "data.k_shot=8"])
    GlobalHydra.instance().clear()
    params = cfg.hydra.sweeper.params
    assert params["data.k_shot"] == "8,16,32,64,null" and params["seed"] == "1,2,3"
    assert set(params["method"].split(",")) == {"finetune", "setfit"}
    assert cfg.data.k_shot_seed == cfg.seed  # each seed draws its own K rows
    assert setfit.method.name == "setfit" and setfit.data.k_shot == 8
    validate_config(setfit)  # credit scoring by default: every value of the experiment passes the checks


def fake_run(root: Path, name: str, method: str, k: int | None, seed: int, f1: float) -> None:
    run = root / name
    run.mkdir(parents=True)
    config = {"seed": seed, "method": {"name": method}, "data": {"k_shot": k, "k_shot_seed": seed},
              "paths": {"output_dir": str(run)}}  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = 3 * k if k else 2100
    info = {"seed": seed, "choices": {"method": method}, "monitor": "val/f1_macro", "labels": ["0", "1", "2"],
            "rows": {"train": rows, "val": 30, "test": 600}}  # fmt: skip
    (run / "run_info.json").write_text(json.dumps(info))
    metrics = {"status": "completed", "monitor": "val/f1_macro", "test/f1_macro": f1, "params/trainable": 10}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_report_draws_the_learning_curve_with_a_band_per_method(tmp_path, capsys):
    root = tmp_path / "multirun"
    i = 0
    for method, base in (("finetune", 0.40), ("setfit", 0.55)):
        for k in (8, 16, 32, None):
            for seed in (1, 2, 3):
                f1 = base + (0.1 if k is None else k / 400) + 0.01 * (seed - 2)
                fake_run(root, str(i), method, k, seed, f1)
                i += 1
    (root / "broken").mkdir()
    (root / "broken" / "error.json").write_text(json.dumps({"status": "failed", "error": "boom", "type": "X"}))

    main([str(root), "--by", "method", "--x", "data.k_shot", "--curve"])

    curve = pd.read_csv(root / "curve.csv")
    assert set(curve["method"]) == {"finetune", "setfit"} and (curve["runs"] == 3).all()
    point = curve[(curve["method"] == "setfit") & (curve["data.k_shot"] == 16)].iloc[0]
    assert point["mean"] == pytest.approx(0.55 + 16 / 400) and point["std"] == pytest.approx(0.01)
    every = curve[curve["all"]]
    assert every["data.k_shot"].tolist() == [700.0, 700.0]  # "all" sits at the mean train rows per class
    assert (root / "curve.png").stat().st_size > 10_000
    report = (root / "report.md").read_text()
    assert "## Learning curve: data.k_shot" in report and "| all (700) |" in report
    assert "1 failed" in report
    assert "curve" in capsys.readouterr().out or (root / "curve.png").exists()
