"""``finexp-export``: a finexp checkpoint -> a directory the ecosystem loads without finexp and without remote code.

    finexp-export outputs/.../checkpoints/best.ckpt exported/credit                       # sentence-transformers
    finexp-export outputs/.../checkpoints/best.ckpt exported/credit-peft format=peft      # LoRA/IA³ adapter + head
    finexp-export outputs/.../checkpoints/best.ckpt exported/credit-onnx format=onnx quantize=int8
    finexp-export outputs/.../checkpoints/best.ckpt exported/credit push_to_hub=me/credit-minilm

``format=hf`` (default): full, frozen-encoder, top-layers, LoRA and IA³ runs become one model (adapters merged into
the base weights) written as a sentence-transformers directory (encoder via ``save_pretrained``, ``1_Pooling`` as
finexp pooled, ``2_Dense`` the head): ``SentenceTransformer(path).encode(texts)`` gives the checkpoint's logits.
``format=peft``: the adapter unmerged, in peft's format (``adapter/``), with the head (``head.safetensors``) and the
base model's name (``base/`` when its weights have no name). ``format=onnx``: the ``hf`` directory plus
``model.onnx`` and, with ``quantize=int8``, ``model.int8.onnx`` (ONNX Runtime dynamic quantization), both checked and
measured against fp32 on the run's test split. Every export has a Hugging Face model card (``README.md``) and
``export_summary.json`` (layout, how to load it, whether remote code is needed: never, for what finexp writes).

Prompt tuning, prefix tuning and bottleneck adapters add computation that no weight of the base model can absorb:
prompt and prefix tuning are written in the peft layout whatever the format; bottleneck adapters (no standard form)
as ``base/`` + ``adapter/bottleneck.*`` + ``head.safetensors``, loadable with finexp only; the command says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from finexp import FinexpError
from finexp.export.options import ExportOptions

if TYPE_CHECKING:  # torch, peft and transformers load inside the functions: finexp-export --help answers without them
    import torch
    from torch import nn

    from finexp.export.layouts import Layout
    from finexp.models.classifier import SequenceClassifier

SUMMARY_FILE = "export_summary.json"


def load_classifier(ckpt: str | Path) -> tuple[SequenceClassifier, Any, list[str], str]:
    """A run's classifier with the checkpoint's weights: (model, tokenizer, labels, adapter) (see ``TrainedRun``)."""
    from finexp.runs import TrainedRun

    run = TrainedRun.open(ckpt)
    run.require("export")
    model, tokenizer = run.classifier()
    return model, tokenizer, list(run.labels), run.adapter


def _unwrap_bottleneck(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Put the original projections back in place (in ``encoder``) and return the adapters' weights by name."""
    from finexp.adapters.bottleneck import Adapted

    weights = {}
    for name, module in list(encoder.named_modules()):
        if isinstance(module, Adapted):
            for key, value in module.adapter.state_dict().items():
                weights[f"{name}.adapter.{key}"] = value.detach().clone().contiguous()
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent) if parent else encoder, child, module.proj)
    return weights


def _base_reference(cfg: Any, options: ExportOptions) -> str | None:
    """The name the peft base is loaded by: ``base_model=``, else ``model.name_or_path`` (None: random weights)."""
    if options.base_model:
        return options.base_model
    name = OmegaConf.select(cfg, "model.name_or_path")
    return str(name) if name else None


def _hub_id(reference: str | None) -> str | None:
    """A base reference as the card's ``base_model``: hub ids only (a local path means nothing on the hub)."""
    if reference is None or Path(reference).expanduser().exists() or reference.startswith(("/", ".", "~")):
        return None
    return reference


def export(ckpt: str | Path, out_dir: str | Path, options: ExportOptions | None = None) -> dict[str, Any]:
    """Write the checkpoint's model to ``out_dir`` as ``options`` say; returns the export summary (also written to
    ``export_summary.json``): ``layout``, ``loads_with``, ``trust_remote_code``, ``merged`` and, for ``format=onnx``,
    the measurements."""
    from peft import PeftModel

    from finexp.adapters.bottleneck import BottleneckAdapter
    from finexp.adapters.peft_methods import PromptTunedEncoder
    from finexp.export.card import build_card, hub_preflight, push, write_card
    from finexp.export.layouts import write_adapter, write_sentence_transformers
    from finexp.runs import TrainedRun

    options = options or ExportOptions()
    token = hub_preflight(options.push_to_hub) if options.push_to_hub else None  # before any work
    run = TrainedRun.open(ckpt)  # the saved config is read as data, on the schema: nothing in it is instantiated
    run.require("export")
    model, tokenizer = run.classifier()
    ckpt, run_dir, cfg, labels, adapter = run.ckpt, run.run_dir, run.config, list(run.labels), run.adapter
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder, head = model.encoder, model.head

    reason = None
    peft_encoder = encoder.peft if isinstance(encoder, PromptTunedEncoder) else encoder
    prompts = isinstance(peft_encoder, PeftModel) and peft_encoder.active_peft_config.is_prompt_learning
    if prompts:
        reason = f"adapter={adapter} (virtual tokens / prefixes) adds inputs, not weight changes"
    elif any(isinstance(m, BottleneckAdapter) for m in encoder.modules()):
        reason = f"adapter={adapter}: bottleneck adapters are nonlinear modules between layers"
    if reason is not None and options.format == "onnx":
        raise FinexpError(f"{reason}: format=onnx needs a model merged into one set of weights")
    if options.format == "peft" and not isinstance(peft_encoder, PeftModel):
        raise FinexpError(
            f"{ckpt}: adapter={adapter} is not a peft adapter (lora, ia3, prompt_tuning, prefix_tuning): "
            "there is no adapter to save; use format=hf"
        )

    base_reference = _base_reference(cfg, options)
    if options.format == "peft" or prompts:
        extra = {"virtual_tokens": int(peft_encoder.active_peft_config.num_virtual_tokens)} if prompts else {}
        if prompts:  # the virtual positions are cut from the token states before pooling (as finexp trained it)
            extra["note"] = "drop the first virtual_tokens positions of last_hidden_state before pooling"
        layout = write_adapter(peft_encoder, head, model.pooling, tokenizer, labels, out, base_reference, extra)
    elif reason is not None:  # bottleneck adapters
        layout = _write_bottleneck(encoder, head, model.pooling, tokenizer, labels, out, cfg)
    else:
        if isinstance(encoder, PeftModel):
            encoder = encoder.merge_and_unload()  # LoRA / IA³ folded into the base weights
        max_length = int(cfg.data.max_length)
        layout = write_sentence_transformers(encoder, head, model.pooling, tokenizer, labels, out, max_length)

    summary: dict[str, Any] = {
        "path": str(out),
        "adapter": adapter,
        "format": options.format,
        "quantize": options.quantize,
        "layout": layout.name,
        "loads_with": layout.loads_with,
        "trust_remote_code": layout.trust_remote_code,
        "merged": layout.name == "sentence-transformers",
        **({"reason": reason} if reason else {}),
        **({"note": layout.note} if layout.note else {}),
    }
    if options.measured:
        from finexp.export.compress import compress

        summary |= compress(out, run.datamodule(tokenizer), options)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["choices"] = run.info.get("choices") or {}
    license_id = options.license or cfg.model.license
    hub_base = _hub_id(base_reference) if layout.name != "sentence-transformers" or base_reference else None
    card, figures = build_card(run_dir, resolved, layout.name, layout.loads_with, hub_base, license_id, labels)
    write_card(out, card, figures)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if options.push_to_hub and token:
        summary["hub_url"] = push(out, options.push_to_hub, token)
    return summary


def _write_bottleneck(
    encoder: nn.Module, head: nn.Linear, pooling: str, tokenizer: Any, labels: list[str], out: Path, cfg: Any
) -> Layout:
    """Bottleneck adapters have no standard form: the plain base, the adapters' weights and the head, apart."""
    from safetensors.torch import save_file

    from finexp.export.layouts import Layout, save_tokenizer, write_head

    weights = _unwrap_bottleneck(encoder)
    adapter_dir = out / "adapter"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, adapter_dir / "bottleneck.safetensors", metadata={"format": "pt"})
    (adapter_dir / "bottleneck.json").write_text(json.dumps(OmegaConf.to_container(cfg.adapter), indent=2) + "\n")
    encoder.save_pretrained(out / "base")
    save_tokenizer(tokenizer, out / "base")
    write_head(head, pooling, labels, out, {"base_model": "base"})
    return Layout(
        "unmerged",
        f"AutoModel.from_pretrained({str(out / 'base')!r})  # + adapter/bottleneck.safetensors and head.safetensors",
        trust_remote_code=False,
        note="bottleneck adapters have no standard transformers/peft form: the base loads alone, the adapters "
        "need finexp (finexp.adapters.bottleneck) to run",
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``finexp-export``)."""
    parser = argparse.ArgumentParser(
        prog="finexp-export",
        description="Turn a finexp checkpoint into a directory that sentence-transformers, peft or ONNX Runtime load "
        "without finexp and without trust_remote_code, with a Hugging Face model card (README.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  finexp-export RUN/checkpoints/best.ckpt exported/credit              # merged, sentence-transformers\n"
        "  finexp-export RUN/checkpoints/best.ckpt exported/credit-peft format=peft   # LoRA/IA3 adapter + head\n"
        "  finexp-export RUN/checkpoints/best.ckpt exported/credit-onnx format=onnx quantize=int8\n"
        "  finexp-export RUN/checkpoints/best.ckpt exported/credit push_to_hub=me/credit license=apache-2.0\n"
        "load:\n"
        "  from sentence_transformers import SentenceTransformer\n"
        "  logits = SentenceTransformer('exported/credit').encode(['Age: 41. Job: skilled'])",
    )
    parser.add_argument("ckpt", help="a .ckpt written by finexp-train (its run's config.yaml is read from beside it)")
    parser.add_argument("out_dir", help="directory to write (created)")
    parser.add_argument(
        "options",
        nargs="*",
        metavar="KEY=VALUE",
        help="format=hf|peft|onnx (default hf); quantize=int8 (with format=onnx: model.int8.onnx, ONNX Runtime "
        "dynamic int8); onnx_tolerance=1e-4, int8_tolerance=0.5 (largest |logit - fp32 logit| allowed); rounds=3 "
        "(timing repeats), max_rows=N (test rows measured); push_to_hub=USER/NAME (checked before any work); "
        "license=ID (model card; default model.license); base_model=HUB_ID (format=peft: the adapter's base)",
    )
    args = parser.parse_args(argv)
    try:
        options = ExportOptions.parse(args.options)
        summary = export(args.ckpt, args.out_dir, options)
    except FinexpError as err:
        print(f"finexp-export: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    remote = "needs trust_remote_code" if summary["trust_remote_code"] else "no remote code needed"
    lines = [f"exported {summary['adapter']} model to {summary['path']} as {summary['layout']} ({remote}):"]
    if "reason" in summary:
        lines.append(f"  {summary['reason']}: it cannot be merged into the base weights")
    lines.append(f"  load: {summary['loads_with']}")
    if "note" in summary:
        lines.append(f"  note: {summary['note']}")
    lines.append("  model card: README.md; summary: export_summary.json")
    skip = {"path", "adapter", "layout", "loads_with", "trust_remote_code", "reason", "note"}
    for key, value in summary.items():
        if key not in skip and options.measured:
            lines.append(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    if "hub_url" in summary:
        lines.append(f"  pushed to {summary['hub_url']}")
    print(*lines, sep="\n")


if __name__ == "__main__":
    main()
