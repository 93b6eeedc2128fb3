"""Many jobs: joblib multiruns with a failing job and their rerun, Optuna, W&B sweep commands, launchers, CV folds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import FAST, sentiment_frame, text_task
from finexp import FinexpError
from finexp.config import ConfigError, config_dir, validate_config
from finexp.data.folds import cross_validation_fold
from finexp.data.splits import Splits
from finexp.report import write_report
from finexp.resume import plan_rerun
from finexp.sweeps import agent_command, example_parameters, load_sweep

REPO = Path(__file__).resolve().parents[1]
QUICK = [*FAST, "trainer.max_epochs=1", "data.batch_size=16", "analysis=none"]


def _cli(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FINEXP_ROOT": str(tmp_path), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "finexp.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_joblib_multirun_records_a_failed_job_goes_on_and_reruns_skip_finished_jobs(tmp_path, sentiment_csv):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *QUICK,
        *text_task(sentiment_csv),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "trainer.max_epochs=2",  # with lr 3e-3: enough for job 0 to learn the easy headlines
        "optimizer.lr=3e-3,-1",  # job 1 is rejected when it starts
    ]
    first = _cli(tmp_path, *args)
    assert first.returncode == 1, first.stderr[-3000:]  # the sweep went on past the failed job, then says so
    assert "finexp multirun: 1 completed, 0 skipped (done before), 1 failed (job(s) 1: see " in first.stdout
    ok, failed = sweep / "0", sweep / "1"
    metrics = json.loads((ok / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["val/auroc"] > 0.75  # chance 0.5; 0.89-1.0 over seeds
    assert not (failed / "metrics.json").exists()
    error = json.loads((failed / "error.json").read_text())
    assert error["status"] == "failed" and error["type"] == "ConfigError"
    assert "optimizer.lr=-1" in error["error"] and "Traceback" in error["traceback"]

    write_report(sweep)  # finexp-report names the failed job
    report = (sweep / "report.md").read_text()
    assert "1 completed, 1 failed" in report and "optimizer.lr=-1" in report

    before = (ok / "metrics.json").stat().st_mtime_ns
    second = _cli(tmp_path, *args)  # rerun of the same sweep: the finished job is not trained again
    assert second.returncode == 1, second.stderr[-3000:]  # job 1 still fails
    assert "finexp multirun: 0 completed, 1 skipped (done before), 1 failed (job(s) 1: see " in second.stdout
    assert (ok / "metrics.json").stat().st_mtime_ns == before
    assert "skipping the run" in (ok / "train.log").read_text()
    assert json.loads((failed / "error.json").read_text())["type"] == "ConfigError"


def _optuna(tmp_path: Path, sentiment_csv: Path, *args: str) -> subprocess.CompletedProcess:
    return _cli(tmp_path, "-m", *QUICK, *text_task(sentiment_csv), "hparams_search=optuna", *args)


def test_optuna_study_in_sqlite_is_interrupted_and_resumed_without_rerunning_trials(tmp_path, sentiment_csv):
    import optuna

    sweep, storage = tmp_path / "optuna", f"sqlite:///{tmp_path / 'study.db'}"
    study = ["hydra.sweeper.study_name=resumable", f"hydra.sweeper.storage={storage}", f"hydra.sweep.dir={sweep}"]
    first = _optuna(
        tmp_path, sentiment_csv, *study, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    done = {n: (sweep / n / "metrics.json").stat().st_mtime_ns for n in ("0", "1")}
    second = _optuna(
        tmp_path, sentiment_csv, *study, "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.n_startup_trials=2"
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert {n: (sweep / n / "metrics.json").stat().st_mtime_ns for n in ("0", "1")} == done  # not rerun

    trials = optuna.load_study(study_name="resumable", storage=storage).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    scores = []
    for trial in trials:  # job N is trial N: its config holds the trial's parameters, its value the run's monitor
        job = sweep / str(trial.number)
        metrics = json.loads((job / "metrics.json").read_text())
        assert "test/auroc" not in metrics  # hparams_search chooses on val only
        assert trial.value == pytest.approx(metrics["val/auroc"])
        config = yaml.safe_load((job / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == pytest.approx(trial.params["optimizer.lr"])
        assert 1e-5 <= config["optimizer"]["lr"] <= 1e-3 and 0 <= config["model"]["dropout"] <= 0.3
        scores.append(metrics["val/auroc"])
    assert len({t.params["optimizer.lr"] for t in trials}) == 4  # four different proposals
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(scores)) and best["trials"]["complete"] == 4


def test_optuna_median_pruner_stops_a_clearly_worse_trial_and_records_it_as_pruned(tmp_path, sentiment_csv):
    import optuna
    from optuna.distributions import FloatDistribution

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="pruned", storage=storage, direction="maximize")
    study.add_trial(  # a finished trial that scored a perfect val/auroc at every epoch
        optuna.trial.create_trial(
            params={"optimizer.lr": 1e-3},
            distributions={"optimizer.lr": FloatDistribution(1e-12, 1e-3, log=True)},
            value=1.0,
            intermediate_values={0: 1.0, 1: 1.0, 2: 1.0},
        )
    )
    sweep = tmp_path / "optuna"
    result = _optuna(
        tmp_path,
        sentiment_csv,
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.study_name=pruned",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=2",
        "model.dropout=0.1",  # command-line values replace the search space's: fixed,
        "optimizer.lr=tag(log, interval(1e-12, 1e-11))",  # and searched, too low to learn anything: AUROC < 1.0
        "trainer.max_epochs=3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trial = optuna.load_study(study_name="pruned", storage=storage).trials[1]
    assert trial.state == optuna.trial.TrialState.PRUNED  # not failed
    assert trial.user_attrs["pruned_at_epoch"] == 0 and list(trial.intermediate_values) == [0], (
        trial.intermediate_values
    )
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["pruned_at_epoch"] == 0
    assert metrics["time/epochs"] == 1  # stopped after the first of 3 epochs
    assert not (sweep / "1" / "error.json").exists()


def test_wandb_sweep_yaml_runs_finexp_with_hydra_overrides_that_compose(make_cfg):
    sweep = load_sweep(REPO / "scripts" / "wandb_sweep.yaml")
    params = example_parameters(sweep)
    argv = agent_command(sweep, params)
    assert argv[:2] == ["/usr/bin/env", "finexp-train"]
    overrides = argv[2:]
    assert "optimizer.lr=1e-05" in overrides and "logger.wandb.offline=false" in overrides
    assert not any(o.startswith("-") for o in overrides)  # Hydra overrides, not --flags
    cfg = make_cfg(*overrides, fast=False)  # the agent's command composes like the CLI's
    assert cfg.optimizer.lr == pytest.approx(1e-5) and cfg.seed == params["seed"]
    assert cfg.logger.wandb.offline is False
    assert sweep["metric"]["name"] == "val/auroc"
    with pytest.raises(FinexpError, match="no such sweep file"):
        load_sweep(REPO / "scripts" / "missing.yaml")


def test_launcher_and_search_configs_compose():
    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=slurm", "hparams_search=optuna_lora", "trainer=ddp", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "hydra.launcher.partition=a100"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher, sweeper = cfg.hydra.launcher, cfg.hydra.sweeper
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "a100" and launcher.nodes == 2 and launcher.timeout_min > 0  # nodes follow trainer
    assert launcher.max_num_timeout > 0  # requeued jobs resume from their last.ckpt
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optimizer.lr", "model.dropout", "adapter.r", "adapter.dropout"}
    assert cfg.adapter._target_.endswith("build_lora") and cfg.test is False


def test_deepspeed_without_the_package_is_a_clear_config_error(make_cfg, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    cfg = make_cfg("trainer=deepspeed")
    with pytest.raises(ConfigError, match=r"needs the 'deepspeed' package.*pip install deepspeed"):
        validate_config(cfg)
    cfg = make_cfg("trainer=fsdp", "trainer.num_nodes=4", fast=False)  # FAST picks the CPU, which FSDP refuses
    validate_config(cfg)
    assert cfg.trainer.strategy._target_.endswith("fsdp") and cfg.trainer.num_nodes == 4


def test_rerun_plan_skips_complete_resumes_interrupted_and_restarts_changed_runs(tmp_path):
    config = {"seed": 1, "optimizer": {"lr": 0.1}, "task": {"monitor": "auto"}, "ckpt_path": None}
    assert plan_rerun(tmp_path, config, None, True).action == "fresh"  # nothing there
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, "task": {"monitor": "val/auroc"}}))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    plan = plan_rerun(tmp_path, config, None, True)
    assert plan.action == "resume" and plan.ckpt_path.endswith("last.ckpt")
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed", "val/auroc": 0.7}))
    assert plan_rerun(tmp_path, config, None, True).metrics["val/auroc"] == 0.7
    assert plan_rerun(tmp_path, config, None, False).action == "fresh"  # resume=false
    other = {**config, "optimizer": {"lr": 0.2}}  # e.g. Optuna proposed other values for this job number
    assert plan_rerun(tmp_path, other, None, True).action == "fresh"
    assert plan_rerun(tmp_path, other, "last", True).action == "resume"  # explicit: always honoured
    with pytest.raises(FinexpError, match="no checkpoint at"):
        plan_rerun(tmp_path / "elsewhere", config, "last", True)


def _splits(frame: pd.DataFrame) -> Splits:
    n = len(frame)
    return Splits(frame.iloc[: n // 2], frame.iloc[n // 2 : 3 * n // 4], frame.iloc[3 * n // 4 :])


def test_stratified_folds_partition_train_and_val_and_keep_the_test_split():
    frame = sentiment_frame(200)
    base = _splits(frame)
    vals = [cross_validation_fold(base, "sentiment", 5, i, seed=3).val for i in range(5)]
    pool_ids = set(pd.concat([base.train, base.val])["id"])
    assert sorted(i for v in vals for i in v["id"]) == sorted(pool_ids)  # every row validates exactly once
    for i, val in enumerate(vals):
        fold = cross_validation_fold(base, "sentiment", 5, i, seed=3)
        assert set(fold.train["id"]).isdisjoint(val["id"]) and len(fold.train) + len(val) == len(pool_ids)
        assert fold.test.equals(base.test)
        assert val["sentiment"].value_counts().max() - val["sentiment"].value_counts().min() <= 1  # stratified
    again = cross_validation_fold(base, "sentiment", 5, 2, seed=3).val
    assert again["id"].tolist() == vals[2]["id"].tolist()  # seeded
    with pytest.raises(FinexpError, match="fewer than the folds"):
        cross_validation_fold(_splits(frame.iloc[:12]), "sentiment", 5, 0, seed=0)


def test_time_series_folds_chain_forward():
    frame = sentiment_frame(120).assign(day=lambda f: f["id"][::-1].to_numpy())  # time runs against file order
    base = _splits(frame.sort_values("day").reset_index(drop=True))
    for i in range(3):
        fold = cross_validation_fold(base, "sentiment", 3, i, seed=0, time_column="day")
        assert fold.train["day"].max() < fold.val["day"].min()  # never validated on the past
        assert len(fold.val) == 90 // 4 + (1 if (i + 1) < 90 % 4 else 0)
    sizes = [len(cross_validation_fold(base, "sentiment", 3, i, 0, "day").train) for i in range(3)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # a growing window


def test_cv_fold_values_are_checked_and_reach_the_datamodule(make_cfg, sentiment_csv):
    from finexp.build import datamodule_from, tokenizer_from

    with pytest.raises(ConfigError, match=r"data.cv.fold=5 is not allowed: must be in \[0, 4\]"):
        validate_config(make_cfg(*text_task(sentiment_csv), "data.cv.folds=5", "data.cv.fold=5"))
    with pytest.raises(ConfigError, match=r"data\.cv\.folds=1"):
        validate_config(make_cfg(*text_task(sentiment_csv), "data.cv.folds=1"))
    rows = {}
    for fold in (0, 1):
        cfg = make_cfg(*text_task(sentiment_csv), "data.cv.folds=4", f"data.cv.fold={fold}")
        dm = datamodule_from(cfg, tokenizer_from(cfg))
        dm.prepare()
        rows[fold] = (set(dm.splits.val["id"]), set(dm.splits.test["id"]), len(dm.splits.train))
    assert rows[0][0].isdisjoint(rows[1][0]) and rows[0][1] == rows[1][1]
    assert rows[0][2] + len(rows[0][0]) == 160 - len(rows[0][1])
    assert OmegaConf.select(cfg, "data.cv.folds") == 4


def test_optuna_search_space_syntax_maps_to_optuna_distributions():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.finexp_optuna_sweeper.optuna_sweeper import distribution_of

    parse = OverridesParser.create().parse_override
    assert distribution_of(parse("optimizer.lr=tag(log, interval(1e-5, 1e-3))")) == FloatDistribution(
        1e-5, 1e-3, log=True
    )
    assert distribution_of(parse("model.dropout=interval(0.0, 0.3)")) == FloatDistribution(0.0, 0.3)
    assert distribution_of(parse("adapter.r=choice(4, 8, 16)")) == CategoricalDistribution([4, 8, 16])
    assert distribution_of(parse("data.batch_size=range(8, 33, 8)")) == IntDistribution(8, 32, step=8)
    assert distribution_of(parse("seed=3")) is None  # a plain value: the same in every trial


def test_optuna_trials_an_interrupted_sweep_left_running_are_failed_and_retried(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from hydra_plugins.finexp_optuna_sweeper.optuna_sweeper import OptunaSweeper

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    space = {"optimizer.lr": FloatDistribution(1e-5, 1e-3, log=True)}
    study.tell(study.ask(space), 0.7)
    left = study.ask(space)  # the sweep was killed while this trial ran
    assert OptunaSweeper._recover_interrupted(study) == 1
    frozen = study.trials[left.number]
    assert frozen.state == optuna.trial.TrialState.FAIL and frozen.user_attrs["interrupted"] is True
    assert OptunaSweeper._finished(study) == 1  # the interrupted trial does not count towards n_trials
    retried = study.ask(space)  # the next proposal retries its parameters
    assert retried.params == left.params and retried.number == 2
