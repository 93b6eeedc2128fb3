"""The report's "Reproduce" section: the command lines and package versions behind its runs."""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path

from finexp.runs_table import (
    Run,
)


# ----------------------------------------------------------------------------------------------------------------
# Reproducibility
# ----------------------------------------------------------------------------------------------------------------
def _majority(values: list[str]) -> str:
    return Counter(values).most_common(1)[0][0] if values else ""


def reproduce_section(runs: list[Run], root: Path) -> str:
    """The commands that made the runs, the package versions they ran with, and the runs that are not comparable:
    a code version (git commit, dirty tree) or a test split (fingerprint, per task) other than most runs'."""
    done = [r for r in runs if r.status == "completed"]
    lines = ["## Reproduce", ""]
    commands = Counter(_command_line(r.info["command"]) for r in done if r.info.get("command"))
    if commands:
        lines += ["Commands (as run, with how many runs each made):", "", "```bash"]
        lines += [f"{c}   # {n} run{'s' if n > 1 else ''}" for c, n in commands.most_common()]
        lines += ["```", ""]
    versions: dict[str, Counter] = {}
    for run in done:
        for package, version in (run.info.get("versions") or {}).items():
            versions.setdefault(package, Counter())[str(version)] += 1
    if versions:
        lines += ["| package | version(s) |", "|---|---|"]
        for package in sorted(versions):
            seen = versions[package]
            text = ", ".join(f"{v} ({n} runs)" for v, n in seen.most_common()) if len(seen) > 1 else next(iter(seen))
            lines.append(f"| {package} | {text}{' **differs**' if len(seen) > 1 else ''} |")
        lines.append("")
    flags = []
    code = _majority([r.code_version for r in done])
    for run in done:
        if run.code_version != code:
            flags.append(f"- `{_where(run, root)}`: code version {run.code_version}, most runs {code}")
    for task in sorted({r.task for r in done}):
        members = [r for r in done if r.task == task]
        common = _majority([str(r.test_fingerprint) for r in members])
        for run in members:
            if str(run.test_fingerprint) != common:
                flags.append(
                    f"- `{_where(run, root)}` ({task}): test split fingerprint {run.test_fingerprint}, most runs "
                    f"{common}: not comparable row by row"
                )
    lines.append(
        "Not comparable with the others:"
        if flags
        else "Every run has the same code version and, per task, the same test split."
    )
    lines += ["", *flags] if flags else []
    return "\n".join(lines) + "\n"


def _command_line(argv: list[str]) -> str:
    """``sys.argv`` of a run as a shell command; ``python -m finexp.train`` and ``.../train.py`` read finexp-train."""
    argv = [str(a) for a in argv]
    if argv and Path(argv[0]).name in ("train.py", "finexp-train", "__main__.py"):
        argv = ["finexp-train", *argv[1:]]
    return " ".join(shlex.quote(a) for a in argv)


def _where(run: Run, root: Path) -> str:
    return str(run.path.relative_to(root) if run.path.is_relative_to(root) else run.path)
