"""finexp-serve with serve.precision=bf16: the PyTorch weights in bfloat16 answer the float32 labels (probabilities
within bf16's rounding) and say so in /metadata; a tolerance the bf16 model misses stops the server and leaves the
model in float32; bf16 beside serve.onnx, an unknown precision and a CPU without bf16 instructions are refused
before any weights load."""

from __future__ import annotations

import httpx
import pytest
import torch
import uvicorn

from conftest import applicants_frame
from finexp.config import ConfigError
from finexp.inference import Predictor
from finexp.serve import serve
from finexp.serving import create_app, start_in_thread
from finexp.serving.precision import check_precision, to_bf16
from serving_support import compose_in, train_table_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return train_table_checkpoint(tmp_path_factory.mktemp("serve-precision") / "run")


def rows(n: int = 12) -> list[dict]:
    frame = applicants_frame(n, seed=23).drop(columns=["default"]).astype(object)
    return frame.where(frame.notna(), None).to_dict("records")


def answers(model: Predictor, batch: list[dict]) -> tuple[list[dict], dict]:
    server = start_in_thread(create_app(model, max_batch_size=8))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return client.post("/predict", json={"rows": batch}).json()["predictions"], client.get("/metadata").json()
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)


def test_bf16_backend_answers_like_float32(ckpt):
    batch = rows()
    fp32, meta32 = answers(Predictor.from_checkpoint(ckpt, device="cpu"), batch)
    bf16_model = to_bf16(Predictor.from_checkpoint(ckpt, device="cpu"), tolerance=0.05)
    assert {p.dtype for p in bf16_model.model.parameters()} == {torch.bfloat16}
    bf16, meta16 = answers(bf16_model, batch)
    assert [a["label"] for a in bf16] == [a["label"] for a in fp32]
    for ours, theirs in zip(bf16, fp32, strict=True):
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=0.02)
    assert "precision" not in meta32
    assert meta16["precision"] == "bf16" and 0 <= meta16["bf16_probe_max_diff"] <= 0.05


def test_a_tolerance_bf16_misses_is_refused_and_the_model_stays_float32(ckpt):
    model = Predictor.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(ConfigError, match=r"serve\.bf16_tolerance=1e-12\) or change a probe's label"):
        to_bf16(model, tolerance=1e-12)
    assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    with pytest.raises(ConfigError, match=r"serve\.bf16_tolerance=0 is not allowed"):
        to_bf16(model, tolerance=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["serve.precision=fp16"], "serve.precision='fp16' is not one of fp32, bf16"),
        (["serve.precision=bf16", "serve.onnx=."], "serve.onnx= is an ONNX Runtime model"),  # before the CPU check
    ],
)
def test_precision_settings_fail_before_any_weights_load(tmp_path, overrides, message):
    cfg = compose_in(tmp_path, f"ckpt={tmp_path}/absent.ckpt", *overrides, config_name="serve", fast=False)
    with pytest.raises(ConfigError) as err:
        serve(cfg)
    assert message in str(err.value)


def test_bf16_is_refused_on_a_cpu_that_would_emulate_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match=r"no native bfloat16 instructions \(AVX512-BF16 or AMX\)"):
        check_precision("bf16", "auto")
    check_precision("fp32", "auto")  # float32 needs nothing


def test_finexp_serve_builds_the_bf16_backend_from_its_config(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # any CI CPU
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))  # build, do not listen
    overrides = [f"ckpt={ckpt}", "serve.precision=bf16", "serve.device=cpu", "serve.access_log=false"]
    serve(compose_in(tmp_path, *overrides, config_name="serve", fast=False))
    assert "backend: pytorch (cpu, bf16)" in capsys.readouterr().out
    server = start_in_thread(apps[0])
    try:
        answer = httpx.post(f"{server.url}/predict", json={"rows": rows(3)}, timeout=60).json()
        assert [p["label"] is not None for p in answer["predictions"]] == [True] * 3
        assert httpx.get(f"{server.url}/metadata", timeout=30).json()["precision"] == "bf16"
    finally:
        server.should_exit = True
        server.thread.join(timeout=10)
