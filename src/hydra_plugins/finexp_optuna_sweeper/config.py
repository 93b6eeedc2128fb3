"""The ``hydra/sweeper: optuna`` config and its sampler and pruner options (registered when Hydra scans plugins).

Nothing here imports Optuna: Hydra imports every plugin module on start-up, for every command.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules while it scans them, and
# dataclasses cannot resolve string annotations of such a module.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

PROVIDER = "finexp_optuna_sweeper"


@dataclass
class TPESamplerConfig:
    """Optuna's TPE sampler: a model of good and bad regions, after ``n_startup_trials`` random trials."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    constant_liar: bool = False  # n_jobs > 1: trials proposed together avoid each other


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class NopPrunerConfig:
    """No pruning: every trial runs all its epochs."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig:
    """Stop a trial whose monitor at an epoch is worse than the median of earlier trials at that epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # trials that always run to the end before any is pruned
    n_warmup_steps: int = 0  # epochs of each trial that are never pruned
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class OptunaSweeperConfig:
    """``hydra.sweeper`` for ``hydra/sweeper=optuna`` (finexp's sweeper on Optuna >= 4)."""

    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    _target_: str = "hydra_plugins.finexp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: Any = "minimize"  # maximize | minimize, or a list of them (multi-objective)
    study_name: str | None = None
    storage: str | None = None  # null: in memory; sqlite:///optuna.db (or any SQLAlchemy URL) keeps the study
    load_if_exists: bool = True  # a study of that name in storage is continued, not refused
    n_trials: int = 20  # trials the study should hold when the sweep ends (finished ones from earlier sweeps count)
    n_jobs: int = 1  # trials proposed and launched together
    max_failure_rate: float = 0.0  # stop when more than this fraction of this sweep's trials failed
    params: dict[str, str] | None = None  # key: interval(a, b) | tag(log, interval(a, b)) | choice(...) | range(...)
    trial: int | None = None  # set by the sweeper on each job (its trial number in the study); never set it yourself


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConfig, provider=PROVIDER)
    cs.store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConfig, provider=PROVIDER)
    cs.store(group="hydra/sweeper/sampler", name="random", node=RandomSamplerConfig, provider=PROVIDER)
    cs.store(group="hydra/sweeper/pruner", name="none", node=NopPrunerConfig, provider=PROVIDER)
    cs.store(group="hydra/sweeper/pruner", name="median", node=MedianPrunerConfig, provider=PROVIDER)
    cs.store(group="hydra/sweeper/pruner", name="hyperband", node=HyperbandPrunerConfig, provider=PROVIDER)


register()
