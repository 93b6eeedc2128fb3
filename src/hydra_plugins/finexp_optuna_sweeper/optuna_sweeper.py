"""The Optuna sweeper: proposes trials, launches them as Hydra jobs, tells Optuna how they ended.

- The study is ``optuna.create_study(study_name, storage, load_if_exists=True)``: rerunning a sweep with the same
  ``storage`` and ``study_name`` continues the study. ``n_trials`` is the number of finished trials the study should
  hold, so a sweep interrupted after 2 of 4 trials and rerun runs the 2 that are missing; a trial the interrupted
  sweep left running is marked failed (user attribute ``interrupted``) and its parameters are tried again. One sweep
  at a time should continue a study (a trial another live sweep is running would be taken for an interrupted one).
- Job ``N`` of the sweep directory is trial ``N`` of the study; the job receives ``hydra.sweeper.trial=N``, finds
  the trial through the study (:func:`open_trial`) and reports its monitor each validation epoch
  (:class:`finexp.callbacks.OptunaPruning`). A trial the pruner stops ends early, sets the ``pruned_at_epoch`` user
  attribute, and is told ``PRUNED``; a job that failed (returned nothing) is told ``FAIL``.
- ``optimization_results.yaml`` in the sweep directory holds the best parameters and value (all best trials for a
  multi-objective study).

Optuna is imported only when a sweep runs: Hydra imports this module whenever it scans its plugins.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.finexp_optuna_sweeper import config as _config  # noqa: F401  (registers the configs)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# Studies of the sweeps running in this process, by (study_name, storage): jobs the basic launcher runs in the same
# process find an in-memory study here; other processes need a shared storage (sqlite:///..., a database URL).
_ACTIVE: dict[tuple[str | None, str | None], optuna.Study] = {}

PRUNED_ATTR = "pruned_at_epoch"
INTERRUPTED_ATTR = "interrupted"


class SweepError(Exception):
    """A sweep setting that cannot work (names the ``hydra.sweeper`` key)."""


def distribution_of(override: Override) -> Any:
    """The Optuna distribution of a sweep override (``interval``, ``tag(log, interval)``, ``choice``, ``range``);
    None for a plain value (the same for every trial)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    key = override.get_key_element()
    if not override.is_sweep_override():
        return None
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    log_scale = "log" in value.tags
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        values = list(override.sweep_iterator())
        if not values:
            raise SweepError(f"hydra.sweeper.params.{key}: range({start}, {stop}, {step}) is empty")
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(step), log=log_scale and step == 1)
        return FloatDistribution(float(values[0]), float(values[-1]), step=None if log_scale else float(step))
    if isinstance(value, IntervalSweep):
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise SweepError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not a sweep Optuna can sample")


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _instantiate_optuna(node: Any, family: str, key: str) -> Any:
    """A sampler or pruner from its config; only ``optuna.<family>.*`` classes are built."""
    from hydra.utils import instantiate

    if not isinstance(node, DictConfig | dict):  # Hydra built it already (the sweeper's config is instantiated)
        if not type(node).__module__.startswith(f"optuna.{family}"):
            raise SweepError(f"{key}: {type(node).__name__} is not a class of optuna.{family}")
        return node
    target = str(node.get("_target_") or "")
    if not target.startswith(f"optuna.{family}."):
        raise SweepError(f"{key}._target_={target!r}: expected a class of optuna.{family}")
    return instantiate(node)


def open_trial(
    study_name: str | None, storage: str | None, number: int, pruner: Any = None
) -> optuna.trial.Trial | None:
    """Trial ``number`` of a running sweep's study, to report to (None when this process cannot reach the study:
    an in-memory study of a sweep in another process)."""
    import optuna

    study = _ACTIVE.get((study_name, storage))
    if study is None:
        if storage is None or study_name is None:
            return None
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


class OptunaSweeper(Sweeper):
    """Hydra sweeper on Optuna >= 4 (see the module docstring)."""

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: Any,
        study_name: str | None,
        storage: str | None,
        load_if_exists: bool,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: dict[str, str] | None,
        trial: int | None = None,
    ) -> None:
        self.sampler_config = sampler
        self.pruner_config = pruner
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.load_if_exists = load_if_exists
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """Distributions by key (``params``, then command-line sweeps over them) and the fixed overrides."""
        parser = OverridesParser.create()
        space: dict[str, Any] = {}
        fixed: dict[str, str] = {}
        configured = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()])
        for override in [*configured, *parser.parse_overrides(arguments)]:
            key = override.get_key_element()
            distribution = distribution_of(override)
            if distribution is None:
                fixed[key] = override.input_line
                space.pop(key, None)
            else:
                space[key] = distribution
                fixed.pop(key, None)
        return space, list(fixed.values())

    def _check(self) -> None:
        if self.n_trials < 1:
            raise SweepError(f"hydra.sweeper.n_trials={self.n_trials}: must be >= 1")
        if self.n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_jobs={self.n_jobs}: must be >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SweepError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: must be in [0, 1]")

    def _open_study(self) -> optuna.Study:
        import optuna

        directions = list(self.direction) if isinstance(self.direction, list | tuple) else [self.direction]
        directions = [str(d) for d in directions]
        for d in directions:
            if d not in ("maximize", "minimize"):
                raise SweepError(f"hydra.sweeper.direction={d!r}: use maximize or minimize")
        sampler = _instantiate_optuna(self.sampler_config, "samplers", "hydra.sweeper.sampler")
        pruner = _instantiate_optuna(self.pruner_config, "pruners", "hydra.sweeper.pruner")
        return optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=sampler,
            pruner=pruner,
            directions=directions,
            load_if_exists=self.load_if_exists,
        )

    @staticmethod
    def _recover_interrupted(study: optuna.Study) -> int:
        """Trials an earlier, interrupted sweep left running: failed (``interrupted``), their parameters retried."""
        from optuna.trial import TrialState

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for frozen in stale:
            study._storage.set_trial_user_attr(frozen._trial_id, INTERRUPTED_ATTR, True)
            study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(frozen.params, skip_if_exists=False)
            log.info("trial %d was left running by an interrupted sweep: marked failed, retried", frozen.number)
        return len(stale)

    @staticmethod
    def _finished(study: optuna.Study) -> int:
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return sum(1 for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get(INTERRUPTED_ATTR))

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        self._check()
        space, fixed = self._search_space(arguments)
        study = self._open_study()
        self._recover_interrupted(study)
        key = (self.study_name, self.storage)  # as the jobs' hydra.sweeper sees them
        _ACTIVE[key] = study
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        finished = self._finished(study)
        log.info(
            "Optuna study %r (%s): %d of %d trials finished before this sweep; search space: %s",
            study.study_name,
            self.storage or "in memory",
            finished,
            self.n_trials,
            ", ".join(f"{k}: {v}" for k, v in space.items()) or "(none)",
        )
        failures = launched = 0
        try:
            while finished < self.n_trials:
                batch = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - finished))]
                overrides = [
                    [*fixed, *(f"{k}={_format(v)}" for k, v in t.params.items()), f"hydra.sweeper.trial={t.number}"]
                    for t in batch
                ]
                self.validate_batch_is_legal(overrides)
                # job N is trial N: the sweep directory's subdirectories follow the study across reruns
                returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
                for trial, ret in zip(batch, returns, strict=True):
                    launched += 1
                    value = ret.return_value if ret.status == JobStatus.COMPLETED else None
                    frozen = study.get_trials(deepcopy=False)[trial.number]
                    if frozen.state != TrialState.RUNNING:  # told by someone else (a job that told itself)
                        continue
                    if frozen.user_attrs.get(PRUNED_ATTR) is not None:
                        study.tell(trial.number, state=TrialState.PRUNED)
                    elif value is None:
                        failures += 1
                        study.tell(trial.number, state=TrialState.FAIL)
                    else:
                        values = list(value) if isinstance(value, list | tuple) else [float(value)]
                        study.tell(trial.number, values if len(values) > 1 else values[0])
                finished = self._finished(study)
                if failures / max(launched, 1) > self.max_failure_rate:
                    raise SweepError(
                        f"{failures} of {launched} trials failed (hydra.sweeper.max_failure_rate="
                        f"{self.max_failure_rate}): see the jobs' error.json; raise the rate to go on past failures"
                    )
        finally:
            _ACTIVE.pop(key, None)
        self._write_results(study, sweep_dir, optuna)

    @staticmethod
    def _write_results(study: optuna.Study, sweep_dir: Path, optuna: Any) -> None:
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("no trial of study %r completed: no best parameters", study.study_name)
            return
        if len(study.directions) == 1:
            results = {"name": "optuna", "best_params": study.best_params, "best_value": study.best_value}
            log.info("best parameters: %s (value %s)", study.best_params, study.best_value)
        else:
            best = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
            results = {"name": "optuna", "solutions": best}
        results["study_name"] = study.study_name
        results["trials"] = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
