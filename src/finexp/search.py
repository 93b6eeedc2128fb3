"""``search=budgeted``: a few trials on the validation split within a trial and wall-clock budget, then the best
setting retrained and tested once (:func:`search`).

finexp-train search=budgeted                                       # 8 trials or 30 minutes, whichever ends first
finexp-train search=budgeted search.trials=20 search.budget_minutes=120 adapter=lora

- Each trial is one ordinary run of the config with the sampled values (:func:`~finexp.config.search_space.with_values`)
  in ``<run dir>/trials/<n>``, with ``test=false`` and the trust report off: it is scored on the validation split
  only (``task.monitor`` of its best checkpoint), so the test split plays no part in choosing.
- Optuna's TPE sampler, seeded (``search.seed``), proposes the values: ``search.startup_trials`` random ones, then
  guided by the results; the study is in memory unless ``search.storage`` names one. The median pruner stops a trial
  whose monitor falls below the median of earlier trials at the same epoch (:class:`finexp.callbacks.OptunaPruning`).
- No trial starts once ``search.trials`` trials have finished or ``search.budget_minutes`` have passed since the
  search began (a running trial is not cut short; the first one always runs).
- The best completed trial's values are then trained again in ``<run dir>`` itself, with ``test`` as configured:
  the one tested run, with every record an ordinary run writes, plus ``search.json`` (every trial's values, score,
  state and seconds; the best; how many ran, and why the search stopped) and the ``search/*`` summary in its
  ``metrics.json``, ``run_info.json`` and loggers.
- A rerun into the same directory continues: finished trials are read back from their ``metrics.json`` (the seeded
  sampler proposes them again), an interrupted one resumes from its ``last.ckpt``, a finished final run is skipped.

This module loads Optuna and (through the run) the training stack; it is imported once the config is validated.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from omegaconf import DictConfig, open_dict
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from finexp import FinexpError
from finexp.callbacks import OptunaPruning
from finexp.config import monitor_mode, trainer_setting
from finexp.config.search_space import Param, search_params, with_values
from finexp.problems import get_problem
from finexp.records import failure_record, write_json
from finexp.resume import read_json

log = logging.getLogger("finexp")

SEARCH_FILE = "search.json"  # in the run directory, beside the tested run's records
TRIALS_DIR = "trials"  # <run dir>/trials/<n>: trial n's run directory
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class RunFn(Protocol):
    """One run of a config (:func:`finexp.train.train`): validated, trained, its records written, metrics returned."""

    def __call__(
        self, cfg: DictConfig, *, callbacks: Sequence[Any] = (), records: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TrialRecord:
    """One trial as ``search.json`` lists it."""

    number: int
    params: dict[str, Any]
    state: str  # complete | pruned | fail | running
    value: float | None  # the validation monitor of the trial's best checkpoint (None: failed)
    seconds: float | None
    dir: str  # relative to the run directory
    pruned_at_epoch: int | None = None
    error: str | None = None


def distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution of one searched key."""
    if param.choices is not None:
        return CategoricalDistribution(list(param.choices))
    if param.integer:
        return IntDistribution(int(param.low), int(param.high), log=param.log, step=int(param.step or 1))
    return FloatDistribution(float(param.low), float(param.high), log=param.log, step=param.step)


def search_direction(cfg: DictConfig) -> str:
    """``maximize`` or ``minimize``: the mode of ``task.monitor`` (``auto``: the problem type's own monitor)."""
    monitor = cfg.task.monitor
    if monitor == "auto":  # every problem type's monitor keeps its mode whatever the label count
        monitor = get_problem(cfg.task.problem).monitor(2)
    return "maximize" if monitor_mode(monitor) == "max" else "minimize"


def trial_config(cfg: DictConfig, values: Mapping[str, Any], trial_dir: Path, number: int) -> DictConfig:
    """Trial ``number``'s run: ``cfg`` with ``values``, in ``trial_dir``, scored on validation only."""
    out = with_values(cfg, values)
    with open_dict(out):
        out.paths.output_dir = str(trial_dir)
        out.test = False  # the test split is never scored while choosing
        out.test_predictions = False
        out.analysis.enabled = False  # the trust report is the tested run's
        out.run_name = f"{cfg.run_name}-trial{number}"
        out.tags = [*cfg.tags, "search-trial"]
    return out


def _open_study(settings: DictConfig, direction: str) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if settings.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_epochs
        )
    study = optuna.create_study(
        storage=settings.storage,
        study_name=settings.study_name,
        sampler=sampler,
        pruner=pruner,
        direction=direction,
        load_if_exists=settings.storage is not None,  # a stored study is continued: its finished trials count
    )
    if study.direction.name.lower() != direction:
        raise FinexpError(
            f"search.storage holds study {study.study_name!r} that {study.direction.name.lower()}s; this search "
            f"{direction}s task.monitor: give another search.study_name"
        )
    if settings.storage is not None:  # trials an interrupted search left running: failed, their values retried
        from hydra_plugins.finexp_optuna_sweeper.optuna_sweeper import OptunaSweeper

        OptunaSweeper._recover_interrupted(study)
    return study


def _record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    return TrialRecord(
        number=trial.number,
        params=dict(trial.params),
        state=trial.state.name.lower(),
        value=trial.value if trial.state == TrialState.COMPLETE else attrs.get("value"),
        seconds=attrs.get("seconds"),
        dir=attrs.get("dir", f"{TRIALS_DIR}/{trial.number}"),
        pruned_at_epoch=attrs.get("pruned_at_epoch"),
        error=attrs.get("error"),
    )


@dataclass
class _Progress:
    """What the loop knows besides the study: the monitor (from the first trial), time, why it stopped."""

    monitor: str | None
    direction: str
    started: float
    ran: int = 0  # trials run by this search (a continued study may hold earlier ones)
    stopped_by: str = "trials"
    status: str = "running"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _summary(study: optuna.Study, settings: DictConfig, params: list[Param], progress: _Progress) -> dict[str, Any]:
    """``search.json``: the settings, every trial, the best and how the search ended."""
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    counts = {state: sum(1 for t in trials if t.state == state) for state in ("complete", "pruned", "fail")}
    best = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        top = study.best_trial
        best = {"number": top.number, "params": dict(top.params), "value": top.value, "dir": _record(top).dir}
    return {
        "status": progress.status,
        "monitor": progress.monitor,
        "direction": progress.direction,
        "trials_run": sum(counts.values()),  # finished trials: complete, pruned or failed
        "trials_complete": counts["complete"],
        "trials_pruned": counts["pruned"],
        "trials_failed": counts["fail"],
        "max_trials": settings.trials,
        "budget_minutes": settings.budget_minutes,
        "stopped_by": progress.stopped_by,  # trials | budget
        "seconds": progress.elapsed,
        "space": {p.key: p.describe() for p in params},
        "sampler": {"name": "tpe", "seed": settings.seed, "startup_trials": settings.startup_trials},
        "pruner": {"name": settings.pruner, "warmup_epochs": settings.warmup_epochs},
        "storage": settings.storage,
        "study_name": study.study_name,
        "trial_checkpoints": "kept" if settings.keep_trial_checkpoints else "removed",
        "best": best,
        "trials": [asdict(t) for t in trials],
    }


def summary_records(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The ``search/*`` entries of the tested run's ``metrics.json`` (the numbers also go to its loggers)."""
    best = summary["best"]
    records: dict[str, Any] = {
        "search/trials": summary["trials_run"],
        "search/trials_complete": summary["trials_complete"],
        "search/trials_pruned": summary["trials_pruned"],
        "search/trials_failed": summary["trials_failed"],
        "search/max_trials": summary["max_trials"],
        "search/seconds": summary["seconds"],
        "search/stopped_by": summary["stopped_by"],
        "search/best_trial": best["number"],
        "search/best_val": best["value"],
        **{f"search/best/{key}": value for key, value in best["params"].items()},
    }
    if summary["budget_minutes"] is not None:
        records["search/budget_minutes"] = summary["budget_minutes"]
    return records


def _run_trial(
    run: RunFn, cfg: DictConfig, study: optuna.Study, distributions: dict[str, BaseDistribution], progress: _Progress
) -> None:
    """Ask for one trial, run it, tell the study how it ended."""
    settings = cfg.search
    trial = study.ask(distributions)
    trial_dir = Path(cfg.paths.output_dir) / TRIALS_DIR / str(trial.number)
    trial.set_user_attr("dir", f"{TRIALS_DIR}/{trial.number}")
    single = trainer_setting(cfg.trainer, "devices") in (1, "1") and trainer_setting(cfg.trainer, "num_nodes") == 1
    # the monitor's name is known once a trial has run (task.monitor=auto settles with the data), so the first trial
    # runs unpruned, as a pruner with no finished trial to compare against would leave it anyway; one process (no
    # spawned ranks) talks to the in-memory study
    pruning = settings.pruner != "none" and progress.monitor is not None and single
    callbacks = [OptunaPruning(trial, progress.monitor)] if pruning else []
    log.info("search: trial %d of at most %d: %s", trial.number, settings.trials, _values(trial.params))
    started = time.monotonic()
    progress.ran += 1
    try:
        metrics = run(trial_config(cfg, trial.params, trial_dir, trial.number), callbacks=callbacks)
    except Exception as err:
        trial.set_user_attr("seconds", time.monotonic() - started)
        trial.set_user_attr("error", f"{type(err).__name__}: {err}")
        write_json(trial_dir / "error.json", failure_record(err))
        study.tell(trial, state=TrialState.FAIL)
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.error("search: trial %d failed before any trial completed; the search stops", trial.number)
            raise
        name = type(err).__name__
        log.warning("search: trial %d failed (%s: %s); see %s/error.json", trial.number, name, err, trial_dir)
        return
    trial.set_user_attr("seconds", time.monotonic() - started)
    monitor = metrics["monitor"]
    if progress.monitor is None:
        mode = "maximize" if monitor_mode(monitor) == "max" else "minimize"
        if mode != progress.direction:
            raise FinexpError(
                f"search: the run's monitor {monitor} is one to {mode}, but the study's direction is "
                f"{progress.direction}: set task.monitor explicitly"
            )
        progress.monitor = monitor
        study.set_user_attr("monitor", monitor)
    value = metrics.get(monitor)
    if value is not None:
        trial.set_user_attr("value", float(value))
    if metrics.get("pruned_at_epoch") is not None:  # stopped by the pruner (now, or when it first ran)
        trial.set_user_attr("pruned_at_epoch", metrics["pruned_at_epoch"])
        study.tell(trial, state=TrialState.PRUNED)
    elif value is None or not math.isfinite(float(value)):
        trial.set_user_attr("error", f"{monitor} is {value}")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, float(value))
    if not settings.keep_trial_checkpoints:  # the tested run keeps its own; trials' would only fill the disk
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)


def _values(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def search(cfg: DictConfig, run: RunFn) -> dict[str, Any]:
    """Run the trials of ``cfg.search``, then retrain the best setting in ``cfg.paths.output_dir`` and test it once.

    Args:
        cfg: a validated config with ``search`` on (``search=budgeted``).
        run: what runs one config (:func:`finexp.train.train`); called once per trial and once for the final run.

    Returns:
        The final run's metrics (its ``metrics.json``), with the ``search/*`` summary.

    Raises:
        FinexpError: when no trial completed (each failed or was pruned); the first trial's own error when it fails
            before any trial completed (the setup, not the values, is at fault).
    """
    settings = cfg.search
    params = search_params(cfg)
    output_dir = Path(cfg.paths.output_dir)
    direction = search_direction(cfg)
    study = _open_study(settings, direction)
    distributions = {p.key: distribution(p) for p in params}
    progress = _Progress(monitor=study.user_attrs.get("monitor"), direction=direction, started=time.monotonic())
    budget = settings.budget_minutes
    log.info(
        "search: at most %d trials%s, on %s; space: %s",
        settings.trials,
        f" or {budget:g} minutes" if budget is not None else "",
        progress.monitor or "task.monitor",
        "; ".join(p.describe() for p in params),
    )
    while len(study.get_trials(deepcopy=False, states=_FINISHED)) < settings.trials:
        if budget is not None and progress.ran > 0 and progress.elapsed >= budget * 60:
            progress.stopped_by = "budget"
            break
        _run_trial(run, cfg, study, distributions, progress)
        write_json(output_dir / SEARCH_FILE, _summary(study, settings, params, progress))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        write_json(output_dir / SEARCH_FILE, {**_summary(study, settings, params, progress), "status": "failed"})
        raise FinexpError(
            f"search: none of {len(study.trials)} trials completed (see {output_dir / SEARCH_FILE} and "
            f"{output_dir / TRIALS_DIR}/*/error.json)"
        )

    progress.status = "retraining"
    summary = _summary(study, settings, params, progress)
    write_json(output_dir / SEARCH_FILE, summary)
    best = summary["best"]
    log.info(
        "search: best is trial %d (%s %.4f): %s; retraining it and testing once",
        best["number"],
        progress.monitor,
        best["value"],
        _values(best["params"]),
    )
    final = with_values(cfg, best["params"])
    with open_dict(final):
        final.tags = [*cfg.tags, "search-best"]
    metrics = run(final, records=summary_records(summary))

    summary["status"] = "completed"
    summary["final"] = {"dir": ".", "value": metrics.get(progress.monitor)}
    write_json(output_dir / SEARCH_FILE, summary)
    info = read_json(output_dir / "run_info.json")
    if info is not None:  # a baseline or a resumed run wrote it too; the search's summary joins it
        info["search"] = {k: v for k, v in summary.items() if k != "trials"} | {"file": SEARCH_FILE}
        write_json(output_dir / "run_info.json", info)
    print(
        f"finexp search: {summary['trials_run']} trials ({summary['trials_complete']} complete, "
        f"{summary['trials_pruned']} pruned, {summary['trials_failed']} failed) in {summary['seconds']:.0f} s, "
        f"stopped by {summary['stopped_by']}; best {progress.monitor} {best['value']:.4f} (trial {best['number']}: "
        f"{_values(best['params'])}), retrained in {output_dir} ({SEARCH_FILE})",
        flush=True,
    )
    return metrics
