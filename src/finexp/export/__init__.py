"""``finexp-export``: a finexp checkpoint -> a Hugging Face model directory that transformers alone can load.

    finexp-export outputs/.../checkpoints/best.ckpt exported/credit-lora
    finexp-export outputs/.../checkpoints/best.ckpt exported/credit-int8 quantize=int8   # + model.int8.pt
    finexp-export outputs/.../checkpoints/best.ckpt exported/credit-onnx format=onnx     # + model.onnx

Full, frozen-encoder, top-layers, LoRA and IA³ runs become one model: the adapters are merged into the base weights
and the directory holds ``model.safetensors``, ``config.json``, the tokenizer and ``modeling_finexp.py`` (the pooling
and head finexp trained, so logits match the checkpoint's). Load it with::

    AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)

Prompt tuning, prefix tuning and bottleneck adapters add computation that no weight of the base model can absorb:
for them the directory holds ``base/`` (the pretrained encoder, a plain transformers model), ``adapter/`` (peft's
format for prompt/prefix tuning; ``bottleneck.safetensors`` + ``bottleneck.json`` for bottleneck adapters) and
``head.safetensors``, and the command says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from finexp import FinexpError, build
from finexp.adapters.bottleneck import Adapted, BottleneckAdapter
from finexp.adapters.checkpoint import load_checkpoint_state
from finexp.adapters.peft_methods import PromptTunedEncoder
from finexp.config import validate_config
from finexp.evaluate import find_run_dir, load_checkpoint, load_run
from finexp.export.compress import CompressOptions, compress
from finexp.models.classifier import SequenceClassifier
from finexp.tasks.classification import SequenceClassificationModule

MODELING = Path(__file__).with_name("modeling_finexp.py")
AUTO_MAP = {
    "AutoConfig": "modeling_finexp.FinexpClassifierConfig",
    "AutoModelForSequenceClassification": "modeling_finexp.FinexpForSequenceClassification",
}


def load_classifier(ckpt: str | Path) -> tuple[SequenceClassifier, Any, list[str], str]:
    """Rebuild a run's classifier from its config.yaml and load the checkpoint: (model, tokenizer, labels, adapter)."""
    ckpt = Path(ckpt).expanduser().resolve()
    checkpoint = load_checkpoint(ckpt)
    run_dir = find_run_dir(ckpt)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    validate_config(cfg)
    info_path = run_dir / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    labels = checkpoint.get("finexp", {}).get("label_names") or info.get("labels")
    if not labels:
        raise FinexpError(f"{ckpt}: holds no label names and {info_path} is missing")
    if cfg.model.get("kind", "transformer") != "transformer":
        raise FinexpError(f"{ckpt}: model={cfg.model.name} is not a transformer; there is nothing to export")
    problem = OmegaConf.select(cfg, "task.problem", default="classification")
    fusion = OmegaConf.select(cfg, "model.fusion")
    if problem in ("regression", "multilabel") or fusion is not None:
        raise FinexpError(
            f"{ckpt}: finexp-export writes text classifiers; this run has task.problem={problem}, "
            f"model.fusion={fusion} (use finexp-eval, or the checkpoint with finexp)"
        )
    if OmegaConf.select(cfg, "method.name") == "prompt":
        raise FinexpError(
            f"{ckpt}: method=prompt scores label words through a masked LM and a pattern spliced in per row; "
            "finexp-export writes sequence classifiers (use finexp-eval, -predict or -serve with the checkpoint)"
        )
    tokenizer = build.tokenizer_from(cfg)
    model = build.model_from(cfg, len(labels), tokenizer, labels)
    weight = checkpoint.get("state_dict", {}).get("loss_fn.weight")  # task.class_weights: part of the state
    module = SequenceClassificationModule(model, labels, class_weights=None if weight is None else weight.tolist())
    load_checkpoint_state(module, checkpoint)
    model.eval()
    adapter = info.get("choices", {}).get("adapter") or str(cfg.adapter.get("_target_", "?")).rsplit(".", 1)[-1]
    return model, tokenizer, list(labels), adapter


def _unwrap_bottleneck(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Put the original projections back in place (in ``encoder``) and return the adapters' weights by name."""
    weights = {}
    for name, module in list(encoder.named_modules()):
        if isinstance(module, Adapted):
            for key, value in module.adapter.state_dict().items():
                weights[f"{name}.adapter.{key}"] = value.detach().clone().contiguous()
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent) if parent else encoder, child, module.proj)
    return weights


def _labels_config(labels: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}


def export(ckpt: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the checkpoint's model to ``out_dir``. Returns what was written (``merged`` says which layout)."""
    model, tokenizer, labels, adapter = load_classifier(ckpt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    head = {k: v.detach().clone().contiguous() for k, v in model.head.state_dict().items()}

    reason = None
    prompts = isinstance(encoder, PromptTunedEncoder)
    if prompts or (isinstance(encoder, PeftModel) and encoder.active_peft_config.is_prompt_learning):
        reason = f"adapter={adapter} (virtual tokens / prefixes) adds inputs, not weight changes"
    elif any(isinstance(m, BottleneckAdapter) for m in encoder.modules()):
        reason = f"adapter={adapter}: bottleneck adapters are nonlinear modules between layers"

    if reason is None:
        if isinstance(encoder, PeftModel):
            encoder = encoder.merge_and_unload()  # LoRA / IA³ folded into the base weights
        config = {
            "encoder": encoder.config.to_dict(),
            "pooling": model.pooling,
            "num_labels": len(labels),
            "architectures": ["FinexpForSequenceClassification"],
            "auto_map": AUTO_MAP,
            "model_type": "finexp_classifier",
            **_labels_config(labels),
        }
        state = {f"encoder.{k}": v.detach().clone().contiguous() for k, v in encoder.state_dict().items()}
        state |= {f"head.{k}": v for k, v in head.items()}
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        shutil.copy(MODELING, out / MODELING.name)
        tokenizer.save_pretrained(out)
        return {"merged": True, "path": str(out), "adapter": adapter}

    adapter_dir = out / "adapter"
    if isinstance(encoder, PromptTunedEncoder):
        encoder = encoder.peft
    if isinstance(encoder, PeftModel):
        encoder.save_pretrained(adapter_dir)
        base = encoder.get_base_model()
    else:
        weights = _unwrap_bottleneck(encoder)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        save_file(weights, adapter_dir / "bottleneck.safetensors", metadata={"format": "pt"})
        cfg = OmegaConf.load(find_run_dir(Path(ckpt).expanduser().resolve()) / "config.yaml")
        (adapter_dir / "bottleneck.json").write_text(json.dumps(OmegaConf.to_container(cfg.adapter), indent=2) + "\n")
        base = encoder
    base.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    save_file(head, out / "head.safetensors", metadata={"format": "pt"})
    (out / "head.json").write_text(json.dumps({"pooling": model.pooling, **_labels_config(labels)}, indent=2) + "\n")
    return {"merged": False, "path": str(out), "adapter": adapter, "reason": reason}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``finexp-export``)."""
    parser = argparse.ArgumentParser(
        prog="finexp-export",
        description="Turn a finexp checkpoint into a Hugging Face model directory (LoRA/IA³ merged into the weights).",
        epilog="Load: AutoModelForSequenceClassification.from_pretrained(OUT_DIR, trust_remote_code=True)",
    )
    parser.add_argument("ckpt", help="a .ckpt written by finexp-train (its run's config.yaml is read from beside it)")
    parser.add_argument("out_dir", help="directory to write (created)")
    parser.add_argument(
        "options",
        nargs="*",
        metavar="KEY=VALUE",
        help="quantize=int8 (dynamic int8 linear layers, model.int8.pt) | format=onnx (model.onnx, checked with "
        "onnxruntime); onnx_tolerance=1e-4, rounds=3 (timing repeats), max_rows=N (test rows measured). Both "
        "write export_summary.json: test accuracy, size and CPU throughput against fp32",
    )
    args = parser.parse_args(argv)
    try:
        options = CompressOptions.parse(args.options)
        result = export(args.ckpt, args.out_dir)
        if options.active:
            if not result["merged"]:
                raise FinexpError(
                    f"{result['reason']}: format={options.format} quantize={options.quantize} need "
                    "a model merged into one set of weights"
                )
            summary = compress(args.out_dir, load_run(args.ckpt).datamodule, options)
    except FinexpError as err:
        print(f"finexp-export: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    if options.active:
        new = "int8" if options.quantize == "int8" else "onnx"
        lines = [f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}" for k, v in summary.items()]
        print(f"wrote {new} model to {result['path']} (export_summary.json):", *lines, sep="\n")
        return
    if result["merged"]:
        print(f"exported {result['adapter']} model to {result['path']} (load with trust_remote_code=True)")
    else:
        print(
            f"{result['reason']}: it cannot be merged into the base weights. Wrote the base model to "
            f"{result['path']}/base, the adapter to {result['path']}/adapter and the head to "
            f"{result['path']}/head.safetensors"
        )


if __name__ == "__main__":
    main()
