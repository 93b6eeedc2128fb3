"""W&B sweeps driving finexp-train: the command an agent runs for a set of sweep parameters.

``wandb agent`` fills the sweep YAML's ``command:`` template (``${env}``, ``${program}``, ``${args_no_hyphens}``, …)
with the parameters W&B chose and runs it. :func:`agent_command` does the same with W&B's own functions, so a sweep
file can be checked without an account: ``python -m finexp.sweeps scripts/wandb_sweep.yaml`` prints the command for
the first value of every parameter.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import yaml

from finexp import FinexpError


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read a W&B sweep YAML.

    Raises:
        FinexpError: when the file is missing or has no ``parameters`` / ``command``.
    """
    path = Path(path)
    if not path.is_file():
        raise FinexpError(f"{path}: no such sweep file")
    sweep = yaml.safe_load(path.read_text())
    for key in ("parameters", "command"):
        if not isinstance(sweep, dict) or not sweep.get(key):
            raise FinexpError(f"{path}: a finexp sweep needs `{key}:`")
    return sweep


def example_parameters(sweep: dict[str, Any]) -> dict[str, Any]:
    """One value per swept parameter: the first listed value, or the lower bound of a distribution."""
    chosen = {}
    for name, spec in sweep["parameters"].items():
        if "value" in spec:
            chosen[name] = spec["value"]
        elif "values" in spec:
            chosen[name] = spec["values"][0]
        elif "min" in spec:
            chosen[name] = spec["min"]
        else:
            raise FinexpError(f"sweep parameter {name!r} has no value, values or min")
    return chosen


def agent_command(sweep: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """The argv ``wandb agent`` runs for ``parameters`` (expanded with wandb's own macro functions)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    variables = create_sweep_command_args({"args": {k: {"value": v} for k, v in parameters.items()}})
    # a W&B sweep file, not finexp's config: W&B's spec makes `program` optional (a command that names no ${program})
    variables |= {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [str(sweep.get("program", ""))]}
    argv: list[str] = []
    for chunk in create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += [str(v) for v in variables.get(chunk[2:-1], [])]
        else:
            argv.append(chunk)
    return argv


def main() -> None:
    """``python -m finexp.sweeps SWEEP.yaml``: print the command an agent would run first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a W&B sweep YAML, e.g. scripts/wandb_sweep.yaml")
    args = parser.parse_args()
    sweep = load_sweep(args.sweep)
    print(shlex.join(agent_command(sweep, example_parameters(sweep))))


if __name__ == "__main__":
    main()
