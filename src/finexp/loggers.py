"""Loggers that finexp needs to behave differently from Lightning's."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers import MLFlowLogger as _LightningMLFlowLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _SharedFileWriter(ExperimentWriter):
    """Lightning's CSV writer, aware of the columns other processes already wrote to ``metrics.csv``.

    Under a spawning DDP strategy (``trainer=ddp_cpu``) fit, validate and test each run in fresh processes that get
    a copy of the logger made before any of them wrote; Lightning's writer then rewrites the file with only the
    columns it saw itself and fails on the rows of the earlier process. Reading the file's header first fixes that.
    """

    def __init__(self, log_dir: str, keep_through_epoch: int | None = None) -> None:
        self.keep_through_epoch = keep_through_epoch  # set before the parent's __init__ checks the directory
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """A fresh run replaces an old ``metrics.csv``; a resumed one keeps the rows of the epochs its checkpoint
        holds (later rows, logged after that checkpoint, are logged again by the resumed run)."""
        if self.keep_through_epoch is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if row.get("epoch") and float(row["epoch"]) <= self.keep_through_epoch]
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)

    def _record_new_keys(self) -> set[str]:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys.extend(k for k in header if k not in self.metrics_keys)
        return super()._record_new_keys()


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives being written by several processes in turn."""

    resume_epoch: int | None = None  # set by finexp-train when it resumes: keep the rows of epochs <= this one

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _SharedFileWriter(log_dir=self.log_dir, keep_through_epoch=self.resume_epoch)
        return self._experiment


# ----------------------------------------------------------------------------------------------------------------
# Tracking services (logger=mlflow, logger=wandb): Lightning's loggers with finexp's local-first defaults
# ----------------------------------------------------------------------------------------------------------------
class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's ``MLFlowLogger``, local by default: an SQLite store and the artifacts under ``<run_dir>/mlruns``.

    Args:
        run_dir: the run directory (``mlruns/`` is created in it when no server is named).
        tracking_uri: an MLflow server (``http://mlflow:5000``) or store URI; None: ``MLFLOW_TRACKING_URI``, else the
            local store. (MLflow 3 refuses new file stores; SQLite is its maintained local backend.)
        **kwargs: Lightning's ``MLFlowLogger`` arguments (``experiment_name``, ``run_name``, ``tags``, ``log_model``).
    """

    def __init__(self, run_dir: str, tracking_uri: str | None = None, **kwargs: Any) -> None:
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            root = Path(run_dir) / "mlruns"
            root.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
            kwargs.setdefault("artifact_location", str(root / "artifacts"))
        super().__init__(tracking_uri=tracking_uri, **kwargs)


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that also keeps checkpoint artifacts offline.

    Lightning refuses ``log_model=True`` with ``offline=True``; W&B itself stores an offline run's artifacts with the
    run, and ``wandb sync`` uploads them with it, so here the best checkpoint (and the last) is logged as a ``model``
    artifact at the end of a successful fit, online or offline.
    """

    def __init__(self, *args: Any, log_model: bool | str = False, offline: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, log_model=False if offline else log_model, offline=offline, **kwargs)
        self._log_model = log_model
