"""``finexp-report``: a sweep's runs -> tables with confidence intervals and paired significance tests, and figures.

    finexp-report outputs/credit_scoring/multiruns/2026-11-29/08-00-00
    finexp-report outputs/ --by privacy.epsilon --x privacy.epsilon
    finexp-report outputs/ --by model --x time/epoch_s
    finexp-report outputs/sentiment/multiruns/<date>/<time> --by method --x data.k_shot --curve   # learning curve
    finexp-report outputs/benchmark_suite/<date>/<time> --suite --baseline strategy=full --format latex --reproduce

Every directory below the given one that holds ``run_info.json`` or ``error.json`` is a run (:mod:`finexp.runs_table`).
Completed runs are grouped by ``--by`` (a config group's chosen option such as ``adapter``, ``strategy`` = adapter
and method, or any dotted config key such as ``privacy.epsilon``); runs of a group that differ only in ``seed`` or
``data.cv.fold`` are aggregated, and runs that differ in anything else become separate rows named by what differs.

Each row: mean ± std over seeds, a 95% Student-t interval over seeds, a 95% bootstrap interval over test rows (from
each run's ``test_predictions.csv``), and against a baseline row (``--baseline key=value``, default the best row)
the paired bootstrap difference with its interval and p-value and McNemar's test on accuracy, Holm-adjusted across
the table's comparisons; ``†`` marks differences significant at ``--alpha``. ``--suite``: one table with strategies
as rows and tasks as columns, average ranks, the Friedman test and the Nemenyi critical-difference diagram.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finexp import FinexpError

if TYPE_CHECKING:  # pandas, scipy and torch load inside write_report: finexp-report --help answers without them
    import pandas as pd

    from finexp.report.compare import Options
    from finexp.runs_table import Run

# The defaults finexp-report's --help shows (the same as finexp.report.compare's; tests/test_cli_imports.py checks).
DEFAULT_X = "params/trainable"
FORMATS = ("markdown", "latex", "csv", "html")


def __getattr__(name: str) -> Any:
    """``Run``, ``find_runs``, ``summarize`` and ``Options``, imported on first use."""
    if name in ("Run", "find_runs"):
        from finexp import runs_table

        return getattr(runs_table, name)
    if name in ("summarize", "Options"):
        from finexp.report import compare

        return getattr(compare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Run", "find_runs", "main", "summarize", "write_report"]


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------
def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    by: str = "adapter",
    x: str = DEFAULT_X,
    scale: str = "auto",
    curve: bool = False,
    *,
    suite_mode: bool = False,
    options: Options | None = None,
    formats: tuple[str, ...] = ("markdown",),
    reproduce: bool = False,
) -> pd.DataFrame:
    """Write ``report.md``, ``report.csv`` and ``report.png`` (``cd_diagram.png`` for a suite; ``report.tex`` and
    ``report.html`` when ``formats`` asks) for the runs under ``root``; returns the table (long form for a suite).

    ``curve``: also a learning curve of the primary metric against ``x``, one line per ``by`` value with a ± std
    band (``curve.png``, ``curve.csv``, a table in ``report.md``; :mod:`finexp.learning_curve`).
    """
    from finexp import stats as st
    from finexp.report.compare import (
        Options,
        _frame,
        _no_baseline,
        _Predictions,
        _sort,
        adjust,
        compare,
        settings_of,
    )
    from finexp.report.render import _html, _latex, _markdown, _plot
    from finexp.report.reproduce import reproduce_section
    from finexp.report.suite import _suite_latex, _suite_markdown, suite
    from finexp.runs_table import find_runs

    options = options or Options()
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise FinexpError(f"--format {','.join(unknown)}: unknown; choose from {', '.join(FORMATS)}")
    if not 0 < options.alpha < 1:
        raise FinexpError(f"--alpha {options.alpha}: must be in (0, 1)")
    if options.resamples < 10:
        raise FinexpError(f"--resamples {options.resamples}: must be >= 10")
    if options.baseline not in (None, "best") and "=" not in options.baseline:
        raise FinexpError(f"--baseline {options.baseline!r}: expected key=value (e.g. adapter=full) or best")
    root = Path(root).resolve()
    out = Path(out_dir) if out_dir else root
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(root)
    if not runs:
        raise FinexpError(f"{root}: no runs found (no run_info.json or error.json below it)")
    cache = _Predictions(options)
    if suite_mode:
        result = suite(runs, by, x, options, cache)
        frame = result.frame
        markdown = _suite_markdown(result, runs, by, root, options)
        latex = _suite_latex(result, by, options) if not frame.empty else "% no completed runs\n"
        if result.friedman is not None:
            title = f"average rank over {len(result.tasks)} tasks (Nemenyi CD, α = {options.alpha})"
            st.plot_cd_diagram(result.friedman.strategies, result.friedman.average_ranks, result.cd,
                               str(out / "cd_diagram.png"), title)  # fmt: skip
    else:
        settings = settings_of(runs, by)
        if settings and compare(settings, by, options, cache) is None:
            raise _no_baseline(options.baseline, settings)
        adjust(settings, options.alpha)
        frame = _sort(_frame(settings, by, x, options))
        markdown = _markdown(frame, runs, by, root, options)
        latex = _latex(frame, by, options)
        if curve:
            from finexp.learning_curve import curve_markdown, learning_curve, plot_curve

            points = learning_curve(runs, by, x)
            points.to_csv(out / "curve.csv", index=False)
            markdown += f"\n## Learning curve: {x}\n\n" + curve_markdown(points, by, x)
            if not points.empty:
                plot_curve(points, by, x, str(out / "curve.png"), scale)
                markdown += "\n![learning curve](curve.png)\n"
        if not frame.empty:
            _plot(frame, by, x, out / "report.png", scale)
    if cache.errors:
        markdown += "\n## Unreadable test predictions\n\n" + "\n".join(f"- {e}" for e in cache.errors.values()) + "\n"
    if reproduce:
        markdown += "\n" + reproduce_section(runs, root)
    frame.to_csv(out / "report.csv", index=False)
    (out / "report.md").write_text(markdown)
    if "latex" in formats:
        (out / "report.tex").write_text(latex)
    if "html" in formats:
        (out / "report.html").write_text(_html(markdown, out))
    return frame


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``finexp-report``)."""
    parser = argparse.ArgumentParser(
        prog="finexp-report",
        description=(
            "Summarize finexp runs (a sweep directory or any tree of run directories) into tables with confidence "
            "intervals and paired significance tests, and figures."
        ),
        epilog=(
            "examples:\n"
            "  finexp-report outputs/credit_scoring/multiruns/<date>/<time>\n"
            "  finexp-report <sweep> --baseline adapter=full --alpha 0.01 --format latex\n"
            "  finexp-report <suite dir> --suite --baseline strategy=full --format html --reproduce\n"
            "  finexp-report <sweep> --by method --x data.k_shot --curve"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs_dir", help="a multirun directory, or any directory with run directories below it")
    by_help = (
        "group by a config group (adapter, model, method, ...), 'strategy' (adapter and method), or a dotted config "
        "key (privacy.epsilon); default: adapter, and strategy with --suite"
    )
    x_help = f"plot's x axis: a metrics.json key, a group or a config key (default: {DEFAULT_X}, log scale)"
    parser.add_argument("--by", default=None, help=by_help)
    parser.add_argument("--x", default=DEFAULT_X, help=x_help)
    parser.add_argument("--x-scale", choices=("auto", "log", "linear"), default="auto")
    curve_help = "also draw a learning curve: the primary metric against --x, one line per --by value (curve.png)"
    parser.add_argument("--curve", action="store_true", help=curve_help)
    suite_help = "one table of strategies (rows) x tasks (columns), average ranks, Friedman test, CD diagram"
    parser.add_argument("--suite", action="store_true", help=suite_help)
    base_help = "reference row of the paired tests: key=value (adapter=full, strategy=lora) or best (default)"
    parser.add_argument("--baseline", default=None, help=base_help)
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (Holm-adjusted; default 0.05)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the test rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    format_help = "printed format; latex also writes report.tex, html report.html (comma-separated: several)"
    parser.add_argument("--format", default="markdown", help=format_help + f"; one of {', '.join(FORMATS)}")
    reproduce_help = "add the commands, package versions and not-comparable runs (code version, test split)"
    parser.add_argument("--reproduce", action="store_true", help=reproduce_help)
    parser.add_argument("--out", default=None, help="where to write report.* (default: runs_dir)")
    args = parser.parse_args(argv)
    by = args.by or ("strategy" if args.suite else "adapter")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    from finexp.report.compare import Options

    options = Options(args.baseline, args.alpha, args.resamples, args.seed)
    try:
        frame = write_report(
            args.runs_dir, args.out, by, args.x, args.x_scale, args.curve,
            suite_mode=args.suite, options=options, formats=formats, reproduce=args.reproduce,
        )  # fmt: skip
    except FinexpError as err:
        print(f"finexp-report: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    out = Path(args.out or args.runs_dir)
    first = formats[0] if formats else "markdown"
    shown = {"markdown": "report.md", "latex": "report.tex", "csv": "report.csv", "html": "report.md"}[first]
    print((out / shown).read_text(), end="")
    written = ["report.md", "report.csv"] + [
        f for f, k in (("report.tex", "latex"), ("report.html", "html")) if k in formats
    ]
    figures = [f for f in ("report.png", "cd_diagram.png", "curve.png") if (out / f).is_file() and len(frame)]
    print("written: " + ", ".join(str(out / f) for f in written + figures))


if __name__ == "__main__":
    main()
