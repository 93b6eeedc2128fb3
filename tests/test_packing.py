"""data.packing=true: short prompt/response rows share training sequences without attending to each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import write_qa_jsonl
from finexp.config import ConfigError, validate_config
from finexp.data.ner import IGNORE
from finexp.data.packing import PackedCollator, PackedDataset, pack_rows
from finexp.models.causal_lm import CausalLM
from finexp.train import train


class Rows(torch.utils.data.Dataset):
    """A PromptResponseDataset stand-in: rows of given lengths, labels -100 on the first two tokens."""

    def __init__(self, lengths: list[int], vocab: int = 100, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = [torch.randint(4, vocab, (n,), generator=g) for n in lengths]

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        labels = self.ids[i].clone()
        labels[:2] = IGNORE
        return {"input_ids": self.ids[i], "labels": labels, "index": i}


def test_rows_are_packed_first_fit_decreasing_within_capacity_each_once():
    lengths = [7, 3, 5, 2, 9, 4, 1]
    bins = pack_rows(lengths, capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every row exactly once
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    # longest first, each into the first bin with room: 9+1, 7+3, 5+4, 2 (rows in file order inside a bin)
    assert bins == [[4, 6], [0, 1], [2, 5], [3]]
    assert len(bins) == -(-sum(lengths) // 10)  # 31 tokens: 4 bins is the fewest possible


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_a_packed_row_has_the_logits_it_has_alone(model_type):
    """No cross-attention between packed rows, and positions restart: each row's logits equal its own forward."""
    sizes = {"llama": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}}
    sizes["gpt2"] = {"n_embd": 32, "n_head": 2}
    config = AutoConfig.for_model(model_type, vocab_size=100, num_hidden_layers=2, **sizes[model_type])
    config.update({"bos_token_id": 1, "eos_token_id": 2})
    torch.manual_seed(0)
    model = CausalLM(AutoModelForCausalLM.from_config(config)).eval()
    rows = Rows([5, 3, 7, 6, 2])
    packed = PackedDataset(rows, capacity=10)
    batch = PackedCollator(pad_token_id=0)([packed[i] for i in range(len(packed))])
    assert batch["input_ids"].shape[0] < len(rows)  # something was packed
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        for b, members in enumerate(packed.bins):
            start = 0
            for row in members:
                ids = rows[row]["input_ids"]
                alone = model(ids[None], torch.ones(1, len(ids), dtype=torch.long))[0]
                torch.testing.assert_close(logits[b, start : start + len(ids)], alone, atol=1e-5, rtol=1e-5)
                start += len(ids)


def test_padding_is_its_own_segment_with_no_labels():
    rows = Rows([6, 3])
    packed = PackedDataset(rows, capacity=6)  # two bins: [6] and [3]
    batch = PackedCollator(pad_token_id=0)([packed[0], packed[1]])
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 2]  # row of 3, then 3 pads restarting at 0
    assert batch["labels"][1, 3:].tolist() == [IGNORE] * 3 and batch["attention_mask"][1].tolist() == [1] * 3 + [0] * 3
    assert packed.statistics() == {"rows": 2, "sequences": 2, "capacity": 6, "rows_per_sequence": 1.0, "fill": 0.75}


@pytest.fixture
def qa_jsonl(tmp_path: Path) -> Path:
    return write_qa_jsonl(tmp_path / "qa.jsonl", n=60)  # conftest's rows, 60 of them (its fixture writes 40)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=sentiment", "model=tiny_bert", "data.path=x.csv"], "task.problem=classification"),
        (["task=answer_generation", "model=tiny_llama", "data.path=x.jsonl", "privacy=dp_sgd"], "privacy=dp_sgd"),
        (
            ["task=answer_generation", "model=tiny_llama", "data.path=x.jsonl", "adapter=prompt_tuning"],
            "adapter=prompt",
        ),
    ],
)
def test_packing_is_refused_where_a_row_is_not_read_on_its_own(make_cfg, overrides, message):
    cfg = make_cfg(*overrides, "data.packing=true")
    with pytest.raises(
        ConfigError, match=rf"data\.packing=true cannot be combined with {message}.*data\.packing=false"
    ):
        validate_config(cfg)


def test_a_packed_instruction_tuning_run_learns_the_answers_and_records_the_packing(make_cfg, qa_jsonl):
    cfg = make_cfg(
        "task=answer_generation",
        "model=tiny_llama",
        f"data.path={qa_jsonl}",
        "data.packing=true",
        "data.max_length=64",  # a row is 14-20 tokens: 3-4 rows per sequence
        "data.batch_size=2",
        "trainer.max_epochs=20",
        "optimizer.lr=1e-2",
        "task.generation.num_examples=0",
        "task.generation.max_new_tokens=12",
    )
    metrics = train(cfg)
    packing = json.loads((Path(cfg.paths.output_dir) / "run_info.json").read_text())["packing"]
    assert packing["rows"] == 42 and packing["sequences"] <= 42 // 3 and packing["capacity"] == 64
    # chance: a uniform guess over the 1,491-token vocabulary has loss ln(1491) = 7.3 and ROUGE-L about 0
    assert metrics["val/loss"] < 1.5 and metrics["test/rouge_l"] > 0.6
