"""The error every privacy mechanism raises for a setting it cannot honour."""

from __future__ import annotations

from finexp import FinexpError


class PrivacyError(FinexpError):
    """A privacy mechanism cannot run as configured (unsupported layer, trainer setting, budget)."""
