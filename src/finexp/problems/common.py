"""Pieces several problem types build from the config: data sources, batching, adapters, optimizers, privacy.

Heavy packages (torch, transformers, the datamodules) are imported inside the functions, so importing a problem
module (which ``finexp.config`` does, for the capability table) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from finexp import FinexpError
from finexp.config.lookups import trainer_setting
from finexp.problems.capabilities import ConfigError
from finexp.targets import instantiate

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from finexp.data.augment import Augmenter
    from finexp.data.batching import Batching
    from finexp.data.datamodule import DataSource
    from finexp.data.few_shot import SamplingPolicy
    from finexp.models.backbone import LoadOptions
    from finexp.models.init_from import InitialWeights
    from finexp.privacy import PrivacyPlan


def plain(node: Any) -> Any:
    """OmegaConf containers -> Python containers (peft/transformers treat ListConfig differently from list)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def data_source(cfg: DictConfig, source: DataSource | None = None) -> DataSource:
    """``source`` (``finexp-eval data_path=...``), else the config's ``data.rdataset/path/train_path/...``."""
    from finexp.data.datamodule import DataSource

    data = cfg.data
    hf = None
    if source is None and data.get("hf_dataset"):
        from finexp.data.sources import HFSource

        columns = plain(data.get("hf_columns")) or {}
        hf = HFSource(data.hf_dataset, data.get("hf_config"), data.get("hf_split"), data.get("hf_revision"), columns)
    return source or DataSource(data.rdataset, data.path, data.train_path, data.val_path, data.test_path, hf)


def splits_and_batches(cfg: DictConfig) -> dict[str, Any]:
    """The ``data.*`` settings every file-reading datamodule shares: split sizes and seed, truncation, batching."""
    data = cfg.data
    return {
        "val_size": data.val_size,
        "test_size": data.test_size,
        "split_seed": data.split_seed,
        "max_length": data.max_length,
        "batching": batching_from(cfg),
    }


def batching_from(cfg: DictConfig) -> Batching:
    """``data.batch_size/eval_batch_size/group_by_length/num_workers/pin_memory`` and ``seed``, with ``auto``
    workers and pinned memory resolved for ``trainer.accelerator`` (CUDA: on; CPU: off)."""
    from finexp.data.batching import build_batching

    data, trainer = cfg.data, cfg.trainer
    devices = trainer_setting(trainer, "devices")
    return build_batching(
        data.batch_size,
        data.eval_batch_size,
        data.group_by_length,
        cfg.seed,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        accelerator=str(trainer_setting(trainer, "accelerator")),
        processes_per_node=devices if isinstance(devices, int) and devices > 0 else 1,
    )


# The dtype each Lightning precision trains in: ``model.dtype=auto`` loads the weights in it. Mixed precision keeps
# fp32 master weights (autocast computes in half precision); ``*-true`` trains the weights in that dtype itself.
PRECISION_DTYPES = {
    "32-true": "float32",
    "32": "float32",
    "bf16-mixed": "float32",
    "16-mixed": "float32",
    "bf16-true": "bfloat16",
    "16-true": "float16",
    "64-true": "float32",
}


def weights_dtype(cfg: DictConfig) -> str:
    """``model.dtype``, with ``auto`` resolved from ``trainer.precision`` (never the checkpoint's own dtype: a bf16
    checkpoint under ``32-true`` would otherwise train in pure bf16 with no fp32 master copy)."""
    dtype = str(cfg.model.dtype)
    if dtype != "auto":
        return dtype
    return PRECISION_DTYPES.get(str(trainer_setting(cfg.trainer, "precision")), "float32")


def load_options(cfg: DictConfig) -> LoadOptions:
    """How ``cfg.model``'s weights load (:class:`finexp.models.backbone.LoadOptions`)."""
    from finexp.models.backbone import LoadOptions

    m = cfg.model
    attention = str(m.attn_implementation)
    return LoadOptions(
        dtype=weights_dtype(cfg),
        # sdpa: transformers' own choice (sdpa where the architecture has it, else eager); others are asked for
        attn_implementation=None if attention == "sdpa" else attention,
        gradient_checkpointing=bool(m.gradient_checkpointing),
        quantization=str(m.quantization) if m.quantization is not None else None,
        revision=m.revision,
    )


def encoder(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """The backbone of ``cfg.model`` (pretrained, or random from ``model.architecture``)."""
    from finexp.models.backbone import build_encoder

    m = cfg.model
    return build_encoder(m.name_or_path, plain(m.architecture), len(tokenizer), m.local_files_only, load_options(cfg))


def with_adapter(cfg: DictConfig, model: nn.Module) -> nn.Module:
    """``model`` in training mode with ``cfg.adapter`` applied (what trains is decided here)."""
    model.train()  # from_pretrained returns eval mode; Lightning keeps modes as it finds them (dropout would be off)
    return instantiate(cfg.adapter)(model)


def optimization(cfg: DictConfig) -> dict[str, Any]:
    """A module's ``optimizer`` and ``scheduler`` factories (``conf/optimizer``, ``conf/scheduler``).

    Raises:
        ConfigError: ``optimizer.lr`` is still null: the recipe settles it once the train split is known
            (:func:`finexp.recipe.settle`, which finexp-train runs before it builds the model).
    """
    if cfg.optimizer.lr is None:
        raise ConfigError(
            "optimizer.lr is null: recipe=auto picks it once the data is known (finexp.recipe.settle(cfg, "
            "datamodule), as finexp-train does); settle the config first or set optimizer.lr"
        )
    return {
        "optimizer": instantiate(cfg.optimizer),
        "scheduler": instantiate(cfg.scheduler),
    }


def class_weights(mode: str | None, counts: list[int]) -> list[float] | None:
    """``balanced``: weight_c = n / (k * n_c), as scikit-learn defines it."""
    if mode is None:
        return None
    total, k = sum(counts), len(counts)
    return [total / (k * max(1, c)) for c in counts]


def fusion_columns(cfg: DictConfig) -> list[str]:
    """``model.fusion=concat``: the numeric columns fused with the text (``task.numeric_columns``); else none."""
    if cfg.model.fusion is None:
        return []
    hybrid = cfg.task.hybrid  # task.hybrid.gbm_score: boosting's cross-fitted score is one more fused column
    return list(plain(cfg.task.numeric_columns) or []) + ([hybrid.column] if hybrid.gbm_score else [])


def no_initial(initial: InitialWeights | None, problem: str) -> None:
    """Refuse ``model.init_from`` weights for a problem type whose model cannot start from a sequence classifier."""
    if initial is not None:
        raise FinexpError(f"model.init_from seeds sequence classifiers; task.problem={problem} cannot start from one")


def augmenter_from(cfg: DictConfig) -> Augmenter | None:
    """The training-split augmentation of ``data.augment`` (None when ``copies`` is 0)."""
    from finexp.data.augment import Augmenter, load_synonyms

    augment = cfg.data.augment
    if not augment.copies:
        return None
    return Augmenter(
        copies=augment.copies,
        ops=list(augment.ops),
        probability=augment.probability,
        synonyms=load_synonyms(augment.synonyms),
        jitter_scale=augment.jitter_scale,
        seed=augment.seed,
    )


def sampling_from(cfg: DictConfig) -> SamplingPolicy:
    """The few-shot / reduced-data policy (``data.k_shot``, ``train_fraction``, ``train_size``, ``k_shot_seed``).

    Sampling is stratified by class for the problem types with single-label classes (those supporting k-shot).
    """
    from finexp.data.few_shot import SamplingPolicy
    from finexp.problems.registry import get_problem

    data = cfg.data
    return SamplingPolicy(
        k_shot=data.k_shot,
        train_fraction=data.train_fraction,
        train_size=data.train_size,
        seed=data.k_shot_seed,
        by_class=get_problem(cfg.task.problem).supports.k_shot,
    )


def privacy_from(cfg: DictConfig) -> PrivacyPlan:
    """The run's privacy pieces (``conf/privacy``): PII masker, label randomizer, DP-SGD callback."""
    from finexp.privacy import build_privacy

    return build_privacy(seed=cfg.seed, label_column=cfg.task.label_column, **plain(cfg.privacy))
