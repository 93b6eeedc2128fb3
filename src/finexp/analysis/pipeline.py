"""Put the analyses together for one run: predict, measure, plot, explain, and write the report.

This is the glue that ``finexp-train`` and ``finexp-eval`` call; it takes the run's objects (a module, a datamodule)
and plain values, never a Hydra config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from finexp import FinexpError
from finexp.analysis import attributions as attr
from finexp.analysis import fairness as fair
from finexp.analysis import metrics as m
from finexp.analysis import plots
from finexp.analysis.model_card import Section, table, write_report
from finexp.config.lookups import target_of
from finexp.progress import progress
from finexp.records import write_json

log = logging.getLogger("finexp")


class AnalysisError(FinexpError, ValueError):
    """An analysis option that does not fit the task (e.g. a favorable label that is not a label)."""


@dataclass
class AnalysisOptions:
    """What the analysis computes (mirrors ``conf/analysis``)."""

    enabled: bool = True
    ece_bins: int = 15
    temperature_scaling: bool = True
    approval_rate: float = 0.7
    favorable_label: str | None = None
    group_thresholds: bool = False
    fairness_at: str = "approval_rate"
    explain: bool = False
    explain_examples: int = 20
    ig_steps: int = 32
    top_words: int = 15


@dataclass
class Predictions:
    """Class probabilities and true label ids of one split, in the split's row order."""

    probs: np.ndarray
    labels: np.ndarray


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader) -> Predictions:
    """Probabilities of every row of ``loader`` (batches from finexp's collator), returned in dataset order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    index, probs, labels = [], [], []
    try:
        for batch in progress(loader, desc="report: predicting", unit="batch"):
            fused = [batch["features"].to(device)] if "features" in batch else []  # model.fusion: numeric columns
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device), *fused)
            probs.append(logits.float().softmax(-1).cpu())
            index.append(batch["index"])
            labels.append(batch["labels"])
    finally:
        model.train(was_training)
    if not index:
        return Predictions(np.zeros((0, 0)), np.zeros(0, dtype=int))
    order = torch.cat(index).argsort()
    return Predictions(torch.cat(probs)[order].numpy(), torch.cat(labels)[order].numpy())


def favorable_id(label_names: list[str], favorable_label: str | None) -> int:
    """Label id of the favorable outcome; by default the binary task's negative class (index 0)."""
    if favorable_label is None:
        return 0
    if favorable_label not in label_names:
        raise AnalysisError(f"analysis.favorable_label={favorable_label!r} is not a label; labels: {label_names}")
    return label_names.index(favorable_label)


FAIRNESS_AT = ("approval_rate", "val_f1_max", "default")


def operating_threshold(
    options: AnalysisOptions, val_score: np.ndarray | None, val_labels: np.ndarray | None, favorable: int
) -> tuple[float, str]:
    """The threshold fairness is measured at, and how it was chosen (0.5 when there is no validation split)."""
    if options.fairness_at not in FAIRNESS_AT:
        raise AnalysisError(f"analysis.fairness_at={options.fairness_at!r}; choose one of {', '.join(FAIRNESS_AT)}")
    if val_score is None or not len(val_score) or options.fairness_at == "default":
        return 0.5, "the default 0.5"
    if options.fairness_at == "approval_rate":
        cut = m.approval_rate_threshold(val_score, options.approval_rate, favorable)
        return cut, f"chosen on validation to approve {options.approval_rate:.0%}"
    if len(np.unique(val_labels)) < 2:
        return 0.5, "the default 0.5 (validation has one class)"
    return m.f1_optimal_threshold(val_score, val_labels), "the F1-maximising threshold on validation"


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------
def evaluation_sections(
    out: Path,
    label_names: list[str],
    evaluated: Predictions,
    val: Predictions | None,
    options: AnalysisOptions,
    split: str = "test",
    groups: np.ndarray | None = None,
    val_groups: np.ndarray | None = None,
) -> tuple[list[Section], dict[str, Any]]:
    """Metrics, calibration, thresholds and fairness of ``evaluated`` (``val`` fits temperature and thresholds).

    Returns:
        The report sections and everything measured (written to ``analysis.json`` by :func:`analyze`).
    """
    binary = len(label_names) == 2
    probs, labels = evaluated.probs, evaluated.labels
    results: dict[str, Any] = {"split": split, "rows": len(labels)}
    sections = []

    summary = m.classification_summary(probs, labels, label_names)
    results["classification"] = summary
    plots.confusion_matrix_png(summary["confusion_matrix"], label_names, out / "confusion_matrix.png")
    rows = [{"class": k, **v} for k, v in summary["per_class"].items()]
    rows += [{"class": k, **summary[k]} for k in ("macro avg", "weighted avg")]
    body = [f"On the {split} split ({len(labels)} rows), predicted class = the most probable one.", ""]
    body += [table(rows, ["class", "precision", "recall", "f1-score", "support"]), ""]
    head = {"accuracy": summary["accuracy"]}
    head |= {k: summary[k] for k in ("auroc", "auprc", "ks", "gini") if k in summary}
    body.append(table([head]))
    figures = ["confusion_matrix.png"]
    if "auroc" in summary:
        c = m.curves(probs[:, 1], labels)
        plots.roc_png(c["fpr"], c["tpr"], summary["auroc"], out / "roc_curve.png")
        plots.pr_png(c["recall"], c["precision"], summary["auprc"], float(labels.mean()), out / "pr_curve.png")
        figures += ["roc_curve.png", "pr_curve.png"]
        body += ["", "KS = max(TPR − FPR) over thresholds; Gini = 2·AUROC − 1."]
    sections.append(Section(f"{split.capitalize()} metrics", "\n".join(body), figures))

    # Calibration
    calib = {"uncalibrated": m.calibration_summary(probs, labels, options.ece_bins)}
    curves = {"model": m.reliability_bins(probs, labels, options.ece_bins)}
    has_val = val is not None and len(val.labels) > 0
    if options.temperature_scaling and has_val:
        temperature = m.fit_temperature(val.probs, val.labels)
        scaled = m.apply_temperature(probs, temperature)
        calib["temperature_scaled"] = m.calibration_summary(scaled, labels, options.ece_bins)
        curves[f"temperature {temperature:.2f}"] = m.reliability_bins(scaled, labels, options.ece_bins)
        results["temperature"] = temperature
    results["calibration"] = calib
    plots.reliability_png(curves, out / "reliability_diagram.png")
    body = [
        f"ECE: top-label confidence in {options.ece_bins} equal-width bins over [0, 1], weighted by the share of "
        "rows per bin. Brier: "
        + ("mean (p_positive − y)²." if binary else "mean Σ_k (p_k − onehot_k)².")
        + " NLL: mean −log p(true class).",
        "",
        table([{"": k.replace("_", " "), **v} for k, v in calib.items()], ["", "ece", "brier", "nll"]),
    ]
    if "temperature" in results:
        body += [
            "",
            f"Temperature scaling fitted on validation (NLL, L-BFGS): T = {results['temperature']:.3f} "
            "(T > 1: the model was over-confident). It changes confidence, not the ranking (AUROC).",
        ]
    sections.append(Section("Calibration", "\n".join(body), ["reliability_diagram.png"]))

    if not binary:
        return sections, results

    favorable = favorable_id(label_names, options.favorable_label)
    score = probs[:, 1]
    val_score = val.probs[:, 1] if has_val else None
    thresholds = m.threshold_table(
        score, labels, val_score, val.labels if has_val else None, options.approval_rate, favorable
    )
    results["thresholds"] = thresholds
    body = [
        f"Positive class: **{label_names[1]}** (predicted when p ≥ threshold); approved = predicted "
        f"**{label_names[favorable]}**. Thresholds other than 0.5 are chosen on validation and applied to {split}.",
        "",
        table(
            [{"rule": k.replace("_", " "), **v} for k, v in thresholds.items()],
            ["rule", "threshold", "precision", "recall", "f1", "accuracy", "approval_rate"],
        ),
    ]
    sections.append(Section("Threshold analysis", "\n".join(body)))

    if groups is not None:
        base, rule = operating_threshold(options, val_score, val.labels if has_val else None, favorable)
        predicted = (score >= base).astype(int)
        fairness = {"before": fair.fairness_report(labels, predicted, score, groups, favorable)}
        plots.group_rates_png(fairness["before"]["by_group"], out / "fairness_by_group.png")
        body = [
            f"Rates of the favorable outcome (**{label_names[favorable]}**) per group at threshold {base:.4f} "
            f"({rule}): "
            "selection rate = share approved; TPR = share approved among those truly "
            f"{label_names[favorable]} (equal opportunity); FPR = share approved among the others. "
            f"Groups approved at < {fair.FOUR_FIFTHS:.0%} of the most-approved group's rate are flagged "
            "(four-fifths rule).",
            "",
            table(
                [{"group": g, **v} for g, v in fairness["before"]["by_group"].items()],
                ["group", "count", "selection_rate", "tpr", "fpr", "auroc", "impact_ratio", "four_fifths_flag"],
            ),
            "",
            table([{k: v for k, v in fairness["before"].items() if k != "by_group"}]),
        ]
        if options.group_thresholds and has_val and val_groups is not None:
            cuts = fair.equal_opportunity_thresholds(val.probs[:, 1], val.labels, val_groups, base, favorable)
            mitigated = fair.predict_with_group_thresholds(score, groups, cuts, base)
            fairness["group_thresholds"] = cuts
            fairness["after"] = fair.fairness_report(labels, mitigated, score, groups, favorable)
            compare = []
            for name, pred in (("one threshold", predicted), ("group thresholds", mitigated)):
                key = "before" if name == "one threshold" else "after"
                report = fairness[key]
                compare.append(
                    {
                        "rule": name,
                        "accuracy": float((pred == labels).mean()),
                        "approval_rate": float((pred == favorable).mean()),
                        "equal_opportunity_difference": report["equal_opportunity_difference"],
                        "equalized_odds_difference": report["equalized_odds_difference"],
                        "disparate_impact_ratio": report["disparate_impact_ratio"],
                    }
                )
            body += [
                "",
                "**Mitigation**: a threshold per group, chosen on validation so that each group's TPR matches the "
                f"overall TPR at {base:.4f} (equal opportunity): "
                + ", ".join(f"{g}: {t:.3f}" for g, t in cuts.items())
                + f". Before/after on {split}:",
                "",
                table(compare),
            ]
        results["fairness"] = fairness
        sections.append(Section("Fairness", "\n".join(body), ["fairness_by_group.png"]))
    return sections, results


def explanation_section(
    out: Path,
    explanations: list[attr.Explanation],
    label_names: list[str],
    k: int,
) -> tuple[Section, dict[str, Any]]:
    """Write ``explanations.html`` (and the feature chart for tables) and summarise the top words."""
    positive_meaning = label_names[1] if len(label_names) == 2 else "the predicted class"
    (out / "explanations.html").write_text(
        attr.explanations_html(explanations, "finexp explanations", positive_meaning)
    )
    words = attr.top_words(explanations, k)
    features = attr.feature_importance(explanations)
    body = [
        f"Integrated gradients over the token embeddings for {len(explanations)} examples "
        f"(binary: towards **{positive_meaning}**; multi-class: towards the predicted class); the highlighted texts "
        "are in `explanations.html`.",
        "",
        "Words pushing towards the explained class (total attribution across the examples):",
        "",
        table(words["positive"], ["word", "total", "mean", "count"]) or "(none)",
        "",
        "Words pushing against it:",
        "",
        table(words["negative"], ["word", "total", "mean", "count"]) or "(none)",
    ]
    figures = []
    if features:
        plots.bar_png(
            {c: v["mean_abs"] for c, v in features.items()},
            "feature importance (mean |IG|)",
            "mean |attribution| per example",
            out / "feature_importance.png",
        )
        figures.append("feature_importance.png")
        rows = sorted(({"column": c, **v} for c, v in features.items()), key=lambda r: -r["mean_abs"])
        body += [
            "",
            'Per source column (attributions of its "<phrase>: <value>" piece summed):',
            "",
            table(rows, ["column", "mean_abs", "mean"]),
        ]
    results = {
        "top_words": words,
        "feature_importance": features,
        "examples": [asdict(e) for e in explanations],
    }
    return Section("Explanations", "\n".join(body), figures), results


def _training_curve(out: Path, monitor: str | None) -> Section | None:
    csv = out / "csv" / "metrics.csv"
    if not csv.is_file():
        return None
    history = pd.read_csv(csv)
    if "federated/round" in history:  # a federation: the global model after each round (round 0: before any)
        return _rounds_curve(history, monitor, out)
    if "epoch" not in history:
        return None
    wanted = [c for c in ("train/loss_epoch", "val/loss", monitor) if c and c in history]
    last_epoch = history["epoch"].max()
    if "train/loss_epoch" in history and history["train/loss_epoch"].notna().any():
        last_epoch = history.loc[history["train/loss_epoch"].notna(), "epoch"].max()
    series = {}
    for column in wanted:  # the fit's epochs only (the final validate/test of the best checkpoint log one more)
        points = history[["epoch", column]].dropna()
        points = points[points["epoch"] <= last_epoch].groupby("epoch")[column].last()
        if len(points):
            series[column] = (points.index.tolist(), points.tolist())
    if not series:
        return None
    plots.training_curve_png(series, out / "training_curve.png")
    return Section(
        "Training curve", f"Per epoch, from `csv/metrics.csv` ({', '.join(series)}).", ["training_curve.png"]
    )


def _rounds_curve(history: pd.DataFrame, monitor: str | None, out: Path) -> Section | None:
    """The federation's global model on the coordinator's val split after each round: a plot and a table."""
    rounds = history.dropna(subset=["federated/round"]).groupby("federated/round").last()
    wanted = [c for c in (monitor, "val/loss") if c and c in rounds and rounds[c].notna().any()]
    if not wanted:
        return None
    series = {c: (rounds.index.astype(int).tolist(), rounds[c].tolist()) for c in wanted}
    plots.training_curve_png(series, out / "training_curve.png", x_label="round")
    rows = [
        {"round": int(r), **{c: rounds.at[r, c] for c in wanted}}
        | ({"round s": rounds.at[r, "federated/round_s"]} if "federated/round_s" in rounds else {})
        for r in rounds.index
    ]
    body = (
        f"The global model on the coordinator's validation split after each round (round 0: before any), from "
        f"`csv/metrics.csv`; the best round's model is the one tested.\n\n{table(rows)}"
    )
    return Section("Federated rounds", body, ["training_curve.png"])


def _search_summary(metrics: dict[str, Any]) -> str:
    """How the settings of a ``search=budgeted`` run were chosen (its ``search/*`` metrics; search.json has all)."""
    budget = metrics.get("search/budget_minutes")
    chosen = ", ".join(
        f"`{key.removeprefix('search/best/')}={value:.3g}`"
        if isinstance(value, float)
        else f"`{key.removeprefix('search/best/')}={value}`"
        for key, value in metrics.items()
        if key.startswith("search/best/")
    )
    return (
        f"{metrics['search/trials']} trials ({metrics['search/trials_complete']} complete, "
        f"{metrics['search/trials_pruned']} pruned, {metrics['search/trials_failed']} failed) of at most "
        f"{metrics['search/max_trials']}"
        + (f" in a {budget:g}-minute budget" if budget is not None else "")
        + f", stopped by {metrics['search/stopped_by']}, scored on the validation split only; the best, trial "
        f"{metrics['search/best_trial']} ({metrics.get('monitor')} {metrics['search/best_val']:.4f}: {chosen}), was "
        "trained again for this run, the only one tested. Every trial: `search.json`."
    )


def run_sections(
    config: dict[str, Any],
    label_names: list[str],
    split_counts: dict[str, list[int]],
    fingerprints: dict[str, str],
    metrics: dict[str, Any],
    command: str | None,
) -> list[Section]:
    """The model-card header: task and data, model and strategy, privacy (when on), the reproducing command."""
    task, data, model = config["task"], config["data"], config["model"]  # a resolved config: every group is there
    body = [f"**{task.get('name')}** — {task.get('description') or task.get('problem')}", ""]
    source = data.get("rdataset") or data.get("path") or data.get("train_path")
    body += [
        f"Source: `{source}`; labels: {', '.join(label_names)}"
        + (f"; positive class: **{label_names[1]}**" if len(label_names) == 2 else "")
        + (
            f"; sensitive column (kept out of the input): `{task['sensitive_column']}`"
            if task.get("sensitive_column")
            else ""
        ),
        "",
    ]
    rows = []
    for split, counts in split_counts.items():
        total = sum(counts)
        row = {"split": split, "rows": total}
        row |= {name: f"{c} ({c / total:.1%})" if total else "0" for name, c in zip(label_names, counts, strict=True)}
        row["fingerprint"] = f"`{fingerprints.get(split, '')[:16]}`"
        rows.append(row)
    body.append(table(rows))
    sections = [Section("Task and data", "\n".join(body))]

    # Hydra's group choices: finexp-train records them, finexp-eval has none; a hand-written config (a report of
    # predictions made elsewhere) may name no adapter at all
    choices = config.get("choices")
    adapter = choices["adapter"] if choices else target_of(config.get("adapter")) or "?"
    trainable = metrics.get("params/trainable")
    lines = [
        f"Model: **{model.get('name')}** (`{model.get('name_or_path') or 'random init from model.architecture'}`), "
        f"pooling {model.get('pooling')}; strategy: **{adapter}**.",
    ]
    if trainable is not None:
        lines.append(
            f"Trainable parameters: {int(trainable):,} of {int(metrics['params/total']):,} "
            f"({metrics['params/trainable_pct']:.2f}%)."
        )
    optimizer = config["optimizer"]
    line = f"Optimizer `{optimizer.get('_target_')}` lr {optimizer.get('lr')}; seed {config.get('seed')}"
    if "time/fit_s" in metrics:
        line += f"; epochs run: {metrics.get('epochs')}; fit time {metrics['time/fit_s']:.1f} s"
    lines.append(line + ".")
    sections.append(Section("Model and strategy", "\n\n".join(lines)))

    if "search/trials" in metrics:  # search=budgeted: this run is the best of the trials, trained again
        sections.append(Section("Hyper-parameter search", _search_summary(metrics)))

    privacy = config["privacy"]
    if privacy["name"] != "none" or privacy.get("mask_pii"):  # absent from a hand-written config: off
        settings = {k: v for k, v in privacy.items() if not isinstance(v, dict | list)}
        body = [
            f"Mechanism: **{privacy.get('name')}**"
            + (
                " (differential privacy: ε, δ below)."
                if privacy.get("name") != "none"
                else " (no differential privacy; personal data in the text masked before training)."
            ),
            "",
            table([settings]),
        ]
        spent = {k: v for k, v in metrics.items() if k.startswith(("privacy/", "pii/"))}
        if spent:
            body += ["", "Spent / measured:", "", table([spent])]
        sections.append(Section("Privacy", "\n".join(body)))

    if command:
        sections.append(
            Section(
                "Reproduce",
                f"```\n{command}\n```\nThe resolved config is `config.yaml`; versions, "
                "git commit and data fingerprints are in `run_info.json`.",
            )
        )
    return sections


def log_images(loggers: list[Any], out: Path, names: list[str]) -> None:
    """Send the report's figures to every active W&B logger as images (keys ``analysis/<figure>``) and to every
    MLflow logger as artifacts (``analysis/<figure>.png``, with ``report.md`` when written)."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for name in names:
                logger.log_image(key=f"analysis/{Path(name).stem}", images=[str(out / name)])
        elif isinstance(logger, MLFlowLogger):
            for path in [out / name for name in names] + [out / "report.md"]:
                if path.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="analysis")


def scalar_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of the analysis, named ``{split}/{metric}`` for metrics.json."""
    split = results["split"]
    out: dict[str, float] = {}
    cls = results["classification"]
    if "gini" in cls:
        out[f"{split}/gini"] = cls["gini"]
    calib = results["calibration"]
    out[f"{split}/ece"] = calib["uncalibrated"]["ece"]
    out[f"{split}/brier"] = calib["uncalibrated"]["brier"]
    if "temperature_scaled" in calib:
        out[f"{split}/ece_scaled"] = calib["temperature_scaled"]["ece"]
        out["analysis/temperature"] = results["temperature"]
    if "fairness" in results:
        before = results["fairness"]["before"]
        out[f"{split}/demographic_parity_difference"] = before["demographic_parity_difference"]
        out[f"{split}/equal_opportunity_difference"] = before["equal_opportunity_difference"]
        out[f"{split}/equalized_odds_difference"] = before["equalized_odds_difference"]
        out[f"{split}/disparate_impact_ratio"] = before["disparate_impact_ratio"]
    return out


def analyze(
    out: str | Path,
    module: nn.Module,
    datamodule: Any,
    options: AnalysisOptions,
    split: str = "test",
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
    loggers: list[Any] | None = None,
    title: str = "finexp run report",
    evaluated: Predictions | None = None,
) -> dict[str, float]:
    """Analyse a trained classifier on ``split`` and write ``analysis.json``, the PNGs and ``report.md/.html``.

    Args:
        out: the run directory.
        module: maps ``(input_ids, attention_mask)`` to logits and holds the classifier as ``module.model``.
        datamodule: a prepared :class:`~finexp.data.datamodule.ClassificationDataModule`.
        options: what to compute.
        split: ``test``, or ``val`` when the test split must stay untouched (no val-fitted extras then).
        config: the run's resolved config as plain containers (for the model card); None: those sections are left
            out.
        metrics: the run's final metrics (parameters, fit time, privacy spend).
        command: the command line that reproduces the run.
        loggers: Lightning loggers; W&B ones get the figures as images.
        title: the report's heading.
        evaluated: predictions of ``split`` already made (None: predicted here).

    Returns:
        Headline numbers (``test/ece``, ``test/brier``, ``test/gini``, fairness differences, ...) for metrics.json.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = datamodule.label_names
    if evaluated is None:
        evaluated = predict(module, getattr(datamodule, f"{split}_dataloader")())
    has_val = split == "test" and len(datamodule.datasets.get("val", [])) > 0
    val = predict(module, datamodule.val_dataloader()) if has_val else None
    sensitive = datamodule.columns.sensitive
    groups = val_groups = None
    if sensitive and datamodule.splits is not None and len(labels) == 2:
        groups = getattr(datamodule.splits, split)[sensitive].to_numpy()
        val_groups = datamodule.splits.val[sensitive].to_numpy() if has_val else None

    sections: list[Section] = []
    if config is not None:
        counts = {name: ds.labels.bincount(minlength=len(labels)).tolist() for name, ds in datamodule.datasets.items()}
        sections += run_sections(config, labels, counts, datamodule.fingerprints, metrics or {}, command)
        curve = _training_curve(out, (metrics or {}).get("monitor"))
        if curve is not None:
            sections.insert(2, curve)
    evaluation, results = evaluation_sections(out, labels, evaluated, val, options, split, groups, val_groups)
    sections += evaluation

    if options.explain:
        n = min(options.explain_examples, len(evaluated.labels))
        separator = dict(datamodule.columns.serializer_options).get("separator", ". ")
        explanations = attr.integrated_gradients(
            getattr(module, "model", module),
            datamodule.tokenizer,
            datamodule.texts[split][:n],
            labels,
            evaluated.labels[:n].tolist(),
            datamodule.max_length,
            options.ig_steps,
            datamodule.serialized_columns,
            separator,
        )
        section, results["explanations"] = explanation_section(out, explanations, labels, options.top_words)
        sections.append(section)

    # the reproducing command closes the report
    sections = [s for s in sections if s.title != "Reproduce"] + [s for s in sections if s.title == "Reproduce"]
    write_json(out / "analysis.json", json.loads(json.dumps(results, default=_jsonable)))
    write_report(out, title, sections)
    figures = [f for s in sections for f in s.figures]
    if loggers:
        log_images(loggers, out, figures)
    log.info("report written: %s", out / "report.html")
    return scalar_metrics(results)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
