"""finexp-export quantize=int8 / format=onnx: saved forms load back, reproduce the model and are measured."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from conftest import FAST, sentiment_frame, text_task
from finexp import FinexpError
from finexp.config import config_dir
from finexp.export import main as export_main
from finexp.export.compress import CompressOptions, LogitsOnly, check_onnx, load_quantized, onnx_runner
from finexp.export.modeling_finexp import FinexpForSequenceClassification
from finexp.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """One tiny BERT fine-tuned on the sentiment headlines (shared by the tests here: training is the slow part)."""
    root = tmp_path_factory.mktemp("compress")
    csv = root / "headlines.csv"
    sentiment_frame().to_csv(csv, index=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        overrides = [*FAST, *text_task(csv), "trainer.max_epochs=2", "optimizer.lr=3e-3", "data.batch_size=16"]
        cfg = compose(config_name="train", overrides=[*overrides, "data.eval_batch_size=8"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir, cfg.paths.cache_dir = str(root / "run"), str(root), str(root / "cache")
    return train(cfg)["best_checkpoint"]


def _test_batch(out: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)  # the tokenizer needs no model code
    texts = ["ACME shares rally after strong earnings and a raised dividend", "Globex loss widens", "stock cut"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def test_int8_export_loads_back_and_reports_accuracy_size_and_latency(trained, tmp_path, capsys):
    out = tmp_path / "int8"
    export_main([trained, str(out), "quantize=int8", "rounds=1"])
    assert "wrote int8 model" in capsys.readouterr().out
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["rows"] == 32 and summary["quantize"] == "int8"  # the run's test split
    for key in ("test_accuracy", "test_auroc", "rows_per_s", "size_mb", "batch_latency_ms_median"):
        assert f"fp32/{key}" in summary and f"int8/{key}" in summary, key
    assert summary["int8/size_mb"] < summary["fp32/size_mb"]
    assert summary["change/test_accuracy_points"] == pytest.approx(
        100 * (summary["int8/test_accuracy"] - summary["fp32/test_accuracy"])
    )
    assert summary["change/speedup"] > 0 and summary["int8/prediction_agreement"] >= 0.9

    int8 = load_quantized(out)  # from config.json + model.int8.pt only (weights_only load)
    quantized = [m for m in int8.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == 2 * 6 + 2  # 2 blocks x (q, k, v, attention out, intermediate, output), pooler, head
    fp32 = FinexpForSequenceClassification.from_pretrained(out).eval()
    batch = _test_batch(out)
    with torch.no_grad():
        got, expected = int8(**batch).logits, fp32(**batch).logits
    assert summary["int8/max_abs_logit_diff"] > 0  # it is quantized ...
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.1)  # ... and still the same model
    with pytest.raises(FinexpError, match="quantize=int8"):
        load_quantized(tmp_path)


def test_onnx_export_has_dynamic_axes_and_matches_pytorch(trained, tmp_path, capsys):
    out = tmp_path / "onnx"
    export_main([trained, str(out), "format=onnx", "rounds=1"])
    assert "wrote onnx model" in capsys.readouterr().out
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["onnx/max_abs_diff"] <= summary["onnx/tolerance"] == 1e-4
    assert summary["onnx/test_accuracy"] == summary["fp32/test_accuracy"]
    assert summary["onnx/rows_per_s"] > 0 and summary["change/speedup"] > 0

    graph = onnx.load(out / "model.onnx").graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"] and graph.output[0].name == "logits"
    dims = graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param and not d.dim_value for d in dims)  # batch and sequence are symbolic

    fp32 = LogitsOnly(FinexpForSequenceClassification.from_pretrained(out).eval())
    run = onnx_runner(out / "model.onnx")
    batch = _test_batch(out)  # 3 rows, another length than any the export saw, with padding
    batch["attention_mask"][2, -2:] = 0
    with torch.no_grad():
        expected = fp32(batch["input_ids"], batch["attention_mask"])
    assert check_onnx([expected], [run(batch)], tolerance=1e-4) <= 1e-4
    with pytest.raises(FinexpError, match=r"above onnx_tolerance=0\.001"):
        check_onnx([expected], [expected + 0.01], tolerance=1e-3)


def test_bad_export_options_fail_with_the_option_named(trained, tmp_path, capsys):
    for options, message in [
        (["quantize=int4"], "quantize='int4' is not allowed"),
        (["format=onnx", "quantize=int8"], "not supported"),
        (["onnx_tolerance=-1"], "onnx_tolerance=-1.0"),
        (["rounds=x"], "rounds must be a int"),
        (["tolerance=1"], "KEY one of format"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            export_main([trained, str(tmp_path / "x"), *options])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert CompressOptions.parse(["max_rows=5"]).max_rows == 5
