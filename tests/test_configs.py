"""Every config file composes, every _target_ resolves, and bad configs are rejected with a message naming the key."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from finexp.config import ConfigError, config_dir, validate_config
from finexp.problems import capability_table

CONF = Path(config_dir())
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
# Options that need a value from the user before they can run (documented in each file).
NEEDS = {
    ("task", "text_classification"): ["data.path=x.csv"],
    ("task", "table_classification"): ["data.path=x.csv", "task.label_column=y"],
    ("task", "sentiment"): ["data.path=x.csv"],
    ("task", "intent"): ["data.path=x.csv"],
    ("task", "ner"): ["data.path=x.conll"],
    ("task", "answer_generation"): ["data.path=x.jsonl", "model=tiny_gpt"],
    ("task", "compliance_review"): ["data.path=x.csv"],
    ("task", "complaint_tags"): ["data.path=x.csv"],
    ("task", "fpb"): ["data.path=x.csv"],  # standard datasets: a local copy
    ("task", "fpb_allagree"): ["data.path=x.csv"],  # standard datasets: a local copy
    ("task", "tfns"): ["data.path=x.csv"],  # standard datasets: a local copy
    ("task", "banking77"): ["data.path=x.csv"],  # standard datasets: a local copy
    ("task", "fiqa_sa"): ["data.path=x.csv"],  # standard datasets: a local copy
    ("task", "fiqa_sa_3class"): ["data.path=x.csv"],  # standard datasets: a local copy
    ("task", "finer_ord"): ["data.path=x.conll"],  # standard datasets: a local copy
    ("task", "german_credit"): ["data.path=x.csv"],  # standard datasets: a local copy
    ("model", "hf"): ["model.name_or_path=some/model"],
    ("experiment", "distill"): ["distill.teacher=teacher.ckpt"],
    ("experiment", "encoder_vs_llm"): ["data.path=x.csv"],  # task=tfns: a local copy
    ("experiment", "fingpt_sentiment"): ["data.path=x.csv"],
    ("contender", "llm_lora"): ["task=tfns", "data.path=x.csv"],  # generative: the task's label words
    ("contender", "llm_qlora"): ["task=tfns", "data.path=x.csv"],
    ("method", "prompt"): ["method.verbalizer={no:bad,yes:good}"],
}
# Options that need a package finexp does not install (checked by validate_config before anything is built).
PACKAGES = {("trainer", "deepspeed"): "deepspeed", ("trainer", "deepspeed_zero3"): "deepspeed"}
# Groups finexp-train does not compose: the entry points that do (tests/test_rules.py builds their rules).
OTHER_ENTRY_POINTS = {"rules": ("predict", ["ckpt=x.ckpt", "input=x.csv"])}


def _resolve_target(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_targets(node: object, where: str = "") -> int:
    """Every ``_target_`` imports and accepts the keys given next to it; returns how many were checked."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    checked = 0
    if isinstance(node, dict):
        if "_target_" in node:
            target = _resolve_target(node["_target_"])
            keys = [k for k in node if not str(k).startswith("_")]
            signature = inspect.signature(target)
            takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            unknown = [k for k in keys if k not in signature.parameters and not takes_kwargs]
            assert not unknown, f"{where}: {node['_target_']} does not accept {unknown}"
            checked += 1
        for key, value in node.items():
            checked += _check_targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            checked += _check_targets(value, f"{where}[{i}]")
    return checked


def test_every_group_has_files():
    expected = {
        "task",
        "model",
        "adapter",
        "optimizer",
        "scheduler",
        "privacy",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "experiment",
        "debug",
    }
    assert expected <= set(GROUPS)
    assert (CONF / "hydra" / "default.yaml").is_file()


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_file_composes(make_cfg, group, option):
    if group in OTHER_ENTRY_POINTS:
        config_name, needs = OTHER_ENTRY_POINTS[group]
        cfg = make_cfg(f"{group}={option}", *needs, config_name=config_name, fast=False)
        OmegaConf.resolve(cfg)
        assert cfg[group].name == option
        return
    cfg = make_cfg(f"{group}={option}", *NEEDS.get((group, option), []), fast=False)
    OmegaConf.resolve(cfg)  # every interpolation resolves (package paths, monitors, ...)
    package = PACKAGES.get((group, option))
    if package and importlib.util.find_spec(package) is None:  # rejected up front, naming the package
        with pytest.raises(ConfigError, match=f"pip install {package}"):
            validate_config(cfg)
    else:
        validate_config(cfg)
    assert _check_targets(cfg) >= 4  # trainer, optimizer, scheduler, adapter at least


def test_eval_config_composes(make_cfg):
    cfg = make_cfg("ckpt_path=some.ckpt", config_name="eval", fast=False)
    OmegaConf.resolve(cfg)
    assert cfg.trainer.logger is False
    _check_targets(cfg)


def test_default_is_credit_scoring_with_minilm(make_cfg):
    cfg = make_cfg(fast=False)
    assert (cfg.task.name, cfg.model.name, cfg.data.rdataset) == (
        "credit_scoring",
        "minilm",
        "modeldata/credit_data",
    )
    assert Path(cfg.model.name_or_path, "model.safetensors").is_file()  # the packaged weights
    assert cfg.logger.wandb.offline is True and "csv" in cfg.logger


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ("task.lable_column=Status", ConfigCompositionException),  # misspelt key
        ("data.batch_size=lots", ConfigCompositionException),  # wrong type
        ("adapter.train_embeddings=maybe", ConfigCompositionException),
        ("optimizer.learning_rate=1e-3", ConfigCompositionException),
        ("adapter=lorra", MissingConfigException),  # unknown option
        ("model.pooling=max", ConfigCompositionException),  # not one of a closed set (an Enum field)
        ("model.quantization=3bit", ConfigCompositionException),
        ("model.dtype=float8", ConfigCompositionException),
    ],
)
def test_composition_rejects(make_cfg, override, error):
    with pytest.raises(error) as info:
        make_cfg(override)
    cause = info.value.__cause__ or info.value
    key = override.split("=")[0]
    assert key.split(".")[-1] in str(info.value) + str(cause)
    if isinstance(cause, (ConfigKeyError, ValidationError)):
        assert "TaskConfig" in str(cause) or "Config" in str(cause)


def test_a_closed_set_names_its_values_at_composition(make_cfg):
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg("model.pooling=max")
    assert "Invalid value 'max', expected one of [mean, cls, last]" in str(info.value.__cause__)
    cfg = make_cfg("model.pooling=last", "model.quantization=4bit", "model.dtype=bfloat16")
    assert cfg.model.pooling == "last" and f"{cfg.model.quantization}/{cfg.model.dtype}" == "4bit/bfloat16"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 is not allowed: must be > 0"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed: must be >= 1"),
        (["task.problem=ranking"], "task.problem='ranking' is not allowed: choose one of classification"),
        (["data.val_size=0.5", "data.test_size=0.5"], "data.val_size + data.test_size=1.0"),
        (["task=text_classification"], "set data.path=FILE"),
        (["data.path=x.csv"], "give exactly one of data.rdataset, data.path, data.train_path"),
        (["task=table_classification", "data.path=x.csv"], "task.label_column must be set"),
        (["model=hf"], "model.name_or_path must be set"),
        (["task.class_weights=inverse"], "task.class_weights='inverse' is not allowed"),
    ],
)
def test_validation_names_the_key(make_cfg, overrides, message):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=None) as info:
        validate_config(cfg)
    assert message in str(info.value)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "finexp.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_help_lists_groups_and_examples(tmp_path):
    result = _cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in (
        "adapter: bottleneck, freeze, full, ia3, lora, prefix_tuning, prompt_tuning, top_layers",
        "task: " + ", ".join(sorted(p.stem for p in (CONF / "task").glob("*.yaml"))),  # every task file, listed
        "trainer: auto, cpu, ddp, ddp_cpu, deepspeed, deepspeed_zero3, fsdp, gpu",
        "finexp-train -m seed=1,2,3",
    ):
        assert text in result.stdout
    assert capability_table() in result.stdout  # the capability table, from the registered problem types
    assert "| `generation` | transformer | none |" in result.stdout


def test_cfg_job_prints_composed_config(tmp_path):
    result = _cli("--cfg", "job", "adapter=freeze", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = OmegaConf.create(result.stdout)
    assert cfg.adapter._target_ == "finexp.adapters.freeze_encoder"
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing
