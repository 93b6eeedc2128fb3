"""finexp-export format=onnx [quantize=int8]: the ONNX forms run in ONNX Runtime, reproduce the exported model within
their tolerances and are measured against fp32 PyTorch on the run's test split."""

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
from finexp.export.compress import check_logits, onnx_runner
from finexp.export.layouts import ExportedClassifier
from finexp.export.options import ExportOptions
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

    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    texts = ["ACME shares rally after strong earnings and a raised dividend", "Globex loss widens", "stock cut"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))  # 3 rows, a length no export saw, padding
    batch["attention_mask"][2, -2:] = 0
    return batch


def test_onnx_export_has_dynamic_axes_and_matches_pytorch(trained, tmp_path, capsys):
    out = tmp_path / "onnx"
    export_main([trained, str(out), "format=onnx", "rounds=1"])
    assert "as sentence-transformers (no remote code needed)" in capsys.readouterr().out
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["rows"] == 32  # the run's test split
    assert summary["onnx/max_abs_logit_diff"] <= summary["onnx/tolerance"] == 1e-4
    assert summary["onnx/test_accuracy"] == summary["fp32/test_accuracy"]
    assert summary["onnx/rows_per_s"] > 0 and summary["change/onnx/speedup"] > 0
    assert not (out / "model.int8.onnx").exists()

    graph = onnx.load(out / "model.onnx").graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"] and graph.output[0].name == "logits"
    dims = graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param and not d.dim_value for d in dims)  # batch and sequence are symbolic

    fp32 = ExportedClassifier.from_dir(out)
    batch = _test_batch(out)
    with torch.no_grad():
        expected = fp32(batch["input_ids"], batch["attention_mask"])
    assert check_logits([expected], [onnx_runner(out / "model.onnx")(batch)], tolerance=1e-4) <= 1e-4
    with pytest.raises(FinexpError, match=r"above onnx_tolerance=0\.001"):
        check_logits([expected], [expected + 0.01], tolerance=1e-3)


def test_onnx_int8_export_runs_in_onnx_runtime_within_its_tolerance(trained, tmp_path, capsys):
    out = tmp_path / "int8"
    export_main([trained, str(out), "format=onnx", "quantize=int8", "rounds=1"])
    printed = capsys.readouterr().out
    assert "onnx_int8/max_abs_logit_diff" in printed
    summary = json.loads((out / "export_summary.json").read_text())
    for key in ("test_accuracy", "test_auroc", "rows_per_s", "size_mb", "batch_latency_ms_median"):
        assert all(f"{form}/{key}" in summary for form in ("fp32", "onnx", "onnx_int8")), key
    gap, tolerance = summary["onnx_int8/max_abs_logit_diff"], summary["onnx_int8/tolerance"]
    assert 0 < gap <= tolerance == 0.5  # it is quantized, and still the same model
    assert summary["onnx_int8/size_mb"] < summary["onnx/size_mb"]
    assert summary["change/onnx_int8/test_accuracy_points"] == pytest.approx(
        100 * (summary["onnx_int8/test_accuracy"] - summary["fp32/test_accuracy"])
    )
    assert summary["onnx_int8/prediction_agreement"] >= 0.9

    graph = onnx.load(out / "model.int8.onnx").graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul") for n in graph.node)
    fp32 = ExportedClassifier.from_dir(out)
    batch = _test_batch(out)
    with torch.no_grad():
        expected = fp32(batch["input_ids"], batch["attention_mask"])
    got = onnx_runner(out / "model.int8.onnx")(batch)
    assert 0 < float((got - expected).abs().max()) <= tolerance
    with pytest.raises(FinexpError, match="above int8_tolerance=1e-06"):
        check_logits([expected], [got], tolerance=1e-6, key="int8_tolerance")


def test_an_int8_model_outside_its_tolerance_is_not_kept(trained, tmp_path, capsys):
    out = tmp_path / "strict"
    with pytest.raises(SystemExit) as exit_info:
        export_main([trained, str(out), "format=onnx", "quantize=int8", "int8_tolerance=1e-7", "rounds=1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "model.int8.onnx" in err and "above int8_tolerance=1e-07" in err
    assert not (out / "model.int8.onnx").exists() and not (out / "model.onnx").exists()


def test_bad_export_options_fail_with_the_option_named(trained, tmp_path, capsys):
    for options, message in [
        (["quantize=int4"], "quantize='int4' is not allowed"),
        (["quantize=int8"], "quantize=int8 with format=hf is not supported: use format=onnx quantize=int8"),
        (["format=peft", "quantize=int8"], "with format=peft is not supported"),
        (["format=tflite"], "format='tflite' is not allowed: choose hf, peft, onnx"),
        (["onnx_tolerance=-1"], "onnx_tolerance=-1.0"),
        (["int8_tolerance=0"], "int8_tolerance=0.0 is not allowed"),
        (["rounds=x"], "rounds must be a int"),
        (["tolerance=1"], "KEY one of format"),
        (["base_model=bert-base-uncased"], "base_model='bert-base-uncased' is for format=peft"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            export_main([trained, str(tmp_path / "x"), *options])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, options
    assert not (tmp_path / "x").exists()  # options are checked before anything is written
    assert ExportOptions.parse(["max_rows=5"]).max_rows == 5
