"""Where ``finexp-train`` finds :func:`save_checkpoints` (the global model saved as the run's checkpoints).

The rounds themselves live in :mod:`finexp.federated.server` (one implementation for every runtime), what they
leave behind in :mod:`finexp.federated.records`; this module keeps the name ``finexp.train`` imports.
"""

from __future__ import annotations

from finexp.federated.records import FederationResult, RoundRecord, save_checkpoints

__all__ = ["FederationResult", "RoundRecord", "save_checkpoints"]
