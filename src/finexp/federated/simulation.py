"""Where ``finexp-train`` finds :func:`save_checkpoints` (the global model saved as the run's checkpoints).

The rounds themselves live in :mod:`finexp.federated.server` (one implementation for every runtime); this module
keeps the name ``finexp.train`` imports.
"""

from __future__ import annotations

from finexp.federated.server import FederationResult, RoundRecord, save_checkpoints

__all__ = ["FederationResult", "RoundRecord", "save_checkpoints"]
