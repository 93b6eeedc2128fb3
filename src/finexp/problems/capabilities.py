"""What a problem type supports: the one table that config checks, ``finexp.runs`` and the README read.

This module imports nothing heavy (no torch, no transformers), so ``finexp.config`` can check a config against it
before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from finexp import FinexpError


class ConfigError(FinexpError):
    """A config value that composes but makes no sense (re-exported as ``finexp.config.ConfigError``)."""


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise ``ConfigError("<key>=<value> is not allowed: <allowed>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


PRIVACY = ("none", "dp_sgd", "label_dp")
METHODS = ("finetune", "setfit", "prompt", "generative")
MODEL_KINDS = ("transformer", "baseline")


@dataclass(frozen=True)
class Capabilities:
    """What one problem type can combine with, at training time (config keys) and on a trained run (commands).

    Attributes:
        model_kinds: ``model.kind`` values (``transformer``; ``baseline``: a classic model, model=gbm).
        privacy: ``privacy.name`` values (``none`` always; ``dp_sgd``, ``label_dp``).
        mask_pii: ``privacy.mask_pii=true`` (PII masking before tokenization).
        adapters: ``adapter._target_`` builders that fit; None: every adapter.
        methods: ``method.name`` values (``finetune``; ``setfit``, ``prompt`` are classification methods).
        fusion: ``model.fusion=concat`` (numeric columns beside the text).
        k_shot: ``data.k_shot`` (K rows per class; also: reduced-data sampling stratifies by class).
        cross_validation: ``data.cv.folds``.
        class_weights: ``task.class_weights`` and ``task.positive_label`` (single-label classes).
        distillation: ``distill.teacher`` (this run as the student).
        federated: ``federated=fedavg|fedprox``.
        explain: ``analysis.explain`` (integrated gradients over the text).
        init_from: ``model.init_from`` (start from an earlier run, and serve as one).
        teacher: a trained run of this type can be ``distill.teacher``.
        export: ``finexp-export``.
        predict: ``finexp-predict``.
        serve: ``finexp-serve``.
        evaluate: ``finexp-eval``.
    """

    model_kinds: tuple[str, ...] = ("transformer",)
    privacy: tuple[str, ...] = ("none",)
    mask_pii: bool = False
    adapters: tuple[str, ...] | None = None
    methods: tuple[str, ...] = ("finetune",)
    fusion: bool = False
    k_shot: bool = False
    cross_validation: bool = False
    class_weights: bool = False
    distillation: bool = False
    federated: bool = False
    explain: bool = False
    init_from: bool = False
    teacher: bool = False
    export: bool = False
    predict: bool = False
    serve: bool = False
    evaluate: bool = True

    def __post_init__(self) -> None:
        for name, value, known in (
            ("model_kinds", self.model_kinds, MODEL_KINDS),
            ("privacy", self.privacy, PRIVACY),
            ("methods", self.methods, METHODS),
        ):
            unknown = [v for v in value if v not in known]
            if unknown or not value:
                raise ValueError(f"Capabilities.{name}={value!r}: choose from {', '.join(known)}")


# Column headings of the Markdown table, in order (field name -> heading).
HEADINGS = {
    "model_kinds": "model.kind",
    "privacy": "privacy",
    "mask_pii": "PII masking",
    "adapters": "adapters",
    "methods": "method",
    "fusion": "fusion",
    "k_shot": "k-shot",
    "cross_validation": "CV",
    "class_weights": "class weights, positive label",
    "distillation": "distill",
    "federated": "federated",
    "explain": "explain",
    "init_from": "init_from",
    "teacher": "teacher",
    "export": "export",
    "predict": "predict",
    "serve": "serve",
    "evaluate": "eval",
}
if set(HEADINGS) != {f.name for f in fields(Capabilities)}:  # a new field needs a heading
    raise RuntimeError("finexp.problems.capabilities.HEADINGS does not name every Capabilities field")


def _cell(value: object) -> str:
    if value is None:
        return "all"
    if isinstance(value, bool):
        return "yes" if value else "—"
    if isinstance(value, tuple):
        return ", ".join(v.rsplit(".", 1)[-1] for v in value)
    return str(value)


def render_table(table: dict[str, Capabilities]) -> str:
    """The capability table as Markdown, one row per problem type (the README shows this, generated)."""
    head = ["task.problem", *HEADINGS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, caps in table.items():
        cells = [f"`{name}`", *(_cell(getattr(caps, key)) for key in HEADINGS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
