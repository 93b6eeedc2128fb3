"""finexp-serve with serve.onnx: a run exported by finexp-export format=onnx scored by ONNX Runtime answers the same
labels (and probabilities within the export's tolerance) as the PyTorch backend on the same run; an export that does
not match the checkpoint, a missing file and a missing onnxruntime stop with one clear line before serving; and
finexp-serve --help loads neither torch nor transformers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn

from conftest import applicants_frame
from finexp import FinexpError
from finexp.config import ConfigError
from finexp.export import export
from finexp.export.options import ExportOptions
from finexp.inference import Predictor
from finexp.serve import serve
from finexp.serving import create_app, start_in_thread
from finexp.serving.onnx import OnnxLogits, onnx_file, onnx_predictor
from serving_support import compose_in, train_table_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return train_table_checkpoint(tmp_path_factory.mktemp("serve-onnx") / "run")


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx-export") / "credit-onnx"
    export(ckpt, out, ExportOptions(format="onnx", rounds=1, max_rows=8))
    return out


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_checkpoint(ckpt, device="cpu")


def rows(n: int = 12) -> list[dict]:
    frame = applicants_frame(n, seed=21).drop(columns=["default"]).astype(object)
    return frame.where(frame.notna(), None).to_dict("records")


def test_onnx_backend_answers_like_the_pytorch_backend(predictor, exported):
    onnx_model = onnx_predictor(predictor, onnx_file(str(exported)))
    assert isinstance(onnx_model.model, OnnxLogits) and onnx_model.model.path == exported / "model.onnx"
    batch = rows()
    batch[4]["income"] = "lots"  # rows are read by the checkpoint's spec: the same error in place
    answers = {}
    for name, model in (("torch", predictor), ("onnx", onnx_model)):
        server = start_in_thread(create_app(model, max_batch_size=8))
        try:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                answers[name] = client.post("/predict", json={"rows": batch}).json()["predictions"]
                meta = client.get("/metadata").json()
        finally:
            server.should_exit = True
            server.thread.join(timeout=10)
    assert [a["label"] for a in answers["onnx"]] == [a["label"] for a in answers["torch"]]
    assert answers["onnx"][4]["error"] == "column 'income' expects a number, got 'lots'"
    for ours, theirs in zip(answers["onnx"], answers["torch"], strict=True):
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-4)
    assert meta["backend"] == "onnxruntime" and meta["onnx_file"] == "model.onnx" and len(meta["onnx_sha256"]) == 64
    assert meta["checkpoint_sha256"] == predictor.metadata["checkpoint_sha256"]


def test_an_export_that_does_not_reproduce_the_checkpoint_is_refused(predictor, exported, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    summary = json.loads((other / "export_summary.json").read_text())
    (other / "export_summary.json").write_text(json.dumps(summary | {"onnx/tolerance": 1e-12}))
    with pytest.raises(FinexpError, match=r"differ from the checkpoint's by .* \(tolerance 1e-12 from export_summary"):
        onnx_predictor(predictor, onnx_file(str(other)))
    config = json.loads((other / "config.json").read_text())
    config["id2label"] = {"0": "yes", "1": "no"}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(FinexpError, match=r"the export's labels \['yes', 'no'\] are not the checkpoint's"):
        onnx_predictor(predictor, onnx_file(str(other)))


def test_onnx_settings_fail_before_any_weights_load(tmp_path, monkeypatch, exported):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    for setting, message in [
        (tmp_path / "empty", "no model.onnx in that directory; write one with 'finexp-export CKPT DIR format=onnx'"),
        (tmp_path / "absent", "no such file or directory"),
        (tmp_path / "weights.bin", "not an .onnx file"),
    ]:
        with pytest.raises(ConfigError, match=r"serve\.onnx=") as err:
            onnx_file(str(setting))
        assert message in str(err.value)
    assert onnx_file(str(exported / "model.onnx")) == exported / "model.onnx"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    cfg = compose_in(
        tmp_path, f"ckpt={tmp_path}/absent.ckpt", f"serve.onnx={exported}", config_name="serve", fast=False
    )
    with pytest.raises(ConfigError, match=r"ONNX Runtime is not installed: pip install 'finexp\[onnx\]'"):
        serve(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("serve.max_batch_size=0", "serve.max_batch_size=0 is not allowed: must be >= 1 (1: one request per"),
        ("serve.max_wait_ms=-1", "serve.max_wait_ms=-1.0 is not allowed: must be >= 0"),
    ],
)
def test_batching_settings_are_checked_before_the_model_loads(tmp_path, override, message):
    cfg = compose_in(tmp_path, f"ckpt={tmp_path}/absent.ckpt", override, config_name="serve", fast=False)
    with pytest.raises(ConfigError) as err:
        serve(cfg)
    assert message in str(err.value)


def test_finexp_serve_builds_the_onnx_backend_from_its_config(ckpt, exported, tmp_path, monkeypatch, capsys):
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append((app, kwargs)))  # build, do not listen
    overrides = [f"ckpt={ckpt}", f"serve.onnx={exported}", "serve.max_batch_size=32", "serve.max_wait_ms=2"]
    serve(compose_in(tmp_path, *overrides, "serve.access_log=false", config_name="serve", fast=False))
    printed = capsys.readouterr().out
    assert "backend: onnxruntime (model.onnx)" in printed and "batches: up to 32 rows, 2 ms wait" in printed
    ((app, kwargs),) = apps
    assert kwargs["port"] == 8000 and app.state.batcher.max_batch_size == 32 and app.state.batcher.max_wait_s == 0.002
    server = start_in_thread(app)
    try:
        answer = httpx.post(f"{server.url}/predict", json={"rows": rows(3)}, timeout=60).json()
        assert [p["label"] is not None for p in answer["predictions"]] == [True] * 3
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)


def test_help_does_not_import_torch_or_transformers(tmp_path):
    code = (
        "import sys\n"
        "sys.argv = ['finexp-serve', '--help']\n"
        "import finexp.serve\n"
        "try:\n    finexp.serve.main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'lightning', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "GET  /metrics" in done.stdout and "serve.max_batch_size" in done.stdout
    assert "HEAVY []" in done.stdout
