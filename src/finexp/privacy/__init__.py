"""Privacy mechanisms (``conf/privacy``): DP-SGD, label differential privacy, and PII masking.

:func:`build_privacy` turns the plain settings of a ``privacy`` option into a :class:`PrivacyPlan`, whose pieces plug
into hook points of the data module (text masking, train-label randomization, batch sampling) and the trainer (the
DP-SGD callback). Each piece reports what it spent or masked for the run's ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytorch_lightning as pl

from finexp.extras import require_extra
from finexp.privacy.errors import PrivacyError
from finexp.privacy.label_dp import LabelRandomizer
from finexp.privacy.pii import PII_TYPES, PIIMasker
from finexp.privacy.sampling import PoissonBatchSampler

if TYPE_CHECKING:
    from finexp.privacy.dp_sgd import DPSGD

__all__ = [
    "PII_TYPES",
    "LabelRandomizer",
    "PIIMasker",
    "PoissonBatchSampler",
    "PrivacyError",
    "PrivacyPlan",
    "build_privacy",
]

METHODS = ("none", "dp_sgd", "label_dp")


@dataclass
class PrivacyPlan:
    """The privacy pieces of one run; any of them may be absent."""

    masker: PIIMasker | None = None
    labels: LabelRandomizer | None = None
    dp_sgd: DPSGD | None = None
    label_column: str | None = None

    def mask(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Datamodule hook: mask PII in every text column of a split (never the label column)."""
        if self.masker is None:
            return frame
        return self.masker.mask_frame(frame, skip=[self.label_column] if self.label_column else [])

    def callbacks(self) -> list[pl.Callback]:
        return [self.dp_sgd] if self.dp_sgd is not None else []

    def report(self) -> dict[str, Any]:
        """What the run spent and masked: ``privacy/*`` and ``pii/*`` entries for ``metrics.json``."""
        out: dict[str, Any] = {}
        for piece in (self.labels, self.dp_sgd, self.masker):
            if piece is not None:
                out |= piece.report()
        return out


def build_privacy(
    name: str = "none",
    mask_pii: bool = False,
    pii: Mapping[str, Any] | None = None,
    seed: int = 0,
    label_column: str | None = None,
    **options: Any,
) -> PrivacyPlan:
    """Build the pieces a ``privacy`` option asks for.

    Args:
        name: ``none``, ``dp_sgd`` or ``label_dp``.
        mask_pii: mask personal data in the text before tokenization (composes with every ``name``).
        pii: :class:`~finexp.privacy.pii.PIIMasker` arguments (``name_columns``, ``extra_names``, ``types``).
        seed: seed of the label randomization.
        label_column: the column PII masking leaves alone.
        **options: the mechanism's own settings (see :class:`DPSGD` and :class:`LabelRandomizer`).
    """
    if name not in METHODS:
        raise PrivacyError(f"privacy.name={name!r} is not allowed: choose one of {', '.join(METHODS)}")
    pii = dict(pii or {})
    masker = None
    if mask_pii:
        masker = PIIMasker(
            name_columns=_strings(pii.get("name_columns")),
            extra_names=_strings(pii.get("extra_names")),
            types=pii.get("types"),
        )
    plan = PrivacyPlan(masker=masker, label_column=label_column)
    if name == "dp_sgd":
        require_extra("privacy", "privacy=dp_sgd")
        from finexp.privacy.dp_sgd import DPSGD  # Opacus (finexp[privacy]): only DP-SGD runs import it

        plan.dp_sgd = DPSGD(**options)
    elif name == "label_dp":
        plan.labels = LabelRandomizer(seed=seed, **options)
    elif options:
        raise PrivacyError(f"privacy=none takes no settings; got {sorted(options)}")
    return plan


def _strings(values: Sequence[str] | None) -> list[str]:
    return [str(v) for v in values or []]
