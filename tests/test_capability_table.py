"""The capability table (finexp.problems): one source for config checks, trained-run checks and the README."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import text_task
from finexp.config import ConfigError, check_compatibility, validate_config
from finexp.problems import PROBLEMS, capability_table, supporting

README = Path(__file__).resolve().parents[1] / "README.md"
BUILT_IN = ["classification", "token_classification", "generation", "long_document", "regression", "multilabel"]


def test_readme_shows_the_generated_table():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- capability-table:start -->\n(.*?)<!-- capability-table:end -->", text, re.S)
    assert found, "README.md has no <!-- capability-table:start/end --> block"
    assert list(PROBLEMS) == BUILT_IN
    assert found.group(1) == capability_table(), "regenerate: from finexp.problems import capability_table"


def test_trained_run_capabilities_come_from_the_table():
    # what finexp.runs.TrainedRun.require allowed before the table existed, capability by capability
    assert supporting("evaluate") == tuple(BUILT_IN)
    assert supporting("explain") == supporting("predict") == supporting("serve") == ("classification",)
    assert supporting("teacher") == ("classification",)
    assert supporting("export") == ("classification", "token_classification", "long_document")
    assert supporting("init_from") == ("classification", "long_document", "regression", "multilabel")


@pytest.mark.parametrize(
    ("problem", "override", "message"),
    [
        ("generation", "privacy=dp_sgd", "privacy=dp_sgd (supported: none)"),
        ("long_document", "privacy.mask_pii=true", "privacy.mask_pii=True (supported: none)"),
        ("token_classification", "model.init_from=/tmp/run.ckpt", "model.init_from=/tmp/run.ckpt (supported: none)"),
        ("regression", "distill.teacher=/tmp/t.ckpt", "distill.teacher=/tmp/t.ckpt (supported: none)"),
        ("multilabel", "federated=fedavg", "federated=True (supported: none)"),
        ("regression", "analysis.explain=true", "analysis.explain=True (supported: none)"),
        ("long_document", "method=setfit", "method=setfit (supported: finetune)"),
        ("generation", "model=gbm", "model.kind=baseline (supported: transformer)"),
        ("multilabel", "data.cv.folds=3", "data.cv.folds=3 (supported: none)"),
    ],
)
def test_unsupported_combinations_get_one_message_format(make_cfg, sentiment_csv, problem, override, message):
    cfg = make_cfg(*text_task(sentiment_csv), f"task.problem={problem}", override)
    with pytest.raises(ConfigError) as info:
        check_compatibility(cfg)
    assert str(info.value) == f"task.problem={problem} does not support {message}"


def test_supported_combinations_pass(make_cfg, sentiment_csv):
    for overrides in (["privacy=dp_sgd"], ["privacy=label_dp", "data.k_shot=8"], ["data.cv.folds=3"]):
        check_compatibility(make_cfg(*text_task(sentiment_csv), *overrides))
    validate_config(make_cfg(*text_task(sentiment_csv), "task.problem=long_document", "data.cv.folds=3"))


def test_unknown_problem_lists_the_registered_ones(make_cfg, sentiment_csv):
    message = "^task.problem='ranking' is not allowed: choose one of " + ", ".join(BUILT_IN)
    with pytest.raises(ConfigError, match=message):
        check_compatibility(make_cfg(*text_task(sentiment_csv), "task.problem=ranking"))


def test_config_checks_import_no_model_stack():
    code = "import sys, finexp.config; print(sorted({'torch', 'transformers', 'pytorch_lightning'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
