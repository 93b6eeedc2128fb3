"""Adding a problem type is one module and one task YAML: a toy type registered here trains end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from finexp import build
from finexp.config import ConfigError, validate_config
from finexp.problems import PROBLEMS, capability_table
from finexp.train import train

FIXTURES = Path(__file__).parent / "fixtures" / "toy_problem"


@pytest.fixture
def toy_problem():
    """Load tests/fixtures/toy_problem/smoothed_classification.py (it registers itself); unregister afterwards."""
    spec = importlib.util.spec_from_file_location("smoothed_classification", FIXTURES / "smoothed_classification.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    PROBLEMS.pop(module.NAME, None)


def toy_task(path: Path) -> list[str]:
    return [f"hydra.searchpath=[file://{FIXTURES}]", "task=smoothed_sentiment", f"data.path={path}"]


def test_a_registered_toy_problem_trains_end_to_end(make_cfg, sentiment_csv, toy_problem):
    cfg = make_cfg(*toy_task(sentiment_csv), "trainer.max_epochs=6", "optimizer.lr=3e-3", "data.batch_size=16")
    assert cfg.task.problem == "smoothed_classification"  # the YAML came from the fixture's config dir
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)

    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["monitor"] == "val/loss"  # the toy type's monitor, not auroc
    assert metrics["test/auroc"] > 0.9  # it learned the easy headlines (chance: 0.5)
    assert Path(saved["best_checkpoint"]).is_file()
    assert json.loads((run / "run_info.json").read_text())["labels"] == ["bearish", "bullish"]

    # the run was built by the toy module's factories: its loss is the label-smoothed one
    tokenizer = build.tokenizer_from(cfg)
    datamodule = build.datamodule_from(cfg, tokenizer)
    datamodule.prepare()
    model = build.model_from(cfg, datamodule.num_labels, tokenizer)
    module = build.module_from(cfg, model, datamodule)
    assert module.loss_fn.label_smoothing == toy_problem.SMOOTHING
    logits, labels = torch.tensor([[4.0, -4.0]]), torch.tensor([0])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert module.loss_fn(logits, labels) > plain  # smoothing penalises the confident right answer


def test_the_toy_problem_s_capabilities_are_checked(make_cfg, sentiment_csv, toy_problem):
    base = toy_task(sentiment_csv)
    validate_config(make_cfg(*base, "data.cv.folds=3"))  # it declared cross-validation
    with pytest.raises(ConfigError, match=r"^task\.problem=smoothed_classification does not support privacy=dp_sgd "):
        validate_config(make_cfg(*base, "privacy=dp_sgd"))
    with pytest.raises(ConfigError, match=r"does not support data\.k_shot=4 \(supported: none\)"):
        validate_config(make_cfg(*base, "data.k_shot=4"))
    with pytest.raises(ConfigError, match=r"does not support method=setfit \(supported: finetune\)"):
        validate_config(make_cfg(*base, "method=setfit"))
    row = next(line for line in capability_table().splitlines() if "`smoothed_classification`" in line)
    assert row.split(" | ")[1:4] == ["transformer", "none", "—"]  # model.kind, privacy, PII masking


def test_an_unregistered_problem_is_refused(make_cfg, sentiment_csv):
    assert "smoothed_classification" not in PROBLEMS
    with pytest.raises(ConfigError, match=r"task\.problem='smoothed_classification' is not allowed: choose one of"):
        validate_config(make_cfg(*toy_task(sentiment_csv)))
