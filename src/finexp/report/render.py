"""Report tables as Markdown, LaTeX and HTML, and the metric-vs-cost figure."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from finexp import stats as st
from finexp.report.compare import COSTS, DAGGER, DEFAULT_X, STAT_COLUMNS, Options
from finexp.runs_table import (
    Run,
)


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _p(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _ci(low: Any, high: Any, digits: int = 4) -> str:
    return "—" if _fmt(low) == "—" else f"[{_fmt(low, digits)}, {_fmt(high, digits)}]"


def _counts(runs: list[Run]) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "unfinished")}
    done, failed, unfinished = counts["completed"], counts["failed"], counts["unfinished"]
    return f"{len(runs)} runs: {done} completed, {failed} failed, {unfinished} unfinished"


def _bad_runs(runs: list[Run], root: Path) -> list[str]:
    lines = []
    for status in ("failed", "unfinished"):
        bad = [r for r in runs if r.status == status]
        if bad:
            lines += ["", f"## {status.capitalize()} runs", ""]
            for run in bad:
                where = run.path.relative_to(root) if run.path.is_relative_to(root) else run.path
                choice = run.info.get("choices", {})
                what = ", ".join(f"{k}={v}" for k, v in choice.items() if k in ("adapter", "model", "task")) or "?"
                lines.append(f"- `{where}` ({what}){': ' + run.error if run.error else ''}")
    return lines


def _comparison_lines(frame: pd.DataFrame, by: str, options: Options) -> list[str]:
    """Sentences saying which differences are significant, and why some rows were not compared."""
    lines = []
    for row in frame.to_dict("records"):
        name = f"{row['task']}: {row[by]}" if "task" in row else str(row[by])
        if row["baseline"]:
            continue
        if isinstance(row["delta"], float) and math.isfinite(row["delta"]):
            verdict = "significant" if row["significant"] else "not significant"
            lines.append(
                f"- {name}: Δ = {row['delta']:+.4f} {_ci(row['delta_low'], row['delta_high'])}, paired bootstrap "
                f"p = {_p(row['p_bootstrap'])} (Holm {_p(row['p_bootstrap_holm'])}), McNemar p = "
                f"{_p(row['p_mcnemar'])} (Holm {_p(row['p_mcnemar_holm'])}): **{verdict}** at α = {options.alpha}"
            )
        elif row["note"]:
            lines.append(f"- {name}: {row['note']}")
    return lines


def _markdown(frame: pd.DataFrame, runs: list[Run], by: str, root: Path, options: Options) -> str:
    lines = [f"# finexp report: {root}", ""]
    lines.append(
        f"{_counts(runs)}. Mean ± std over seeds/folds with a 95% t-interval over seeds and a 95% bootstrap interval "
        f"over test rows ({options.resamples} resamples, seed {options.seed}); costs are means."
    )
    lines.append("")
    if not frame.empty:
        base = frame[frame["baseline"]]
        base_name = str(base[by].iloc[0]) if len(base) else "—"
        header = [by, "metric", "mean ± std", "95% CI (seeds)", "95% CI (rows)", f"Δ vs {base_name} [95% CI]"]
        header += ["p (Holm)", "runs", "trainable %", "s / epoch", "peak MB", "checkpoint MB"]
        extra = [c for c in frame.columns if c not in {by, "metric", "mean", "std", "runs", *COSTS, *STAT_COLUMNS}]
        extra = [c for c in extra if c not in ("ci_low", "ci_high")]
        lines += ["| " + " | ".join(header + extra) + " |", "|" + "---|" * (len(header) + len(extra))]
        for row in frame.to_dict("records"):
            spread = f"{_fmt(row['mean'])} ± {_fmt(row['std'])}" if row["runs"] > 1 else f"{_fmt(row['mean'])}"
            if row["baseline"]:
                delta, p = "baseline", "—"
            elif math.isfinite(row["delta"]):
                mark = f" {DAGGER}" if row["significant"] else ""
                delta, p = (
                    f"{row['delta']:+.4f} {_ci(row['delta_low'], row['delta_high'])}{mark}",
                    _p(row["p_bootstrap_holm"]),
                )
            else:
                delta, p = "—", "—"
            cells = [str(row[by]), row["metric"], spread, _ci(row["ci_low"], row["ci_high"])]
            cells += [_ci(row["boot_low"], row["boot_high"]), delta, p, str(row["runs"])]
            cells += [_fmt(row["trainable_pct"], 3), _fmt(row["epoch_s"], 1), _fmt(row["peak_memory_mb"], 0)]
            cells += [_fmt(row["checkpoint_mb"], 2), *(_fmt(row[c]) for c in extra)]
            lines.append("| " + " | ".join(cells) + " |")
        comparisons = _comparison_lines(frame, by, options)
        if comparisons:
            lines += ["", "## Paired comparisons", "", _test_explanation(options), "", *comparisons]
        lines += ["", "![primary metric against trainable parameters](report.png)"]
    else:
        lines.append("No completed runs.")
    lines += _bad_runs(runs, root)
    return "\n".join(lines) + "\n"


def _test_explanation(options: Options) -> str:
    return (
        f"Against the baseline row on the same test rows: Δ is the primary metric minus the baseline's (mean over "
        f"seeds), its 95% interval and two-sided p-value from a paired bootstrap ({options.resamples} resamples of "
        f"the test rows, both rows scored on each); McNemar's test on accuracy per seed pair (exact binomial below "
        f"{st.EXACT_BELOW} discordant rows, chi-square with continuity correction otherwise; the largest p over the "
        f"seed pairs). p-values are Holm-adjusted across the table's comparisons; {DAGGER}: significant at "
        f"α = {options.alpha} (paired bootstrap, Holm)."
    )


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#")):
        text = text.replace(char, escaped)
    for char, escaped in (("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(char, escaped)
    return text


def _latex_cell(mean: float, low: float, high: float, best: bool, significant: bool, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "--"
    value = f"{mean:.{digits}f}"
    value = rf"\textbf{{{value}}}" if best else value
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if math.isfinite(low) else ""
    return value + interval + (r"$^\dagger$" if significant else "")


def _latex_table(rows: list[list[str]], header: list[str], caption: str, align: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _latex(frame: pd.DataFrame, by: str, options: Options) -> str:
    """A booktabs table of the per-setting report: mean [95% CI over seeds], Δ vs the baseline, Holm p."""
    if frame.empty:
        return "% no completed runs\n"
    higher = st.higher_is_better(str(frame["metric"].iloc[0]))
    best = frame["mean"].max() if higher else frame["mean"].min()
    rows = []
    for row in frame.to_dict("records"):
        cell = _latex_cell(row["mean"], row["ci_low"], row["ci_high"], row["mean"] == best, row["significant"])
        delta = "baseline" if row["baseline"] else ("--" if not math.isfinite(row["delta"]) else f"{row['delta']:+.3f}")
        rows.append([_latex_escape(str(row[by])), cell, delta, _latex_escape(_p(row["p_bootstrap_holm"]))])
    metric = _latex_escape(str(frame["metric"].iloc[0]))
    caption = (
        f"{metric}: mean [95\\% CI over seeds]; best in bold; $^\\dagger$: different from the baseline at "
        f"$\\alpha={options.alpha}$ (paired bootstrap over test rows, Holm-adjusted)."
    )
    return _latex_table(rows, [_latex_escape(by), metric, r"$\Delta$", "$p$ (Holm)"], caption, "lccr")


def _html(text: str, directory: Path) -> str:
    """One self-contained page: the Markdown report as HTML with its PNG figures inlined as data URIs.

    Not finexp.analysis.model_card.render_html: importing finexp.analysis loads captum (seconds per report)."""
    import base64
    import re

    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])

    def inline(match: re.Match) -> str:
        path = directory / match.group(1)
        if not path.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'src="([^":/]+\.png)"', inline, body)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .5em}"
        "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
    )
    head = f"<meta charset='utf-8'><title>finexp report</title><style>{style}</style>"
    return f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>\n"


def _plot(frame: pd.DataFrame, by: str, x: str, path: Path, scale: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    column = "trainable_params" if x == DEFAULT_X else x
    data = frame.dropna(subset=[column, "mean"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in data.to_dict("records"):
        std = 0.0 if math.isnan(row["std"]) else row["std"]
        ax.errorbar(row[column], row["mean"], yerr=std, fmt="o", capsize=4, label=str(row[by]))
        ax.annotate(str(row[by]), (row[column], row["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    positive = (data[column] > 0).all() if len(data) else False
    if scale == "log" or (scale == "auto" and positive and x == DEFAULT_X):
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters" if x == DEFAULT_X else x)
    metrics = sorted(set(data["metric"])) if len(data) else []
    ax.set_ylabel(" / ".join(metrics) or "primary metric")
    ax.set_title(f"{' / '.join(metrics)} by {by} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
