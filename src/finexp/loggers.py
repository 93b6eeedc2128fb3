"""Loggers that finexp needs to behave differently from Lightning's."""

from __future__ import annotations

import csv

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _SharedFileWriter(ExperimentWriter):
    """Lightning's CSV writer, aware of the columns other processes already wrote to ``metrics.csv``.

    Under a spawning DDP strategy (``trainer=ddp_cpu``) fit, validate and test each run in fresh processes that get
    a copy of the logger made before any of them wrote; Lightning's writer then rewrites the file with only the
    columns it saw itself and fails on the rows of the earlier process. Reading the file's header first fixes that.
    """

    def _record_new_keys(self) -> set[str]:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys.extend(k for k in header if k not in self.metrics_keys)
        return super()._record_new_keys()


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives being written by several processes in turn."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _SharedFileWriter(log_dir=self.log_dir)
        return self._experiment
