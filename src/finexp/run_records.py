"""``RunRecords``: what the datamodule and the callbacks of a run recorded, added to its ``run_info.json``.

A datamodule's ``run_records`` (a codebook's unknown codes, the hybrid's stacked score) and a callback's
``run_records`` (weight averaging) are known once the run is built; the training entry point writes ``run_info.json``
before fitting, and this callback adds them to it when the fit starts (rank zero), so no entry point has to know
which component recorded what.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from finexp.records import write_json


class RunRecords(pl.Callback):
    """Merge ``trainer.datamodule.run_records`` and every callback's ``run_records`` into ``path`` at fit start.

    Args:
        path: the run's ``run_info.json`` (``${paths.output_dir}/run_info.json``); written by this run just before.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The entries this run's components recorded (datamodule first, then the callbacks in order)."""
        entries = dict(getattr(trainer.datamodule, "run_records", None) or {})
        for callback in trainer.callbacks:
            entries |= getattr(callback, "run_records", None) or {}
        return entries

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        entries = self.records(trainer)
        if not entries or not trainer.is_global_zero:
            return
        info = json.loads(self.path.read_text()) if self.path.is_file() else {}
        write_json(self.path, {**info, **entries})
