"""Every point of every ``conf/experiment/*.yaml`` sweep composes and passes finexp's validation, as each job of
``finexp-train -m experiment=<name>`` would: a combination the sweep asks for but finexp rejects (a privacy mechanism
with an adapter it cannot clip, a method a task does not support) fails here, not hours into the sweep.

The points are ``hydra.sweeper.params`` expanded as Hydra's basic sweeper does (the cartesian product of each
parameter's values); an experiment without sweep parameters is one point.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from finexp.config import config_dir, validate_config
from test_configs import NEEDS, _check_targets

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))
# What a user adds on the command line before the sweep can run (each experiment's header shows the command).
COMMAND_LINE = {
    "few_shot_curve": ["task=sentiment", "data.path=sent_train.csv"],
    "encoder_vs_llm": ["data.path=sent_train.csv"],  # task=tfns: a local copy of its CSV
    "fingpt_sentiment": ["data.path=sent_train.csv"],
}


def sweep_points(params: dict[str, object] | None) -> list[list[str]]:
    """``hydra.sweeper.params`` -> one list of overrides per job, in the basic sweeper's order."""
    if not params:
        return [[]]
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    axes = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    return [list(point) for point in itertools.product(*axes)]


def test_sweep_points_are_the_product_of_the_values():
    points = sweep_points({"adapter": "full,lora", "data.k_shot": "8,null", "seed": 3})
    assert points == [
        ["adapter=full", "data.k_shot=8", "seed=3"],
        ["adapter=full", "data.k_shot=null", "seed=3"],
        ["adapter=lora", "data.k_shot=8", "seed=3"],
        ["adapter=lora", "data.k_shot=null", "seed=3"],
    ]
    assert sweep_points(None) == [[]] and sweep_points({}) == [[]]


def _assert_applied(cfg: DictConfig, point: list[str]) -> None:
    """Each override of the point reached the composed config: a group's choice, or a value."""
    choices = cfg.hydra.runtime.choices
    for override in OverridesParser.create().parse_overrides(point):
        key, value = override.get_key_element().lstrip("+~"), override.value()  # +group=x appends a group
        if key in choices:
            assert choices[key] == value, f"{key}: chose {choices[key]}, not {value}"
        else:
            assert OmegaConf.select(cfg, key) == value, f"{key}={OmegaConf.select(cfg, key)}, not {value}"


def sweep_of(base: list[str]) -> list[list[str]]:
    """The points of the sweep that ``finexp-train -m <base>`` runs (call inside an initialised Hydra)."""
    swept = compose(config_name="train", overrides=base, return_hydra_config=True)
    return sweep_points(OmegaConf.to_container(swept.hydra.sweeper, resolve=False).get("params"))


def one_seed(points: list[list[str]]) -> list[list[str]]:
    """The points of the first swept seed: a seed changes no composition or check, so it stands for the others."""
    seeds = [o for p in points for o in p if o.startswith("seed=")]
    return [p for p in points if not seeds or seeds[0] in p]


def failing_points(base: list[str], points: list[list[str]], tmp_path: Path) -> list[str]:
    """Compose and validate each job ``base + point`` as finexp-train would; one line per point that fails."""
    failures = []
    for point in points:
        try:
            cfg = compose(config_name="train", overrides=[*base, *point], return_hydra_config=True)
            _assert_applied(cfg, point)
            with open_dict(cfg):  # what the job sees, writing under tmp_path (as conftest's make_cfg)
                del cfg["hydra"]
                cfg.paths.log_dir, cfg.paths.output_dir = str(tmp_path / "outputs"), str(tmp_path / "run")
                cfg.paths.cache_dir = str(tmp_path / "cache")
            OmegaConf.resolve(cfg)
            validate_config(cfg)
            assert _check_targets(cfg) >= 4  # trainer, optimizer, scheduler, adapter at least
        except Exception as err:  # collect every failing point, then report them together
            failures.append(f"{' '.join(point) or '(no sweep)'}: {type(err).__name__}: {err}")
    return failures


@pytest.fixture
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_point_of_the_experiment_sweep_composes_and_validates(experiment, hydra_conf, tmp_path):
    base = [f"experiment={experiment}", *NEEDS.get(("experiment", experiment), []), *COMMAND_LINE.get(experiment, [])]
    points = one_seed(sweep_of(base))
    failures = failing_points(base, points, tmp_path)
    assert not failures, f"experiment={experiment}: {len(failures)} of {len(points)} points fail:\n" + "\n".join(
        failures
    )


def test_the_sweep_of_an_experiment_is_read_and_a_rejected_point_is_named(hydra_conf, tmp_path):
    points = sweep_of(["experiment=privacy_tradeoff"])
    assert len(points) == 2 * 5 * 3 and ["privacy=label_dp", "privacy.epsilon=inf", "seed=3"] in points
    assert sweep_of(["experiment=smoke"]) == [[]]
    failures = failing_points(["experiment=smoke"], [["seed=1"], ["optimizer.lr=-1"]], tmp_path)
    assert len(failures) == 1 and failures[0].startswith("optimizer.lr=-1: ConfigError: ")
    assert "optimizer.lr=-1.0 is not allowed: must be > 0" in failures[0]
