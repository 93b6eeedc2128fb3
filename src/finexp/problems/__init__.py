"""Problem types: ``task.problem`` picks how a run's data, model and LightningModule are built, and what it supports.

A problem type is one module here that registers a :class:`Problem` (its factories, its monitor, its report and its
:class:`Capabilities`); a task of an existing type is only a ``conf/task/*.yaml``. The built-in types:

- :mod:`.classification` (text or table rows -> one label; also distillation students),
- :mod:`.regression`, :mod:`.multilabel` (the same row pipeline, a float target / a label set),
- :mod:`.token_classification` (NER), :mod:`.generation` (causal LM), :mod:`.long_document` (windows).

Importing this package is cheap (no torch): the factories import their stacks when called.
"""

from __future__ import annotations

from finexp.problems.capabilities import Capabilities, ConfigError, render_table
from finexp.problems.registry import PROBLEMS, Problem, capability_table, get_problem, register, supporting

# The built-in types register themselves on import, in this order (the order of the table and of error messages).
from finexp.problems import classification, token_classification, generation, long_document, regression, multilabel  # noqa: F401  # isort: skip

__all__ = [
    "PROBLEMS",
    "Capabilities",
    "ConfigError",
    "Problem",
    "capability_table",
    "get_problem",
    "register",
    "render_table",
    "supporting",
]
