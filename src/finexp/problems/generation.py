"""``task.problem=generation``: prompt -> response with a causal LM (answers, summaries)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finexp import FinexpError
from finexp.problems.capabilities import Capabilities, require
from finexp.problems.common import (
    data_source,
    load_options,
    no_initial,
    optimization,
    plain,
    splits_and_batches,
    with_adapter,
)
from finexp.problems.registry import Problem, register

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from finexp.data.datamodule import DataSource
    from finexp.models.init_from import InitialWeights
    from finexp.privacy import PrivacyPlan


def datamodule(
    cfg: DictConfig,
    tokenizer: PreTrainedTokenizerBase,
    source: DataSource | None = None,
    label_names: list[str] | None = None,
    privacy: PrivacyPlan | None = None,
) -> Any:
    """Prompt/response rows (``task.text_column``/``task.label_column``) -> ``[bos] prompt response [eos]``."""
    from finexp.data.generation import GenerationDataModule

    return GenerationDataModule(
        tokenizer,
        data_source(cfg, source),
        prompt_column=cfg.task.text_column,
        response_column=cfg.task.label_column,
        packing=cfg.data.packing,
        **splits_and_batches(cfg),
    )


def model(
    cfg: DictConfig, num_labels: int, tokenizer: PreTrainedTokenizerBase, initial: InitialWeights | None = None
) -> nn.Module:
    """A causal LM with the adapter applied to its transformer; its LM head trains with adapter=full, or when
    ``task.generation.train_lm_head``."""
    from finexp.models.causal_lm import CausalLM, build_causal_lm

    no_initial(initial, "generation")
    m = cfg.model
    lm = build_causal_lm(m.name_or_path, plain(m.architecture), len(tokenizer), m.local_files_only, load_options(cfg))
    wrapped = with_adapter(cfg, CausalLM(lm))
    partial = any(not p.requires_grad for p in wrapped.encoder.parameters())
    if partial and not cfg.task.generation.train_lm_head:
        wrapped.head.requires_grad_(False)  # the adapters always train `head`; for an LM it is the vocabulary
    if not any(p.requires_grad for p in wrapped.parameters()):
        raise FinexpError(
            "nothing trains: this adapter trains only the head, and task.generation.train_lm_head=false keeps the LM "
            "head frozen; set task.generation.train_lm_head=true or choose adapter=lora / full"
        )
    return wrapped


def module(cfg: DictConfig, model: nn.Module, datamodule: Any) -> pl.LightningModule:
    """LM loss on the response tokens; perplexity; sampled answers logged each validation (``generations.txt``)."""
    from finexp.problems.generation_training import GenerationModule

    gen = cfg.task.generation
    return GenerationModule(
        model,
        datamodule.tokenizer,
        datamodule.eos,
        **optimization(cfg),
        max_new_tokens=gen.max_new_tokens,
        do_sample=gen.do_sample,
        temperature=gen.temperature,
        top_k=gen.top_k,
        num_examples=gen.num_examples,
        samples_path=Path(cfg.paths.output_dir) / "generations.txt",
        seed=cfg.seed,
    )


def check(cfg: DictConfig) -> None:
    """``task.generation``: decoding settings."""
    gen = cfg.task.generation
    require(gen.max_new_tokens >= 1, "task.generation.max_new_tokens", gen.max_new_tokens, "must be >= 1")
    require(gen.temperature > 0, "task.generation.temperature", gen.temperature, "must be > 0")
    require(gen.top_k is None or gen.top_k >= 1, "task.generation.top_k", gen.top_k, "must be >= 1 or null")
    require(gen.num_examples >= 0, "task.generation.num_examples", gen.num_examples, "must be >= 0")


PROBLEM = register(
    "generation",
    Problem(
        datamodule=datamodule,
        model=model,
        module=module,
        monitor=lambda num_labels: "val/loss",
        supports=Capabilities(),
        check=check,
    ),
)
