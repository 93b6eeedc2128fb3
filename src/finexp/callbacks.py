"""Lightning callbacks that record what a run cost (time per epoch, throughput, peak memory, checkpoint size), and
the one that reports a hyper-parameter search trial to Optuna.

:class:`RunCosts` is wired through ``conf/callbacks/default.yaml``; ``finexp-train`` merges its records into
``metrics.json``. :class:`OptunaPruning` is added by ``finexp-train`` to the jobs of an ``hparams_search`` sweep.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn


class PeakRssSampler:
    """Samples the process's resident set size in a background thread; RSS peaks inside backward, between hooks."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finexp-rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, self.process.memory_info().rss)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak


class RunCosts(pl.Callback):
    """Record the cost of training: time per epoch, training throughput, peak memory and checkpoint size.

    Keys (also logged): ``time/epoch_s`` (mean wall time of a training epoch, validation included),
    ``time/train_step_s`` (total time inside training steps), ``throughput/train_samples_per_s`` and
    ``throughput/train_tokens_per_s`` (real tokens, padding excluded; ``..._padded_tokens_per_s`` counts padding)
    over the time spent in training steps, ``memory/peak_mb`` (max allocated on a GPU, else the peak resident set
    size of the process while fitting, sampled every ``memory_interval_s``), ``memory/start_mb`` (resident set size
    when fitting starts), ``checkpoint/size_mb`` (the best checkpoint, or the last one) and ``time/epochs`` (training
    epochs run in this fit).

    RSS is the whole process's: jobs of one Hydra multirun share a process, so compare CPU memory across runs
    started as separate processes.

    Args:
        memory_interval_s: RSS sampling period on CPU; smaller catches shorter peaks.
    """

    def __init__(self, memory_interval_s: float = 0.02) -> None:
        self.memory_interval_s = memory_interval_s
        self.records: dict[str, float] = {}
        self._sampler: PeakRssSampler | None = None
        self._epoch_times: list[float] = []
        self._epoch_start = 0.0
        self._step_start = 0.0
        self._step_time = 0.0
        self._samples = 0
        self._tokens = 0
        self._padded = 0
        self._cuda = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records = {}
        self._epoch_times, self._step_time, self._samples, self._tokens, self._padded = [], 0.0, 0, 0, 0
        self._cuda = pl_module.device.type == "cuda"
        self.records["memory/start_mb"] = psutil.Process().memory_info().rss / 2**20
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        else:
            self._sampler = PeakRssSampler(self.memory_interval_s)
            self._sampler.start()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._step_time += time.perf_counter() - self._step_start
        mask = batch["attention_mask"]
        self._samples += int(mask.shape[0])
        self._tokens += int(mask.sum())
        self._padded += int(mask.numel())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_times.append(time.perf_counter() - self._epoch_start)
        pl_module.log("time/epoch_s", self._epoch_times[-1], on_epoch=True, sync_dist=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._cuda:
            peak = torch.cuda.max_memory_allocated(pl_module.device)
        else:
            peak = self._sampler.stop() if self._sampler else 0
            self._sampler = None
        step_time = max(self._step_time, 1e-9)
        self.records |= {
            "time/epoch_s": sum(self._epoch_times) / max(1, len(self._epoch_times)),
            "time/train_step_s": self._step_time,
            "throughput/train_samples_per_s": self._samples / step_time,
            "throughput/train_tokens_per_s": self._tokens / step_time,
            "throughput/train_padded_tokens_per_s": self._padded / step_time,
            "memory/peak_mb": peak / 2**20,
        }
        checkpoint = _checkpoint_file(trainer)
        if checkpoint is not None:
            self.records["checkpoint/size_mb"] = checkpoint.stat().st_size / 2**20
        self.records["time/epochs"] = float(len(self._epoch_times))
        for logger in trainer.loggers:
            logger.log_metrics(self.records, step=trainer.global_step)
        # Spawned DDP ranks (trainer=ddp_cpu) hand only callback_metrics back to the main process: carry the records
        # there too, so the main process's metrics.json has them (see run_costs).
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in self.records.items()})

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None


class BestAndLastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` really is the last epoch's.

    Since Lightning 2.6 ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint is saved at the same
    step, so with ``save_top_k=1`` an epoch that does not improve the monitor leaves ``last.ckpt`` at the best epoch,
    and a run resumed from it (``ckpt_path=last``, a rerun of a sweep) would silently repeat epochs. This subclass
    writes ``last.ckpt`` after every epoch's checkpointing, whether the monitor improved or not.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: pl.Trainer) -> None:
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _checkpoint_file(trainer: pl.Trainer) -> Path | None:
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint):
        return None
    for path in (callback.best_model_path, callback.last_model_path):
        if path and Path(path).is_file():
            return Path(path)
    return None


COST_PREFIXES = ("time/", "throughput/", "memory/", "checkpoint/")


def run_costs(trainer: pl.Trainer) -> dict[str, float]:
    """What :class:`RunCosts` measured in the last fit; from ``callback_metrics`` when the fit ran in spawned
    processes (the main process's own callback never saw a batch)."""
    records = next((dict(cb.records) for cb in trainer.callbacks if isinstance(cb, RunCosts)), {})
    if not records:
        records = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(COST_PREFIXES)}
    return records


class OptunaPruning(pl.Callback):
    """Report ``monitor`` to an Optuna trial after every validation epoch and stop training when its pruner says so.

    A pruned run stops at the end of that epoch (``trainer.should_stop``) and finishes as usual (best checkpoint
    validated, ``metrics.json`` written, with ``pruned_at_epoch``); the trial's ``pruned_at_epoch`` user attribute
    tells the sweeper to record it as pruned rather than completed or failed. Only rank 0 talks to the study; the
    decision is broadcast to the other ranks.

    Args:
        trial: an ``optuna.trial.Trial`` of a study whose pruner decides.
        monitor: the metric reported (``task.monitor``, e.g. ``val/auroc``).
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at_epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING  # not the validate() of the best checkpoint after fit
        if not fitting or trainer.sanity_checking or self.pruned_at_epoch is not None:
            return
        if self.monitor not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:
            self.trial.report(float(trainer.callback_metrics[self.monitor]), step=epoch)
            prune = self.trial.should_prune()
            if prune:
                self.trial.set_user_attr("pruned_at_epoch", epoch)
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at_epoch = epoch
            trainer.should_stop = True
