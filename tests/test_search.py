"""search=budgeted: trials on the validation split within a budget, then the best setting retrained and tested once."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from conftest import text_task
from finexp.analysis.pipeline import _search_summary
from finexp.config import ConfigError, validate_config
from finexp.runs_table import find_runs
from finexp.train import train

# three quick trials of the tiny BERT on the easy headlines: rates that learn them in a couple of epochs
QUICK_SEARCH = [
    "search=budgeted",
    "search.trials=3",
    "search.space.optimizer.lr.low=2e-3",
    "search.space.optimizer.lr.high=6e-3",
    "search.space.trainer.max_epochs.choices=[1,2]",
    "search.space.model.dropout.high=0.2",
    "~search.space.optimizer.head_lr",
    "data.batch_size=32",
    "model.check_memory=false",
    "trainer.deterministic=true",  # the retrained best trial scores what the trial scored
]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_search_runs_trials_on_val_then_retrains_and_tests_the_best_once(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), *QUICK_SEARCH)
    run = Path(cfg.paths.output_dir)
    metrics = train(cfg)

    record = json.loads((run / "search.json").read_text())
    assert record["status"] == "completed" and record["monitor"] == "val/auroc" and record["direction"] == "maximize"
    assert record["trials_run"] == 3 == len(record["trials"]) and record["stopped_by"] == "trials"
    values = {}
    for trial in record["trials"]:
        trial_dir = run / trial["dir"]
        saved = _metrics(trial_dir)
        assert not [k for k in saved if k.startswith("test/")]  # a trial never scores the test split
        assert not (trial_dir / "test_predictions.csv").exists() and not (trial_dir / "checkpoints").exists()
        assert trial["state"] == "complete" and trial["value"] == pytest.approx(saved["val/auroc"])
        config = yaml.safe_load((trial_dir / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == pytest.approx(trial["params"]["optimizer.lr"])
        assert 2e-3 <= config["optimizer"]["lr"] <= 6e-3 and config["trainer"]["max_epochs"] in (1, 2)
        assert config["test"] is False and config["search"] is None
        values[trial["number"]] = trial["value"]
    assert len({t["params"]["optimizer.lr"] for t in record["trials"]}) == 3  # three different proposals

    best = record["best"]
    assert best["value"] == max(values.values()) == values[best["number"]]
    # the tested run is the best trial's setting, trained again in the run directory: same val score, now tested
    assert metrics["val/auroc"] == pytest.approx(best["value"]) and metrics["val/auroc"] > 0.6  # chance: 0.5
    assert metrics["test/auroc"] > 0.5 and (run / "test_predictions.csv").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["optimizer"]["lr"] == pytest.approx(best["params"]["optimizer.lr"]) and config["search"] is None
    saved = _metrics(run)
    assert saved["search/trials"] == 3 and saved["search/best_trial"] == best["number"]
    assert saved["search/best_val"] == pytest.approx(best["value"])
    assert saved["search/best/optimizer.lr"] == pytest.approx(best["params"]["optimizer.lr"])
    assert _search_summary(saved).startswith("3 trials (3 complete, 0 pruned, 0 failed) of at most 3")  # model card
    info = json.loads((run / "run_info.json").read_text())
    assert info["search"]["trials_run"] == 3 and info["search"]["file"] == "search.json"
    assert [r.path for r in find_runs(run.parent)] == [run]  # finexp-report sees the tested run, not the trials
    assert len(find_runs(run / "trials")) == 3

    # a rerun into the same directory continues the search: nothing is trained again
    written = {p: p.stat().st_mtime_ns for p in run.rglob("metrics.json")}
    again = train(cfg)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("metrics.json")} == written
    assert (
        again["val/auroc"] == metrics["val/auroc"] and json.loads((run / "search.json").read_text())["trials_run"] == 3
    )


def test_budget_stops_the_search_after_the_first_trial(make_cfg, sentiment_csv):
    cfg = make_cfg(
        *text_task(sentiment_csv),
        *QUICK_SEARCH,
        "search.trials=5",
        "search.budget_minutes=0.0001",  # 6 ms: spent before the second trial could start
        "search.space.trainer.max_epochs.choices=[1]",
        "test=false",  # the final run follows the config's `test`
    )
    run = Path(cfg.paths.output_dir)
    metrics = train(cfg)
    record = json.loads((run / "search.json").read_text())
    assert record["trials_run"] == 1 and record["stopped_by"] == "budget" and record["max_trials"] == 5
    assert sorted(p.name for p in (run / "trials").iterdir()) == ["0"]
    assert metrics["search/trials"] == 1 and metrics["search/stopped_by"] == "budget"
    assert not [k for k in metrics if k.startswith("test/")]


# (dotted key -> value set on the composed search, what the refusal must say); composed once: a Hydra compose costs
REFUSED = [
    (
        {"search.space.optimizer.lrr": {"low": 1e-5, "high": 1e-3}},
        "search.space.optimizer.lrr: the config has no key optimizer.lrr; did you mean optimizer.lr?",
    ),
    ({"search.space.trainer.max_epoch": {"choices": [1, 2]}}, "search.space.trainer.max_epoch: the config has no key"),
    ({"search.space.model.dropout.high": 1.5}, "search.space.model.dropout: the run refuses model.dropout=1.5"),
    ({"search.space.data.test_size": {"choices": [0.1, 0.3]}}, "search.space.data.test_size: data.test_size cannot"),
    ({"search.space.test": {"choices": [True, False]}}, "search.space.test: test cannot be searched"),
    ({"search.space.scheduler": {"choices": [1, 2]}}, "search.space.scheduler: scheduler is a group of settings"),
    ({"search.space.trainer.max_epochs": {"choices": ["many"]}}, "search.space.trainer.max_epochs: the run refuses"),
    ({"search.space.optimizer.lr.step": 1e-4}, "is not allowed: a range is either on a log scale or stepped"),
    ({"search.space.model.dropout.values": [0.1]}, "search.space.model.dropout.values: not a search setting"),
    (
        {"search.space.model.dropout.low": 0.5},
        "search.space.model.dropout='low 0.5, high 0.3' is not allowed: low must be below high",
    ),
    ({"search.trials": 0}, "search.trials=0 is not allowed"),
    ({"ckpt_path": "last"}, "ckpt_path='last' is not allowed"),
]


def test_a_search_the_run_cannot_do_is_refused_naming_the_key(make_cfg, sentiment_csv):
    base = make_cfg(*text_task(sentiment_csv), "search=budgeted")
    validate_config(base)  # the shipped space is valid
    for updates, message in REFUSED:
        cfg = copy.deepcopy(base)
        with open_dict(cfg):
            for key, value in updates.items():
                OmegaConf.update(cfg, key, value, merge=True)
        with pytest.raises(ConfigError) as info:
            validate_config(cfg)
        assert message in str(info.value), (updates, str(info.value))
    with pytest.raises(ConfigError, match=r"search=budgeted with federated=\.\.\.: the search trains"):
        validate_config(make_cfg(*text_task(sentiment_csv), "search=budgeted", "federated=fedavg"))
