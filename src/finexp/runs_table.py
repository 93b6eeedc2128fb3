"""Run directories as rows: what ``finexp-report`` and its learning curves read (shared by :mod:`finexp.report` and
:mod:`finexp.learning_curve`).

Every directory below a root that holds ``run_info.json`` or ``error.json`` is a run. A run with ``metrics.json``
completed; one with ``error.json`` failed; one with neither is unfinished (still running, or killed). Everything read
here is data only: JSON, and YAML loaded by OmegaConf without instantiating anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from finexp import FinexpError

AGGREGATED = ("seed", "data.cv.fold")  # runs differing only in these are repetitions of one setting
IGNORED_PREFIXES = ("paths.", "hydra.", "ckpt_path", "run_name", "tags")  # where a run writes, not what it does


@dataclass
class Run:
    """One run directory and what it left behind."""

    path: Path
    status: str  # completed | failed | unfinished
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def task(self) -> str:
        """The task's name (``task.name``, else the chosen ``task`` option)."""
        return str((self.config.get("task") or {}).get("name") or (self.info.get("choices") or {}).get("task") or "?")

    @property
    def test_fingerprint(self) -> str | None:
        """The test split's fingerprint from ``run_info.json`` (None if not recorded)."""
        return (self.info.get("data_fingerprint") or {}).get("test")

    @property
    def code_version(self) -> str:
        """The finexp git commit the run ran (``+dirty`` with uncommitted changes), else the package version."""
        state = ((self.info.get("git") or {}).get("finexp")) or {}
        if state.get("commit"):
            return state["commit"][:12] + ("+dirty" if state.get("dirty") else "")
        return str((self.info.get("versions") or {}).get("finexp") or "?")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or {} when it is missing or half written."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists become JSON strings (hashable, comparable)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True) if isinstance(node, list) else node}


def _search_trial(directory: Path, root: Path) -> bool:
    """A trial of a ``search=budgeted`` run (``<run>/trials/<n>``, beside ``<run>/search.json``) found from above
    its ``trials`` directory: the search's tested run stands for it (reading ``<run>/trials`` lists the trials)."""
    trials = directory.parent
    if trials.name != "trials" or not (trials.parent / "search.json").is_file():
        return False
    return not root.resolve().is_relative_to(trials.resolve())


def find_runs(root: str | Path) -> list[Run]:
    """Every run below ``root`` (including ``root`` itself), sorted by path; a search's trials only when ``root`` is
    inside their ``trials`` directory."""
    root = Path(root)
    if not root.is_dir():
        raise FinexpError(f"{root}: not a directory")
    directories = {p.parent for name in ("run_info.json", "error.json") for p in root.rglob(name)}
    directories = {d for d in directories if not _search_trial(d, root)}
    runs = []
    for directory in sorted(directories):
        metrics = read_json(directory / "metrics.json")
        error = read_json(directory / "error.json")
        config_path = directory / "config.yaml"
        try:
            config = OmegaConf.to_container(OmegaConf.load(config_path)) if config_path.is_file() else {}
        except Exception:  # a half-written config: the run is still listed, by its status
            config = {}
        if error:
            status = "failed"
        elif metrics.get("status", "completed") == "completed" and metrics:
            status = "completed"
        else:
            status = "unfinished"
        message = f"{error.get('type', 'error')}: {error.get('error', '')}" if error else ""
        runs.append(Run(directory, status, metrics, read_json(directory / "run_info.json"), config, message))
    return runs


def strategy_of(run: Run) -> str:
    """What a strategy comparison calls the run: its adapter (``full``, ``lora``, ...), prefixed by a method other
    than plain fine-tuning (``setfit``, ``setfit+lora``), or a baseline's model (``tfidf_logreg (baseline)``)."""
    choices = run.info.get("choices") or {}
    model = run.config.get("model") or {}
    if model.get("kind") == "baseline":
        return f"{choices.get('model', model.get('name'))} (baseline)"
    adapter = str(choices.get("adapter") or "?")
    method = str(choices.get("method") or (run.config.get("method") or {}).get("name") or "finetune")
    if method == "finetune":
        return adapter
    return method if adapter == "full" else f"{method}+{adapter}"


def group_value(run: Run, by: str) -> Any:
    """The run's value of ``by``: ``strategy`` (:func:`strategy_of`), ``task``, a chosen option (``adapter``,
    ``model``, ...), a dotted config key or a metrics key."""
    if by == "strategy":
        return strategy_of(run)
    if by == "task":
        return run.task
    choices = run.info.get("choices") or {}
    if by in choices:
        value = choices[by]
        model = run.config.get("model", {})  # {}: a run whose config.yaml is missing or half-written
        if by == "adapter" and model.get("kind") == "baseline":  # a baseline has no adapter: name the model
            return f"{choices.get('model', model.get('name'))} (baseline)"
        return value
    flat = flatten(run.config)
    if by in flat:
        return flat[by]
    if by in run.metrics:
        return run.metrics[by]
    return None


def setting(run: Run) -> dict[str, Any]:
    """The run's config as flat key -> value, without where it wrote."""
    flat = flatten(run.config)
    own = [p for p in (flat.get("paths.output_dir"), str(run.path)) if p]  # values under the run's own directory

    def where(value: Any) -> bool:
        return isinstance(value, str) and any(p in value for p in own)

    return {k: v for k, v in flat.items() if not k.startswith(IGNORED_PREFIXES) and not where(v)}


def differences(runs: list[Run]) -> list[str]:
    """Keys whose values differ among ``runs``, other than the seed and CV fold (and values copied from the seed)."""
    settings = [setting(r) for r in runs]
    keys = sorted(set().union(*settings))
    varying = []
    for key in keys:
        values = [s.get(key) for s in settings]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) <= 1 or key in AGGREGATED:
            continue
        if all(s.get(key) == s.get("seed") for s in settings):  # e.g. model.estimator.seed: ${seed}
            continue
        varying.append(key)
    return varying


def primary(run: Run) -> tuple[str, float | None]:
    """The run's headline metric: its monitor on test (``val/x`` -> ``test/x``), else on val; (key, value)."""
    monitor = run.metrics.get("monitor") or run.info.get("monitor") or "val/loss"
    test = monitor.replace("val/", "test/", 1)
    for key in (test, monitor):
        value = run.metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return key, float(value)
    return test, None


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, sample std (NaN for one value) and count of the finite values."""
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return math.nan, math.nan, 0
    std = float(np.std(clean, ddof=1)) if len(clean) > 1 else math.nan
    return float(np.mean(clean)), std, len(clean)


def number(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
