"""The end of a multirun: one line saying which jobs completed, were skipped or failed, and a non-zero exit on failure.

A failed job of a sweep records ``error.json`` in its directory and lets the launcher go on (one bad point must not
end a 60-job sweep), so Hydra alone would finish the sweep with exit code 0. :class:`MultirunSummary`, a Hydra
callback registered in ``conf/hydra/default.yaml``, reads the job directories when the sweep ends, prints

    finexp multirun: 5 completed, 1 skipped (done before), 2 failed (jobs 3, 7: see <job dir>/error.json)

writes ``multirun_summary.json`` into the sweep directory, and ``finexp-train`` then exits with status 1 if a job
failed (``hydra.callbacks.multirun_summary.fail_on_error=false`` keeps exit 0). It reads the directories, not the
launcher's return values, so it works the same for the basic, joblib and SLURM launchers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_FAILED: list[str] = []  # the failed jobs of the last multirun in this process, when fail_on_error


def summarize(sweep_dir: Path, started: float) -> dict[str, Any]:
    """Each job directory's outcome: ``completed`` (metrics.json written since ``started``), ``skipped`` (an older
    metrics.json: a rerun found it done), ``failed`` (error.json) or ``unfinished`` (neither)."""
    jobs: dict[str, list[str]] = {"completed": [], "skipped": [], "failed": [], "unfinished": []}
    if not sweep_dir.is_dir():
        return jobs
    markers = ("config.yaml", "run_info.json", "error.json", "metrics.json")
    directories = [d for d in sweep_dir.iterdir() if d.is_dir() and any((d / m).is_file() for m in markers)]
    for job in sorted(directories, key=lambda d: (len(d.name), d.name)):
        metrics, error = job / "metrics.json", job / "error.json"
        if metrics.is_file():
            jobs["completed" if metrics.stat().st_mtime >= started else "skipped"].append(job.name)
        elif error.is_file():
            jobs["failed"].append(job.name)
        else:
            jobs["unfinished"].append(job.name)
    return jobs


def summary_line(jobs: dict[str, list[str]], sweep_dir: Path) -> str:
    parts = [f"{len(jobs['completed'])} completed", f"{len(jobs['skipped'])} skipped (done before)"]
    if jobs["failed"]:
        parts.append(
            f"{len(jobs['failed'])} failed (job(s) {', '.join(jobs['failed'])}: see {sweep_dir}/<job>/error.json)"
        )
    else:
        parts.append("0 failed")
    if jobs["unfinished"]:
        parts.append(f"{len(jobs['unfinished'])} unfinished ({', '.join(jobs['unfinished'])})")
    return "finexp multirun: " + ", ".join(parts)


class MultirunSummary(Callback):
    """Hydra callback: the multirun's one-line summary, ``multirun_summary.json``, and the exit status."""

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times have coarse resolution on some file systems
        _FAILED.clear()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = summarize(sweep_dir, self.started)
        line = summary_line(jobs, sweep_dir)
        print(line, flush=True)
        if sweep_dir.is_dir():
            (sweep_dir / "multirun_summary.json").write_text(json.dumps(jobs, indent=2) + "\n")
        if self.fail_on_error:
            _FAILED[:] = jobs["failed"]


def failed_jobs() -> list[str]:
    """The failed jobs of the multirun that just ended in this process (empty with ``fail_on_error=false``)."""
    return list(_FAILED)
