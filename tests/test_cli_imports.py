"""The console scripts answer --help, --cfg job and config errors without importing torch (the heavy stack loads
only once a run really starts): behaviour checked through ``sys.modules`` in a fresh interpreter, not timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "pytorch_lightning", "transformers", "peft", "captum", "matplotlib")

# Runs an entry point's main() with argv, then reports on stderr (atexit: Hydra ends --help with sys.exit) which of
# the heavy packages were imported by then.
_PROBE = """
import atexit, json, sys
atexit.register(lambda: print("HEAVY=" + json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr))
sys.argv = [{prog!r}, *{argv!r}]
from {module} import main
main()
"""


def _probe(tmp_path: Path, module: str, prog: str, *argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = {**os.environ, "FINEXP_ROOT": str(tmp_path), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    code = _PROBE.format(heavy=HEAVY, prog=prog, argv=list(argv), module=module)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("HEAVY="))
    return result, json.loads(line.removeprefix("HEAVY="))


def test_importing_the_entry_points_loads_no_heavy_package(tmp_path):
    modules = ["finexp.train", "finexp.evaluate", "finexp.predict", "finexp.explain", "finexp.export", "finexp.report"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_train_help_shows_groups_and_capabilities_without_torch(tmp_path):
    result, heavy = _probe(tmp_path, "finexp.train", "finexp-train", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == []
    assert "== Config groups ==" in result.stdout and "adapter: bottleneck, freeze, full" in result.stdout
    assert "What each task.problem combines with" in result.stdout and "token_classification" in result.stdout


def test_train_cfg_job_prints_the_config_without_torch(tmp_path):
    result, heavy = _probe(tmp_path, "finexp.train", "finexp-train", "--cfg", "job", "model=tiny_bert")
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == []
    assert "name: tiny_bert" in result.stdout and "problem: classification" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.problem=ranking", "task.problem='ranking' is not allowed: choose one of classification"),
        ("optimizer.lr=-1", "optimizer.lr=-1.0 is not allowed: must be > 0"),
        ("task.lable_column=y", "Could not override 'task.lable_column'"),  # a typo: refused by the schema
        ("search=budgeted +search.space.optimizer.lrr.choices=[1]", "search.space.optimizer.lrr: the config has no"),
    ],
)
def test_config_errors_are_reported_before_torch_loads(tmp_path, override, message):
    result, heavy = _probe(tmp_path, "finexp.train", "finexp-train", "model=tiny_bert", *override.split())
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert heavy == []
    if "problem" in override:  # a validation error is still a failed run's record (error.json, no metrics.json)
        (error,) = tmp_path.rglob("error.json")
        assert json.loads(error.read_text())["type"] == "ConfigError"
        assert not list(tmp_path.rglob("metrics.json"))


def test_report_help_without_torch_names_compares_defaults(tmp_path):
    from finexp.report.compare import DEFAULT_X, FORMATS

    result, heavy = _probe(tmp_path, "finexp.report", "finexp-report", "--help")
    assert result.returncode == 0 and heavy == []
    assert f"default: {DEFAULT_X}" in result.stdout  # the copy finexp.report keeps for --help matches
    assert f"one of {', '.join(FORMATS)}" in " ".join(result.stdout.split())
