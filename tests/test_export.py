"""finexp-export: every layout loads with the ecosystem's own libraries (no finexp, no remote code) and reproduces the
checkpoint's logits; the model card parses and holds the test metrics; push_to_hub stops before any work offline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from sentence_transformers import SentenceTransformer

from conftest import text_task
from finexp.export import load_classifier
from finexp.export import main as export_main
from finexp.train import train

QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "optimizer.lr=1e-2"]
TEXTS = ["ACME shares rally after strong earnings", "Globex loss widens as sales fall", "Initech dividend cut"]


def _train(make_cfg, csv: Path, *overrides: str) -> str:
    return train(make_cfg(*text_task(csv), *QUICK, *overrides))["best_checkpoint"]


def checkpoint_logits(ckpt: str, texts: list[str]) -> torch.Tensor:
    """What finexp itself computes from the checkpoint (the reference every export must reproduce)."""
    model, tokenizer, _, _ = load_classifier(ckpt)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> str:
    """A LoRA run on tiny BERT (random base: no name loads it) with model.license set, shared by the tests below."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from conftest import FAST, sentiment_frame
    from finexp.config import config_dir

    root = tmp_path_factory.mktemp("lora")
    csv = root / "headlines.csv"
    sentiment_frame().to_csv(csv, index=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        overrides = [*FAST, *text_task(csv), *QUICK, "adapter=lora", "model.license=apache-2.0"]
        cfg = compose(config_name="train", overrides=overrides)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir, cfg.paths.cache_dir = str(root / "run"), str(root), str(root / "cache")
    return train(cfg)["best_checkpoint"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["adapter=lora", "adapter.target_modules=[query,value,dense]"],
        ["adapter=full", "model.pooling=cls", "task.class_weights=balanced"],
        ["adapter=full", "model=tiny_gpt"],
    ],
    ids=["lora-bert-mean", "full-bert-cls", "full-gpt2-last"],
)
def test_merged_export_is_a_sentence_transformers_dir_with_the_checkpoints_logits(
    make_cfg, sentiment_csv, tmp_path, capsys, overrides
):
    ckpt = _train(make_cfg, sentiment_csv, *overrides)
    out = tmp_path / "exported"
    export_main([ckpt, str(out)])
    printed = capsys.readouterr().out
    assert "as sentence-transformers (no remote code needed)" in printed
    names = {p.name for p in out.iterdir()}
    assert {"modules.json", "1_Pooling", "2_Dense", "config.json", "model.safetensors", "README.md"} <= names
    assert not any(p.suffix == ".py" for p in out.rglob("*"))  # nothing to execute ships with the export
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["id2label"] == {"0": "bearish", "1": "bullish"}
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["layout"] == "sentence-transformers" and summary["trust_remote_code"] is False

    model = SentenceTransformer(str(out), device="cpu", trust_remote_code=False)
    got = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(got, checkpoint_logits(ckpt, TEXTS), atol=1e-5, rtol=1e-5)
    assert not any("lora_" in k for k in model.state_dict())  # merged, not wrapped


LOAD_PEFT = textwrap.dedent(
    """
    import sys, json, torch
    from pathlib import Path
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    out, texts = Path(sys.argv[1]), json.loads(sys.argv[2])
    encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(out / "base"), out / "adapter").eval()
    head = load_file(out / "head.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    logits = ((hidden * mask).sum(1) / mask.sum(1)) @ head["weight"].T + head["bias"]
    assert not any(name.split(".")[0] == "finexp" for name in sys.modules), "finexp was imported"
    print(json.dumps(logits.tolist()))
    """
)


def test_peft_export_loads_with_peft_alone_and_gives_the_checkpoints_logits(lora_run, tmp_path, capsys):
    out = tmp_path / "peft"
    export_main([lora_run, str(out), "format=peft"])
    assert "as peft (no remote code needed)" in capsys.readouterr().out
    adapter = out / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert (adapter / "adapter_model.safetensors").stat().st_size < (out / "base" / "model.safetensors").stat().st_size
    assert json.loads((out / "head.json").read_text())["pooling"] == "mean"

    result = subprocess.run(
        [sys.executable, "-c", LOAD_PEFT, str(out), json.dumps(TEXTS)], capture_output=True, text=True, check=True
    )
    got = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, checkpoint_logits(lora_run, TEXTS), atol=1e-5, rtol=1e-5)


def test_peft_export_with_a_hub_base_writes_only_the_reference(lora_run, tmp_path):
    out = tmp_path / "peft-ref"
    export_main([lora_run, str(out), "format=peft", "base_model=google-bert/bert-base-uncased"])
    assert not (out / "base").exists()
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "google-bert/bert-base-uncased"
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "google-bert/bert-base-uncased" and card.data.library_name == "peft"


def test_model_card_parses_and_holds_the_test_metrics_and_license(lora_run, tmp_path):
    out = tmp_path / "card"
    export_main([lora_run, str(out)])
    card = ModelCard.load(out / "README.md")
    metrics = json.loads((Path(lora_run).parents[1] / "metrics.json").read_text())
    expected = {k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/")}
    assert expected and {r.metric_type: r.metric_value for r in card.data.eval_results} == pytest.approx(expected)
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert card.data.license == "apache-2.0"  # model.license from the run's config
    assert card.data.library_name == "sentence-transformers" and card.data.pipeline_tag == "text-classification"
    assert card.data.datasets == ["headlines"] and "finexp" in card.data.tags
    assert "SentenceTransformer(" in card.text  # how to load it, in the body
    override = tmp_path / "card-mit"
    export_main([lora_run, str(override), "license=mit"])
    assert ModelCard.load(override / "README.md").data.license == "mit"


def test_push_to_hub_offline_or_logged_out_stops_before_any_work(lora_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pushed"
    with pytest.raises(SystemExit) as exit_info:  # conftest sets HF_HUB_OFFLINE=1
        export_main([lora_run, str(out), "push_to_hub=me/credit-model"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "push_to_hub=me/credit-model: this machine is offline (HF_HUB_OFFLINE is set)" in err
    assert not out.exists()

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(SystemExit) as exit_info:
        export_main([lora_run, str(out), "push_to_hub=me/credit-model"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not logged in to the Hugging Face Hub" in err and "hf auth login" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        export_main([lora_run, str(out), "push_to_hub=not a repo"])
    assert "is not a Hugging Face repo id" in capsys.readouterr().err


def test_prompt_tuning_is_saved_in_peft_format_with_the_reason(make_cfg, sentiment_csv, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModel

    ckpt = _train(make_cfg, sentiment_csv, "adapter=prompt_tuning", "adapter.num_virtual_tokens=4")
    out = tmp_path / "exported"
    export_main([ckpt, str(out)])
    assert "cannot be merged" in capsys.readouterr().out
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(out / "base"), out / "adapter")
    assert peft_model.active_peft_config.num_virtual_tokens == 4
    head = json.loads((out / "head.json").read_text())
    assert head["pooling"] == "mean" and head["virtual_tokens"] == 4
    with pytest.raises(SystemExit):
        export_main([ckpt, str(tmp_path / "onnx"), "format=onnx"])
    assert "format=onnx needs a model merged" in capsys.readouterr().err


def test_bottleneck_export_restores_the_plain_base_and_says_it_needs_finexp(make_cfg, sentiment_csv, tmp_path, capsys):
    from transformers import AutoModel

    ckpt = _train(make_cfg, sentiment_csv, "adapter=bottleneck", "adapter.variant=pfeiffer")
    out = tmp_path / "exported"
    export_main([ckpt, str(out)])
    assert "no standard transformers/peft form" in capsys.readouterr().out
    assert AutoModel.from_pretrained(out / "base").config.model_type == "bert"
    assert (out / "adapter" / "bottleneck.safetensors").is_file()
    assert json.loads((out / "adapter" / "bottleneck.json").read_text())["variant"] == "pfeiffer"
    with pytest.raises(SystemExit):
        export_main([ckpt, str(tmp_path / "p"), "format=peft"])
    assert "is not a peft adapter" in capsys.readouterr().err


def test_export_of_a_missing_checkpoint_fails_cleanly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(tmp_path / "nope.ckpt"), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "finexp-export: error: checkpoint not found" in capsys.readouterr().err
