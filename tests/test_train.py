"""finexp-train end to end on tiny models: it learns, writes its records, is reproducible, and fails cleanly."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from conftest import FAST, applicants_frame, pytest_runtest_setup, text_task
from finexp.data.sources import DataError
from finexp.train import train


def test_text_classification_learns_and_writes_records(make_cfg, sentiment_csv, tmp_path):
    cfg = make_cfg(*text_task(sentiment_csv), "trainer.max_epochs=6", "optimizer.lr=3e-3", "data.batch_size=16")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)

    assert metrics["test/auroc"] > 0.9 and metrics["val/accuracy"] > 0.8  # chance is 0.5
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["monitor"] == "val/auroc"
    assert saved["test/auroc"] == pytest.approx(metrics["test/auroc"])
    for key in (
        "test/accuracy",
        "test/f1_macro",
        "test/auprc",
        "test/ks",
        "val/auroc",
        "train/pad_fraction",
        "params/trainable",
        "params/total",
    ):
        assert key in saved, key
    assert Path(saved["best_checkpoint"]).is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == 42 and info["labels"] == ["bearish", "bullish"]
    assert set(info["data_fingerprint"]) == {"train", "val", "test"}
    # the installed versions, as the imported packages report them (a "+cpu"/"+cu124" local tag is the same torch)
    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["versions"]["pytorch-lightning"] == pl.__version__
    assert info["versions"]["python"] == platform.python_version()
    assert info["rows"] == {"train": 112, "val": 16, "test": 32}
    assert (run / "config.yaml").read_text().count("${") == 0  # the resolved config
    history = pd.read_csv(run / "csv" / "metrics.csv")
    losses = history["train/loss_epoch"].dropna().tolist()
    assert losses[-1] < losses[0]  # the loss moved


def test_same_seed_gives_identical_test_metrics(make_cfg, sentiment_csv):
    overrides = [*text_task(sentiment_csv), "trainer.max_epochs=2", "trainer.deterministic=true", "seed=7"]
    first = train(make_cfg(*overrides))
    second = train(make_cfg(*overrides))
    keys = [k for k in first if k.startswith("test/")]
    torch.testing.assert_close([first[k] for k in keys], [second[k] for k in keys], rtol=0, atol=0)
    third = train(make_cfg(*overrides[:-1], "seed=8"))
    assert [third[k] for k in keys] != [first[k] for k in keys]


def test_table_classification_on_user_csv(make_cfg, tmp_path):
    path = tmp_path / "applicants.csv"
    frame = applicants_frame()  # income, debt, arrears, purpose; missing incomes; 20% past arrears
    frame["default"] = frame["arrears"]  # past arrears decide default: a word each serialized row carries
    frame.to_csv(path, index=False)
    cfg = make_cfg(
        "task=table_classification",
        f"data.path={path}",
        "task.label_column=default",
        "task.positive_label=yes",
        "task.exclude_columns=[customer_id]",
        "trainer.max_epochs=3",
        "optimizer.lr=3e-3",
        "task.class_weights=balanced",
    )
    metrics = train(cfg)
    assert metrics["monitor"] == "val/auroc"
    assert metrics["test/auroc"] > 0.85  # chance is 0.5; 0.96-1.0 over seeds 1-3
    config = (Path(cfg.paths.output_dir) / "config.yaml").read_text()
    assert "monitor: val/auroc" in config  # task.monitor=auto was resolved and saved


def test_multiclass_uses_f1_macro_monitor(make_cfg, tmp_path):
    from conftest import sentiment_frame

    frame = sentiment_frame(150)
    frame.loc[frame.index % 3 == 0, "sentiment"] = "neutral"
    frame.to_csv(tmp_path / "three.csv", index=False)
    metrics = train(make_cfg(*text_task(tmp_path / "three.csv"), "trainer.max_epochs=1"))
    assert metrics["monitor"] == "val/f1_macro"
    assert "test/f1_weighted" in metrics and "test/auroc" not in metrics


def test_credit_scoring_default_task_on_tiny_model(make_cfg):
    metrics = train(make_cfg("data.max_rows=300", "trainer.max_epochs=1", "optimizer=sgd", "scheduler=cosine"))
    assert metrics["epochs"] == 1 and "test/ks" in metrics


def test_decoder_model_classifies_with_last_token_pooling(make_cfg, sentiment_csv):
    metrics = train(make_cfg(*text_task(sentiment_csv), "model=tiny_gpt", "trainer.max_epochs=4", "optimizer.lr=3e-3"))
    assert metrics["test/auroc"] > 0.8


@pytest.mark.gpu
def test_tiny_bert_learns_on_one_gpu_in_bf16(make_cfg, sentiment_csv):
    cfg = make_cfg(
        *text_task(sentiment_csv),
        "trainer=gpu",  # bf16-mixed on one device
        "trainer.accelerator=gpu",  # conftest's FAST asks for the CPU
        "trainer.max_epochs=6",
        "optimizer.lr=3e-3",
        "data.batch_size=16",
    )
    metrics = train(cfg)
    assert metrics["test/auroc"] > 0.9 and metrics["val/accuracy"] > 0.8  # as on the CPU; chance is 0.5
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())


def test_gpu_tests_skip_with_the_reason_without_cuda(monkeypatch):
    class Item:  # the part of a pytest item the hook reads
        def __init__(self, marked: bool) -> None:
            self.marked = marked

        def get_closest_marker(self, name: str) -> object | None:
            return object() if self.marked and name == "gpu" else None

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(pytest.skip.Exception, match=r"needs a CUDA device: torch .* sees none"):
        pytest_runtest_setup(Item(marked=True))
    pytest_runtest_setup(Item(marked=False))  # unmarked tests run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pytest_runtest_setup(Item(marked=True))  # with CUDA, gpu tests run


def test_freeze_trains_only_the_head(make_cfg, sentiment_csv):
    metrics = train(make_cfg(*text_task(sentiment_csv), "adapter=freeze", "trainer.max_epochs=1"))
    assert metrics["params/trainable"] == 32 * 2 + 2  # hidden 32 -> 2 classes
    assert metrics["params/trainable_pct"] < 0.1


def test_overfit_debug_memorises_a_batch(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "debug=overfit", "optimizer.lr=3e-3")
    metrics = train(cfg)
    assert metrics["train/loss_epoch"] < 0.1


def test_fast_dev_run_writes_no_checkpoint(make_cfg, sentiment_csv):
    cfg = make_cfg(*text_task(sentiment_csv), "debug=fast_dev_run")
    metrics = train(cfg)
    assert metrics["best_checkpoint"] is None and "test/accuracy" in metrics


def test_resume_from_last_checkpoint(make_cfg, sentiment_csv, tmp_path):
    cfg = make_cfg(*text_task(sentiment_csv), "trainer.max_epochs=1")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(*text_task(sentiment_csv), "trainer.max_epochs=2", f"ckpt_path={last}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    assert train(resumed)["epochs"] == 2


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_loggers_write_offline(make_cfg, sentiment_csv, logger, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = make_cfg(*text_task(sentiment_csv), f"logger={logger}", "trainer.max_epochs=1")
    train(cfg)  # closes its W&B run: the offline files are flushed
    run = Path(cfg.paths.output_dir)
    assert (run / "csv" / "metrics.csv").is_file()
    if logger == "tensorboard":
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    else:
        offline_runs = list(run.glob("wandb/offline-run-*/run-*.wandb"))
        assert offline_runs, list(run.rglob("*"))


def test_data_error_leaves_no_metrics(make_cfg, tmp_path):
    cfg = make_cfg(*text_task(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="data file not found"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags go before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run(
        [sys.executable, "-m", "finexp.train", *flags, *FAST, *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_reports_bad_input_briefly(tmp_path, sentiment_csv):
    result = _cli(*text_task(sentiment_csv), "task.label_column=labl", cwd=tmp_path)
    assert result.returncode == 2
    assert "finexp-train: error:" in result.stderr and "available: id, headline, sentiment" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))
    (error,) = tmp_path.rglob("error.json")  # the failed-run record finexp-report lists
    assert json.loads(error.read_text())["type"] == "DataError" and "labl" in json.loads(error.read_text())["error"]


def test_cli_multirun_sweep(tmp_path, sentiment_csv):
    result = _cli(
        "-m",
        *text_task(sentiment_csv),
        "seed=1,2",
        "adapter=full,freeze",
        "trainer.max_epochs=1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(tmp_path.glob("outputs/text_classification/multiruns/*/*/*/metrics.json"))
    assert len(runs) == 4
    choices = {json.loads((p.parent / "run_info.json").read_text())["choices"]["adapter"] for p in runs}
    assert choices == {"full", "freeze"}
