"""Resuming runs and sweeps: what a run directory already holds, and what a rerun into it should do.

A run directory ends in one of three states (the team contract ``finexp-report`` reads):

- ``metrics.json`` (written last, atomically): the run completed;
- ``error.json`` (``{"status": "failed", "error", "type", "traceback"}``) and no ``metrics.json``: it failed;
- ``run_info.json`` and neither: it was interrupted (or is still running); ``checkpoints/last.ckpt`` may hold its
  progress.

Rerunning a multirun into the same ``hydra.sweep.dir`` reruns every job into its old directory; :func:`plan_rerun`
decides per job: return the stored metrics, continue from ``last.ckpt``, or start afresh. A directory is only reused
when it was written by the same config (an Optuna sweep resamples its parameters, so job ``3`` of a rerun may be a
different trial than job ``3`` of the first attempt).
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml

from finexp import FinexpError
from finexp.recipe import FILLS

# Keys that may differ between an interrupted run and its rerun without making it a different experiment.
RERUN_IGNORED_KEYS = ("ckpt_path", "resume", "logger.wandb.id", "logger.wandb.resume")


@dataclass(frozen=True)
class RerunPlan:
    """What a (re)run into a directory does: ``skip`` (metrics stored), ``resume`` (from ``ckpt_path``) or ``fresh``."""

    action: str
    ckpt_path: str | None = None
    metrics: dict[str, Any] | None = None
    reason: str = ""


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or unreadable (e.g. a file cut off by a crash)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def completed_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``metrics.json`` when the run completed (it is written last, so its presence means done)."""
    metrics = read_json(Path(run_dir) / "metrics.json")
    return metrics if metrics is not None and metrics.get("status") == "completed" else None


def _drop(config: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = config
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value}
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys where two resolved configs differ, ignoring :data:`RERUN_IGNORED_KEYS`."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))  # deep copies, plain types
    for key in RERUN_IGNORED_KEYS:
        _drop(saved, key)
        _drop(current, key)
    a, b = _flat(saved), _flat(current)
    # "auto" (task.monitor and what interpolates it) and the recipe's nulls (finexp.recipe.FILLS) are settled from
    # the data when the run starts: the saved config holds what they became, and the same config on the same data
    # settles them the same way.
    return sorted(
        k
        for k in a.keys() | b.keys()
        if a.get(k, "<absent>") != b.get(k, "<absent>") and b.get(k) != "auto" and not (k in FILLS and b.get(k) is None)
    )


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path) -> str | None:
    """``last`` means ``<run_dir>/checkpoints/last.ckpt``; any other path must exist.

    Raises:
        FinexpError: when the checkpoint is not there.
    """
    if ckpt_path is None:
        return None
    path = Path(run_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = " (ckpt_path=last resumes the run in hydra.run.dir; give that directory)" if ckpt_path == "last" else ""
        raise FinexpError(f"ckpt_path={ckpt_path}: no checkpoint at {path}{hint}")
    return str(path)


def plan_rerun(run_dir: str | Path, config: dict[str, Any], ckpt_path: str | None, resume: bool) -> RerunPlan:
    """Decide what a run into ``run_dir`` does, given its resolved ``config``.

    Args:
        run_dir: the run directory (for a multirun job, its job directory).
        config: the resolved config of this run.
        ckpt_path: the run's ``ckpt_path`` (``last``, a path, or None).
        resume: reuse what an earlier run with the same config left in ``run_dir`` (skip or continue it).
    """
    run_dir = Path(run_dir)
    if ckpt_path is not None:  # asked for explicitly: always honoured
        return RerunPlan("resume", resolve_ckpt_path(ckpt_path, run_dir), reason=f"ckpt_path={ckpt_path}")
    saved = None
    if resume and (run_dir / "config.yaml").is_file():
        try:
            saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            saved = None
    if not isinstance(saved, dict):
        return RerunPlan("fresh")
    changed = config_differences(saved, config)
    if changed:
        return RerunPlan("fresh", reason=f"{run_dir} holds a run of another config ({', '.join(changed[:5])} differ)")
    metrics = completed_metrics(run_dir)
    if metrics is not None:
        return RerunPlan("skip", metrics=metrics, reason=f"{run_dir / 'metrics.json'} is complete")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return RerunPlan("resume", str(last), reason=f"an earlier attempt left {last}")
    return RerunPlan("fresh", reason="an earlier attempt left no checkpoint")


def check_resume_checkpoint(
    ckpt_path: str, task: str, label_names: list[str], allow_other_task: bool = False
) -> dict[str, Any]:
    """Read the checkpoint a run resumes from (``weights_only``, so a tampered one is refused with one line, whatever
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says) and refuse one of another task or label set.

    Returns:
        The checkpoint (Lightning reads it again itself, also with ``weights_only=True``).

    Raises:
        FinexpError: the checkpoint is unsafe or unreadable, or it belongs to another task / label set and
            ``allow_other_task`` is false (``model.init_from`` is how a run starts from another task's weights).
    """
    from finexp.runs import load_checkpoint

    path = Path(ckpt_path)
    checkpoint = load_checkpoint(path)
    saved_labels = (checkpoint.get("finexp") or {}).get("label_names")
    saved_task = None
    for directory in (path.parent, path.parent.parent):
        config = directory / "config.yaml"
        if config.is_file():
            try:
                saved = yaml.safe_load(config.read_text())
            except (OSError, yaml.YAMLError):
                saved = None
            saved_task = ((saved or {}).get("task") or {}).get("name") if isinstance(saved, dict) else None
            break
    mismatch = []
    if saved_task is not None and saved_task != task:
        mismatch.append(f"task {saved_task!r}, this run's is {task!r}")
    if saved_labels is not None and list(saved_labels) != list(label_names):
        mismatch.append(f"labels {list(saved_labels)}, this run's are {list(label_names)}")
    if mismatch and not allow_other_task:
        raise FinexpError(
            f"ckpt_path={ckpt_path}: a checkpoint of {' and '.join(mismatch)}; resuming continues the same run. "
            "To start from another task's weights use model.init_from=<ckpt> (or resume_check=false to force it)"
        )
    return checkpoint


def clear_outcome(run_dir: str | Path) -> None:
    """Remove the outcome files of an earlier attempt, so the directory never holds both a failure and a result."""
    for name in ("metrics.json", "error.json"):
        (Path(run_dir) / name).unlink(missing_ok=True)


def tracking_run_id(run_dir: str | Path) -> str:
    """The W&B run id of this run directory: created once, stored in ``<run_dir>/wandb_id.txt``, reused on resume."""
    path = Path(run_dir) / "wandb_id.txt"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(4)  # W&B ids: short, [a-z0-9]
    path.write_text(run_id + "\n")
    return run_id


class RNGStateCheckpoint(pl.Callback):
    """Saves the random number generators' states in every checkpoint and restores them on resume.

    Lightning restores weights, optimizer, scheduler and loop progress but not the RNGs, so dropout in the epochs
    after a resume would draw other masks than an uninterrupted run. With this callback (and
    ``trainer.deterministic=true``) a resumed run ends with the same metrics as one that was never stopped. The
    states are stored as tensors and plain values, so checkpoints still load with ``torch.load(weights_only=True)``.
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["finexp_rng"] = {
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
                "kind": str(kind),
            },
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("finexp_rng")
        if state is None:  # a checkpoint written without this callback: nothing to restore
            return
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
