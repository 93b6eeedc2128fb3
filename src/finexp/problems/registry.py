"""The registry of problem types: ``task.problem`` -> how a run of that type is built and what it supports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from finexp import FinexpError
from finexp.problems.capabilities import Capabilities, render_table

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass(frozen=True)
class Problem:
    """How one problem type builds a run, and what it supports.

    Attributes:
        datamodule: ``(cfg, tokenizer, source, label_names, privacy) -> datamodule``; the datamodule has ``prepare()``,
            ``label_names``, ``num_labels``, ``datasets`` (split -> dataset), ``fingerprints`` and ``texts`` (split ->
            one text per row, sentence, prompt or document: what finexp-eval's predictions.csv lists).
        model: ``(cfg, num_labels, tokenizer, initial) -> nn.Module`` with the adapter applied; ``initial`` is
            ``model.init_from``'s weights or None.
        module: ``(cfg, model, datamodule) -> LightningModule``; every type but classification also has
            ``predictions_table(predict_outputs, texts) -> DataFrame``, finexp-eval's predictions.csv.
        monitor: ``num_labels -> metric`` that ``task.monitor=auto`` resolves to.
        report: which trust report ``analysis`` writes for it: ``classification`` (calibration, thresholds,
            fairness, explanations), ``regression`` (errors, residuals, error by target decile), or None.
        supports: what it combines with (:class:`Capabilities`); ``finexp.config.validate_config`` checks a config
            against it and ``finexp.runs.TrainedRun.require`` a trained run.
        check: value checks of the type's own settings (``task.window``, ``task.scheme`` ...), raising
            ``ConfigError``; None: it has none.
    """

    datamodule: Callable[..., Any]
    model: Callable[..., Any]
    module: Callable[..., Any]
    monitor: Callable[[int], str]
    report: str | None = None
    supports: Capabilities = field(default_factory=Capabilities)
    check: Callable[[DictConfig], None] | None = None


PROBLEMS: dict[str, Problem] = {}


def register(name: str, problem: Problem, replace: bool = False) -> Problem:
    """Make ``problem`` the type ``task.problem=<name>`` builds (a problem module calls this once, at import).

    Raises:
        ValueError: ``name`` is taken and ``replace`` is false.
    """
    if name in PROBLEMS and not replace:
        raise ValueError(f"problem type {name!r} is already registered (pass replace=True to override it)")
    PROBLEMS[name] = problem
    return problem


def get_problem(name: str) -> Problem:
    """The registered problem type ``name``; a one-line error listing the known ones otherwise."""
    if name not in PROBLEMS:
        raise FinexpError(f"task.problem={name!r}: unknown problem type; allowed: {', '.join(PROBLEMS)}")
    return PROBLEMS[name]


def supporting(capability: str) -> tuple[str, ...]:
    """The problem types whose :class:`Capabilities` field ``capability`` is true (``export``, ``serve`` ...)."""
    if not isinstance(getattr(Capabilities(), capability, None), bool):
        raise ValueError(f"{capability!r} is not a yes/no field of finexp.problems.Capabilities")
    return tuple(name for name, problem in PROBLEMS.items() if getattr(problem.supports, capability))


def capability_table() -> str:
    """The registered problem types' capabilities as a Markdown table (the README's, generated)."""
    return render_table({name: problem.supports for name, problem in PROBLEMS.items()})
