"""``check_compatibility``: a config against its problem type's :class:`~finexp.problems.Capabilities`, table-driven.

Every rule reads one config key and asks the problem type's capabilities whether it supports that value; a refusal
reads ``task.problem=<type> does not support <key>=<value> (supported: <values>)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from finexp.problems.capabilities import Capabilities, ConfigError
from finexp.problems.registry import PROBLEMS


@dataclass(frozen=True)
class Rule:
    """One config key checked against one :class:`Capabilities` field.

    Attributes:
        key: the config key (what the message names).
        field: the :class:`Capabilities` field: a tuple of allowed values, or a bool (the key must be off unless true).
        active: whether the key is set (for a bool field); ``None`` for tuple fields, which always apply.
    """

    key: str
    field: str
    active: Callable[[object], bool] | None = None


def _set(value: object) -> bool:
    return value is not None and value is not False and value != ""


RULES = (
    Rule("model.kind", "model_kinds"),
    Rule("privacy", "privacy"),  # privacy.name, reported as the group choice (privacy=dp_sgd)
    Rule("privacy.mask_pii", "mask_pii", bool),
    Rule("method", "methods"),
    Rule("adapter", "adapters"),
    Rule("model.fusion", "fusion", _set),
    Rule("data.k_shot", "k_shot", _set),
    Rule("data.cv.folds", "cross_validation", _set),
    Rule("task.class_weights", "class_weights", _set),
    Rule("task.positive_label", "class_weights", _set),
    Rule("distill.teacher", "distillation", _set),
    Rule("federated", "federated", bool),
    Rule("analysis.explain", "explain", bool),
    Rule("model.init_from", "init_from", _set),
)

# Where a rule's value lives when its key names a group (``privacy=dp_sgd`` is privacy.name).
_VALUE_AT = {"privacy": "privacy.name", "method": "method.name", "adapter": "adapter._target_"}


def _value(cfg: DictConfig, rule: Rule) -> object:
    node = OmegaConf.select(cfg, _VALUE_AT.get(rule.key, rule.key))  # an absent key reads as off
    if rule.key == "federated":
        return bool(node)  # federated=none composes to an empty node
    return node


def check_compatibility(cfg: DictConfig) -> None:
    """Refuse a config whose settings its problem type (``task.problem``) does not support.

    Raises:
        ConfigError: an unknown ``task.problem``, or the first unsupported setting, naming both.
    """
    name = cfg.task.problem
    if name not in PROBLEMS:
        raise ConfigError(f"task.problem={name!r} is not allowed: choose one of {', '.join(PROBLEMS)}")
    problem = PROBLEMS[name]
    supports = problem.supports
    for rule in RULES:
        refusal = _refusal(supports, rule, _value(cfg, rule))
        if refusal is not None:
            raise ConfigError(f"task.problem={name} does not support {refusal}")
    if problem.check is not None:
        problem.check(cfg)


def _refusal(supports: Capabilities, rule: Rule, value: object) -> str | None:
    allowed = getattr(supports, rule.field)
    if rule.active is None:  # a tuple of values; None: all
        if allowed is None or value in allowed:
            return None
        return f"{rule.key}={value} (supported: {', '.join(map(str, allowed))})"
    if allowed or not rule.active(value):
        return None
    return f"{rule.key}={value} (supported: none)"
