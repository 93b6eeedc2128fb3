"""A trained run, opened from its run directory: the one place that turns a finexp-train run back into objects.

    run = TrainedRun.open("outputs/credit_scoring/runs/<date>/<time>/checkpoints/best.ckpt")  # or the run directory
    run.require("predict")                # one clear error when the run's problem type cannot do that
    module = run.module()                 # the LightningModule with the checkpoint's weights
    model, tokenizer = run.classifier()   # the bare classifier, in eval mode

``finexp-eval``, ``-predict``, ``-serve``, ``-export``, ``-explain``, ``model.init_from`` and ``distill.teacher`` all
open runs through here. A run directory is data someone may have edited, so opening one:

- reads the checkpoint with ``torch.load(weights_only=True)`` (tensors and plain values; never pickled code);
- reads ``config.yaml`` as plain YAML, refuses interpolations (``${oc.env:...}`` would read the environment) and
  checks every ``_target_`` against :mod:`finexp.targets` before anything is built, naming the file and key;
- merges the config onto the run schema (:class:`finexp.config.TrainConfig` and the group schemas its choices name),
  so a config written by an older finexp gets today's defaults from the schema, and a misspelt key is refused;
- records the SHA-256 of the checkpoint and of the config it trusted (:meth:`TrainedRun.trust_record`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finexp import FinexpError
from finexp.config.lookups import target_of
from finexp.problems import supporting
from finexp.targets import check_targets, iter_targets, verify_class_family

log = logging.getLogger("finexp")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_run_dir(ckpt: Path) -> Path:
    """The run directory of a checkpoint: the nearest parent holding ``config.yaml``."""
    for directory in (ckpt.parent, ckpt.parent.parent):
        if (directory / "config.yaml").is_file():
            return directory
    raise FinexpError(f"{ckpt}: no config.yaml beside it or in its parent; was it written by finexp-train?")


def load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """A finexp/Lightning checkpoint as tensors and plain values (``weights_only=True``, whatever the environment)."""
    import torch

    if not ckpt.is_file():
        raise FinexpError(f"checkpoint not found: {ckpt}")
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling refusal or a corrupt file: both are the user's to fix
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FinexpError(f"{ckpt}: not a loadable finexp checkpoint ({type(err).__name__}: {first})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise FinexpError(f"{ckpt}: not a finexp checkpoint (no state_dict)")
    return checkpoint


def _refuse_interpolations(node: Any, source: Path, key: str = "") -> None:
    if isinstance(node, dict):
        for name, value in node.items():
            _refuse_interpolations(value, source, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_interpolations(value, source, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise FinexpError(
            f"{source}: {key}={node!r} is an interpolation; a saved config is resolved when it is written, so this "
            "file was edited (interpolations are never evaluated from a run directory)"
        )


def _schema(saved: dict[str, Any]) -> DictConfig:
    """The structured schema a saved config merges onto: TrainConfig, with the group schemas its choices name."""
    from finexp import config as schemas

    base = OmegaConf.structured(schemas.TrainConfig)
    privacy = {"dp_sgd": schemas.DPSGDConfig, "label_dp": schemas.LabelDPConfig}
    method = {
        "setfit": schemas.SetFitMethodConfig,
        "prompt": schemas.PromptMethodConfig,
        "generative": schemas.GenerativeMethodConfig,
    }
    name = (saved.get("privacy") or {}).get("name")
    if name in privacy:
        base.privacy = OmegaConf.structured(privacy[name])
    name = (saved.get("method") or {}).get("name")
    if name in method:
        base.method = OmegaConf.structured(method[name])
    for group, options in (("adapter", schemas.ADAPTER_SCHEMAS), ("optimizer", schemas.OPTIMIZER_SCHEMAS)):
        target = (saved.get(group) or {}).get("_target_")
        if target in options:
            setattr(base, group, OmegaConf.structured(options[target]))
    return base


def read_run_config(path: Path) -> DictConfig:
    """A run's ``config.yaml`` as untrusted data: plain YAML, no interpolations, allowed targets, on the schema.

    Raises:
        FinexpError: naming ``path`` and the offending key.
    """
    from finexp.config import validate_config

    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FinexpError(f"{path}: not a readable YAML config ({type(err).__name__})") from err
    if not isinstance(saved, dict):
        raise FinexpError(f"{path}: not a finexp run config (a mapping of groups)")
    _refuse_interpolations(saved, path)
    check_targets(saved, str(path))
    for key, target in iter_targets(saved):  # torch.optim.sgd.torch.load names a family, but is no optimizer
        verify_class_family(target, key, str(path))
    try:
        cfg = OmegaConf.merge(_schema(saved), saved)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err.msg).splitlines()[0]  # OmegaConf appends full_key/object_type lines: keep one line
        raise FinexpError(
            f"{path}: key {key} does not fit finexp's run schema ({type(err).__name__}: {reason})"
        ) from err
    assert isinstance(cfg, DictConfig)
    try:
        validate_config(cfg)
    except FinexpError as err:
        raise FinexpError(f"{path}: {err}") from err
    return cfg


@dataclass
class TrainedRun:
    """A finexp-train run read back from disk: its config (on the schema), records, labels and checkpoint."""

    ckpt: Path
    run_dir: Path
    config: DictConfig
    info: dict[str, Any]
    labels: list[str]  # empty for problem types without classes (generation)
    checkpoint: dict[str, Any] = field(repr=False)
    checkpoint_sha256: str = ""
    config_sha256: str = ""

    @classmethod
    def open(cls, path: str | Path) -> TrainedRun:
        """Open a checkpoint (``.ckpt``) or a run directory (its ``checkpoints/best.ckpt``).

        Raises:
            FinexpError: the checkpoint or its records are missing, unsafe or incomplete (one line naming the file).
        """
        where = Path(path).expanduser().resolve()
        ckpt = where / "checkpoints" / "best.ckpt" if where.is_dir() else where
        if not ckpt.is_file():
            raise FinexpError(f"checkpoint not found: {ckpt}")
        run_dir = find_run_dir(ckpt)
        checkpoint = load_checkpoint(ckpt)
        config_path = run_dir / "config.yaml"
        cfg = read_run_config(config_path)
        info_path = run_dir / "run_info.json"
        try:
            info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        except ValueError as err:
            raise FinexpError(f"{info_path}: not valid JSON ({err})") from err
        if not isinstance(info, dict):
            raise FinexpError(f"{info_path}: not a JSON object")
        labels = (checkpoint.get("finexp") or {}).get("label_names") or info.get("labels")
        if labels is None:  # [] is a run without classes (generation)
            raise FinexpError(f"{ckpt}: holds no label names and {info_path} is missing")
        if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
            raise FinexpError(f"{ckpt}: its label names are not a list of strings")
        if info.get("serialized_columns"):  # serialize new files with exactly the training columns, in order
            cfg.task.feature_columns = list(info["serialized_columns"])
        return cls(ckpt, run_dir, cfg, info, list(labels), checkpoint, file_sha256(ckpt), file_sha256(config_path))

    # ----------------------------------------------------------------------------------------------------------
    @property
    def problem(self) -> str:
        return str(self.config.task.problem)

    @property
    def adapter(self) -> str:
        """The adapter's name (``lora``), from the run's recorded choices or its builder."""
        choices = self.info.get("choices") or {}
        return choices.get("adapter") or (target_of(self.config.adapter) or "?").rsplit(".", 1)[-1]

    @property
    def input_profile(self) -> dict[str, Any] | None:
        """The training rows' input profile (``input_profile.json``; finexp-predict/-serve flag rows outside it)."""
        from finexp.data.profile import load_input_profile

        return load_input_profile(self.run_dir / "input_profile.json")

    def trust_record(self) -> dict[str, str]:
        """What was trusted: the files and their SHA-256 (printed by the entry points and kept in their records)."""
        return {
            "checkpoint": str(self.ckpt),
            "checkpoint_sha256": self.checkpoint_sha256,
            "config": str(self.run_dir / "config.yaml"),
            "config_sha256": self.config_sha256,
        }

    def announce(self, command: str) -> None:
        """Print the hashes of what ``command`` is about to trust (a log line and stdout)."""
        line = (
            f"{command}: trusting {self.ckpt.name} sha256={self.checkpoint_sha256[:16]}… and config.yaml "
            f"sha256={self.config_sha256[:16]}… of {self.run_dir}"
        )
        log.info("%s", line)
        print(line, flush=True)

    def require(self, capability: str) -> None:
        """Stop with one clear line when this run cannot do ``capability`` (``predict``, ``export`` …)."""
        problems = supporting(capability)
        cfg = self.config
        if cfg.model.kind != "transformer":
            raise FinexpError(f"{self.ckpt}: model={cfg.model.name} is a baseline, not a checkpointed transformer")
        if self.problem not in problems:
            raise FinexpError(
                f"{self.ckpt}: task.problem={self.problem!r}; {capability} supports {', '.join(problems)} runs"
            )
        if capability in ("predict", "serve", "export", "teacher", "init_from") and cfg.model.fusion is not None:
            raise FinexpError(f"{self.ckpt}: model.fusion={cfg.model.fusion} runs cannot {capability} yet")
        if capability in ("export", "teacher", "init_from") and cfg.method.name == "prompt":
            raise FinexpError(
                f"{self.ckpt}: method=prompt scores label words through a masked LM; {capability} needs a sequence "
                "classifier (use finexp-eval, -predict or -serve with the checkpoint)"
            )

    # ----------------------------------------------------------------------------------------------------------
    def tokenizer(self) -> Any:
        from finexp import build

        return build.tokenizer_from(self.config)

    def datamodule(
        self,
        tokenizer: Any = None,
        data_path: str | None = None,
        batch_size: int | None = None,
        output_dir: str | None = None,
    ) -> Any:
        """The run's datamodule, prepared: its own splits, or ``data_path`` as the test split (same format).

        ``output_dir``: where the module writes files while tested (NER's entity report), never the training run.
        """
        from finexp import build
        from finexp.data.datamodule import DataSource

        cfg = self.config
        if batch_size:
            cfg.data.eval_batch_size = batch_size
        if output_dir is not None:
            cfg.paths.output_dir = output_dir
        source = DataSource(test_path=data_path) if data_path else None
        datamodule = build.datamodule_from(cfg, tokenizer or self.tokenizer(), source=source, label_names=self.labels)
        datamodule.prepare()
        return datamodule

    def module(self, datamodule: Any = None, tokenizer: Any = None) -> Any:
        """The problem type's LightningModule around the rebuilt model, with the checkpoint's weights.

        ``datamodule``: what the module learnt from the train split (a target's mean/std) comes from the checkpoint,
        so any prepared datamodule of the run will do; None builds a classification module without one.
        """
        from finexp import build
        from finexp.adapters.checkpoint import load_checkpoint_state
        from finexp.problems.classification_training import classification_module

        cfg = self.config
        tokenizer = tokenizer or (datamodule.tokenizer if datamodule is not None else self.tokenizer())
        model = build.model_from(cfg, len(self.labels), tokenizer, self.labels)
        if self.problem == "classification":
            weight = self.checkpoint["state_dict"].get("loss_fn.weight")  # task.class_weights: part of the state
            class_weights = None if weight is None else weight.tolist()
            module = classification_module(model, self.labels, class_weights=class_weights)
        else:
            if datamodule is None:
                raise FinexpError(f"{self.ckpt}: task.problem={self.problem} needs the run's data to rebuild")
            module = build.module_from(cfg, model, datamodule)
        load_checkpoint_state(module, self.checkpoint)  # parameter-efficient checkpoints hold only what trained
        return module

    def classifier(self) -> tuple[Any, Any]:
        """``(model, tokenizer)``: the sequence classifier with the checkpoint's weights, in eval mode."""
        tokenizer = self.tokenizer()
        model = self.module(tokenizer=tokenizer).model
        model.eval()
        return model, tokenizer


# --------------------------------------------------------------------------------------------------------------
# Earlier runs a new run starts from (model.init_from) or learns from (distill.teacher): finexp-train opens them
# here, before it builds anything, so the builders never load runs themselves.
# --------------------------------------------------------------------------------------------------------------
def _classifier_for_init(ckpt: Path) -> tuple[Any, list[str], str]:
    run = TrainedRun.open(ckpt)
    run.require("init_from")
    model, _ = run.classifier()
    return model, run.labels, run.adapter


def initial_weights(path: str) -> Any:
    """``model.init_from``: the encoder and head of an earlier run's checkpoint or of a finexp-export directory."""
    from finexp.models.init_from import read_initial_weights

    return read_initial_weights(path, _classifier_for_init)


@dataclass
class Teacher:
    """``distill.teacher``: a trained classifier, its tokenizer, label order and truncation length."""

    model: Any
    tokenizer: Any
    labels: list[str]
    max_length: int


def open_teacher(path: str | Path) -> Teacher:
    """Open ``distill.teacher`` (a checkpoint) as a :class:`Teacher`."""
    run = TrainedRun.open(path)
    run.require("teacher")
    model, tokenizer = run.classifier()
    return Teacher(model, tokenizer, run.labels, int(run.config.data.max_length))
