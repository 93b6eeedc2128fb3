"""Token attributions by integrated gradients over the embedding layer (Captum, ``finexp[explain]``), summed per
word and per source column of a serialized table row, and rendered as a self-contained HTML page."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from finexp.extras import require_extra
from finexp.progress import progress


@dataclass
class Explanation:
    """One text's attributions: words (word pieces merged) with their summed attribution."""

    text: str
    target: str  # the class the attributions explain (binary: the positive class, as log-odds)
    label: str | None
    probability: float  # the model's probability of ``target``
    words: list[tuple[int, int, float]]  # (start char, end char, attribution)
    convergence_delta: float
    features: dict[str, float] = field(default_factory=dict)  # serialized tables: column -> summed attribution


def _embedding_layer(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "encoder", model)
    if not hasattr(encoder, "get_input_embeddings"):
        raise ValueError(f"{type(encoder).__name__} has no get_input_embeddings(); cannot attribute to tokens")
    return encoder.get_input_embeddings()


def piece_spans(text: str, separator: str, n_columns: int) -> list[tuple[int, int]] | None:
    """Character spans of the ``n_columns`` "<phrase>: <value>" pieces of a serialized row, or None when the text
    does not split into exactly that many pieces (a value containing the separator)."""
    parts = text.split(separator)
    if len(parts) != n_columns:
        return None
    spans, start = [], 0
    for part in parts:
        spans.append((start, start + len(part)))
        start += len(part) + len(separator)
    return spans


def integrated_gradients(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    label_names: list[str],
    labels: Sequence[int] | None = None,
    max_length: int = 128,
    n_steps: int = 32,
    serialized_columns: Sequence[str] = (),
    separator: str = ". ",
) -> list[Explanation]:
    """Integrated gradients of each text w.r.t. its token embeddings, from an all-pad baseline (special tokens kept).

    Binary tasks explain the log-odds of the positive class (positive attribution: towards ``label_names[1]``);
    multi-class tasks explain the log-probability of the predicted class.

    Args:
        model: maps ``(input_ids, attention_mask)`` to logits and has ``encoder.get_input_embeddings()``.
        tokenizer: the fast tokenizer the model was trained with (offsets map tokens back to characters).
        texts: the texts to explain.
        label_names: class names by id.
        labels: true label ids (shown in the report), optional.
        max_length: truncation length used in training.
        n_steps: integration steps (more: smaller convergence delta, slower).
        serialized_columns: table tasks: the columns serialized into each text, in order (empty for text tasks).
        separator: what joins the serialized pieces.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("explanations need a fast tokenizer (offset mapping)")
    binary = len(label_names) == 2
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def score(input_ids: torch.Tensor, attention_mask: torch.Tensor, target: int) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).float()
        if binary:
            return logits[:, 1] - logits[:, 0]
        return logits.log_softmax(-1)[:, target]

    require_extra("explain", "explanations (analysis.explain, finexp-explain, finexp-predict explain=true)")
    from captum.attr import LayerIntegratedGradients

    ig = LayerIntegratedGradients(score, _embedding_layer(model))
    explanations = []
    try:
        for i, text in enumerate(progress(texts, desc="explaining (integrated gradients)", unit="row")):
            enc = tokenizer(
                text,
                truncation=True,
                max_length=max_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                return_tensors="pt",
            )
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            special = enc["special_tokens_mask"][0].bool()
            baseline = ids.clone()
            baseline[0, ~special.to(device)] = pad_id
            with torch.no_grad():
                probs = model(input_ids=ids, attention_mask=mask).float().softmax(-1)[0]
            target = 1 if binary else int(probs.argmax())
            attributions, delta = ig.attribute(
                ids,
                baselines=baseline,
                additional_forward_args=(mask, target),
                n_steps=n_steps,
                return_convergence_delta=True,
            )
            per_token = attributions.sum(-1)[0].detach().cpu().numpy()
            offsets = enc["offset_mapping"][0].tolist()
            word_ids = enc.word_ids(0)
            words: dict[int, list] = {}
            for t, word in enumerate(word_ids):
                if word is None or special[t]:
                    continue
                start, end = offsets[t]
                if word in words:
                    words[word][1] = end
                    words[word][2] += float(per_token[t])
                else:
                    words[word] = [start, end, float(per_token[t])]
            explanation = Explanation(
                text=text,
                target=label_names[target],
                label=label_names[labels[i]] if labels is not None else None,
                probability=float(probs[target]),
                words=[tuple(w) for w in words.values()],
                convergence_delta=float(delta.abs().item()),
            )
            spans = piece_spans(text, separator, len(serialized_columns)) if serialized_columns else None
            if spans:
                features = dict.fromkeys(serialized_columns, 0.0)
                for t, (start, _) in enumerate(offsets):
                    if special[t]:
                        continue
                    for column, (lo, hi) in zip(serialized_columns, spans, strict=True):
                        if lo <= start < hi:
                            features[column] += float(per_token[t])
                            break
                explanation.features = features
            explanations.append(explanation)
    finally:
        model.train(was_training)
    return explanations


def top_words(explanations: Sequence[Explanation], k: int = 15) -> dict[str, list[dict[str, float]]]:
    """Words (lower-cased, punctuation left out) with the largest total positive and negative attribution across
    the explanations."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in explanations:
        for start, end, value in e.words:
            word = e.text[start:end].lower()
            if not any(ch.isalnum() for ch in word):  # punctuation and template glue (": ", ". ") say nothing
                continue
            total[word] += value
            count[word] += 1
    rows = [{"word": w, "total": total[w], "mean": total[w] / count[w], "count": count[w]} for w in total]
    positive = sorted((r for r in rows if r["total"] > 0), key=lambda r: -r["total"])[:k]
    negative = sorted((r for r in rows if r["total"] < 0), key=lambda r: r["total"])[:k]
    return {"positive": positive, "negative": negative}


def feature_importance(explanations: Sequence[Explanation]) -> dict[str, dict[str, float]]:
    """Per source column: mean |attribution| (importance) and mean signed attribution, over the explanations."""
    rows = [e.features for e in explanations if e.features]
    if not rows:
        return {}
    columns = list(rows[0])
    return {
        c: {
            "mean_abs": float(np.mean([abs(r[c]) for r in rows])),
            "mean": float(np.mean([r[c] for r in rows])),
        }
        for c in columns
    }


def _colour(value: float, scale: float) -> str:
    alpha = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    rgb = "220,50,47" if value > 0 else "38,139,210"
    return f"rgba({rgb},{alpha:.2f})"


def explanations_html(explanations: Sequence[Explanation], title: str, positive_meaning: str) -> str:
    """A self-contained HTML page: each text with its words highlighted by attribution (no external assets)."""
    blocks = []
    for e in explanations:
        scale = max((abs(v) for _, _, v in e.words), default=0.0)
        pieces, cursor = [], 0
        for start, end, value in e.words:
            pieces.append(html.escape(e.text[cursor:start]))
            pieces.append(
                f'<span style="background:{_colour(value, scale)}" title="{value:+.4f}">'
                f"{html.escape(e.text[start:end])}</span>"
            )
            cursor = end
        pieces.append(html.escape(e.text[cursor:]))
        truth = f" · true label: <b>{html.escape(e.label)}</b>" if e.label is not None else ""
        blocks.append(
            f'<div class="ex"><div class="meta">p({html.escape(e.target)}) = {e.probability:.3f}{truth} · '
            f"IG convergence delta {e.convergence_delta:.2e}</div><div>{''.join(pieces)}</div></div>"
        )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.7}"
        ".ex{border-bottom:1px solid #ddd;padding:.6em 0}.meta{color:#555;font-size:.85em}"
        "span{border-radius:3px;padding:0 1px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Integrated gradients over the token embeddings. "
        f'<span style="background:rgba(220,50,47,.8)">red</span>: towards {html.escape(positive_meaning)}; '
        '<span style="background:rgba(38,139,210,.8)">blue</span>: against. '
        "Shading is relative to each text's largest attribution; hover a word for its value.</p>"
        + "".join(blocks)
        + "</body></html>"
    )
