"""The search space of ``search=budgeted`` (``search.space``): parsed, and checked against the composed config.

A space is declarative YAML, nested like the config it varies, one entry per searched key::

    space:
      optimizer:
        lr: {low: 1.0e-5, high: 1.0e-3, log: true}   # a range: float (or int, when low and high are), log scale
      trainer:
        max_epochs: {choices: [3, 5, 8]}              # a list of values (any scalars, null included)

A dotted key (``optimizer.lr: {...}``) means the same. Every key must exist in the composed config and be a value,
not a group; keys that would change the splits, the test run or the run directory are refused (the search chooses
on the validation split, and every trial must see the same one). Both ends of a range and every choice are checked
as the run would check them (:func:`validate_search` is given :func:`~finexp.config.validate_config`), so a
misspelt key or a value the run refuses fails here, before torch loads, naming ``search.space.<key>``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from finexp.config.lookups import target_of
from finexp.problems.capabilities import ConfigError
from finexp.problems.capabilities import require as _require

SPEC_KEYS = frozenset({"low", "high", "log", "step", "choices"})
PRUNERS = ("median", "none")
# what a trial may not vary: the search itself, where runs write, the test run, resuming, and the splits (every
# trial is scored on the same validation rows, and the one tested run on the test rows the search never saw)
PROTECTED = ("search", "paths", "hydra", "test", "test_predictions", "ckpt_path", "resume", "data.cv")
SPLIT_KEYS = (
    "data.rdataset",
    "data.path",
    "data.train_path",
    "data.val_path",
    "data.test_path",
    "data.hf_dataset",
    "data.hf_config",
    "data.hf_split",
    "data.hf_revision",
    "data.hf_columns",
    "data.val_size",
    "data.test_size",
    "data.split_seed",
    "data.time_column",
    "data.test_from",
    "data.max_rows",
)
_OPTUNA_SWEEPER = "hydra_plugins.finexp_optuna_sweeper."
# what a check raises on a value it refuses: ConfigError, or a comparison the value cannot take (an untyped key,
# trainer.max_epochs=many, fails `>= 1`)
_REFUSALS = (ConfigError, TypeError, ValueError)


@dataclass(frozen=True)
class Param:
    """One searched key: a range (``low`` .. ``high``, on a ``log`` scale or in steps of ``step``) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def integer(self) -> bool:
        """A range of whole numbers (``low``, ``high`` and ``step`` are ints): sampled as ints."""
        ends = (self.low, self.high, 1 if self.step is None else self.step)
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in ends)

    def extremes(self) -> tuple[Any, ...]:
        """The values a run must accept for the whole space to be usable: both ends of a range, every choice."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {list(self.choices)}"
        scale = ", log" if self.log else (f", step {self.step}" if self.step is not None else "")
        return f"{self.key} in [{self.low}, {self.high}{scale}]"


def _leaves(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, spec)`` of each entry of a nested space; a mapping with a spec key is a spec."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and not SPEC_KEYS & set(value):
            if not value:
                raise ConfigError(f"search.space.{path}: an empty entry; give {{low: .., high: ..}} or {{choices: ..}}")
            yield from _leaves(value, f"{path}.")
        else:
            yield path, value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _param(key: str, spec: Any) -> Param:
    where = f"search.space.{key}"
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where}={spec!r}: give a range {{low: .., high: .., log: true}} or a list {{choices: [..]}}"
        )
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a search setting; use low, high, log, step or choices")
    if "choices" in spec:
        choices = spec["choices"]
        _require(set(spec) == {"choices"}, where, dict(spec), "choices stand alone (no low/high/log/step with them)")
        _require(isinstance(choices, list) and len(choices) > 0, f"{where}.choices", choices, "a non-empty list")
        scalar = all(c is None or isinstance(c, str | int | float | bool) for c in choices)
        _require(scalar, f"{where}.choices", choices, "a list of plain values (numbers, strings, booleans, null)")
        return Param(key, choices=tuple(choices))
    for end in ("low", "high"):
        _require(end in spec, where, dict(spec), f"a range needs both low and high ({end} is missing)")
        _require(_is_number(spec[end]), f"{where}.{end}", spec[end], "must be a number")
    low, high = spec["low"], spec["high"]
    _require(low < high, where, f"low {low}, high {high}", "low must be below high")
    log, step = spec.get("log", False), spec.get("step")
    _require(isinstance(log, bool), f"{where}.log", log, "true or false")
    _require(step is None or (_is_number(step) and step > 0), f"{where}.step", step, "a number > 0, or absent")
    _require(not (log and step is not None), where, dict(spec), "a range is either on a log scale or stepped")
    _require(not log or low > 0, f"{where}.low", low, "a log-scale range must start above 0")
    return Param(key, low=low, high=high, log=log, step=step)


def parse_space(space: Mapping[str, Any]) -> list[Param]:
    """The :class:`Param` of every entry of a (plain, resolved) ``search.space``.

    Raises:
        ConfigError: on an empty space or an entry that is neither a range nor a list of choices.
    """
    params = [_param(key, spec) for key, spec in _leaves(space)]
    if not params:
        raise ConfigError("search.space is empty: give at least one key to search, e.g. optimizer.lr")
    keys = [p.key for p in params]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"search.space.{twice[0]}: given twice (nested and dotted)")
    return params


def search_params(cfg: DictConfig) -> list[Param]:
    """The searched keys of a config with ``search`` on (``search=budgeted``)."""
    return parse_space(OmegaConf.to_container(cfg.search.space, resolve=True))


def with_values(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with ``values`` (dotted key -> value) set and the search off: one plain run's config.

    Raises:
        ConfigError: a value of the wrong type for its key (``trainer.max_epochs: many``).
    """
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.search = None
        for key, value in values.items():
            try:
                OmegaConf.update(out, key, value, merge=False)
            except OmegaConfBaseException as err:
                raise ConfigError(f"search.space.{key}: {value!r} does not fit {key}: {err}") from None
    return out


def _check_key(cfg: DictConfig, key: str) -> None:
    where = f"search.space.{key}"
    for protected in (*PROTECTED, *SPLIT_KEYS):
        if key == protected or key.startswith(f"{protected}."):
            raise ConfigError(
                f"{where}: {protected} cannot be searched (the search chooses on one validation split and tests "
                "the chosen setting once; the splits, the test run and the run directory stay fixed)"
            )
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg  # None: no such parent either
    if not isinstance(node, DictConfig) or leaf not in node:  # `in`: a key set to null is there
        siblings = [str(k) for k in node] if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(leaf, siblings, n=3)
        hint = f"; did you mean {', '.join(f'{parent}.{c}' if parent else c for c in close)}?" if close else ""
        raise ConfigError(f"{where}: the config has no key {key}{hint}")
    if isinstance(OmegaConf.select(cfg, key), DictConfig | ListConfig):
        raise ConfigError(f"{where}: {key} is a group of settings, not a value; search one of its keys")


def _under_optuna_sweeper() -> bool:
    return HydraConfig.initialized() and target_of(HydraConfig.get().sweeper).startswith(_OPTUNA_SWEEPER)


def validate_search(cfg: DictConfig, validate: Callable[[DictConfig], None]) -> None:
    """``search=budgeted``: its settings, what it combines with, and every key and value of its space.

    Args:
        cfg: the composed run config (a config with ``search`` off passes untouched).
        validate: the run's own check (:func:`finexp.config.validate_config`), run on the config with each end of
            each range and each choice set, so a value the run would refuse is refused here.

    Raises:
        ConfigError: naming the ``search.*`` key.
    """
    search = cfg.search
    if not search:  # search=none
        return
    _require(search.trials >= 1, "search.trials", search.trials, "must be >= 1")
    budget = search.budget_minutes
    _require(budget is None or budget > 0, "search.budget_minutes", budget, "must be > 0, or null (trials only)")
    _require(search.startup_trials >= 0, "search.startup_trials", search.startup_trials, "must be >= 0")
    _require(search.pruner in PRUNERS, "search.pruner", search.pruner, f"choose one of {', '.join(PRUNERS)}")
    _require(search.warmup_epochs >= 0, "search.warmup_epochs", search.warmup_epochs, "must be >= 0")
    if cfg.federated:
        raise ConfigError(
            "search=budgeted with federated=...: the search trains and scores every trial centrally; tune a central "
            "run, then federate with the values it chose (search=none)"
        )
    if _under_optuna_sweeper():
        raise ConfigError(
            "search=budgeted with hparams_search=...: two searches, one inside the other; use one of them "
            "(search=budgeted runs its own trials, then retrains and tests the best once)"
        )
    resume = "null: a search starts its own trials (a rerun into the same directory continues the search)"
    _require(cfg.ckpt_path is None, "ckpt_path", cfg.ckpt_path, resume)
    params = search_params(cfg)
    for param in params:
        _check_key(cfg, param.key)
    # the corners of the space (every key at its low end, then its high end; choices in turn), a copy and a check
    # each; a corner the run refuses is then taken apart to name the key
    corners = max(len(p.extremes()) for p in params)
    for i in range(corners):
        corner = {p.key: p.extremes()[min(i, len(p.extremes()) - 1)] for p in params}
        try:
            validate(with_values(cfg, corner))
        except _REFUSALS as err:
            for key, value in corner.items():
                try:
                    validate(with_values(cfg, {key: value}))
                except _REFUSALS as alone:
                    raise ConfigError(f"search.space.{key}: the run refuses {key}={value!r}: {alone}") from None
            values = ", ".join(f"{k}={v!r}" for k, v in corner.items())
            raise ConfigError(f"search.space: the run refuses the setting {values}: {err}") from None
