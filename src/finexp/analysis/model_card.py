"""The run report (a model card): ``report.md`` and a self-contained ``report.html`` with the figures embedded.

A section is written only when it applies (no fairness section without a sensitive column, no privacy section
without a privacy mechanism, ...): absent, never empty.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import markdown


@dataclass
class Section:
    title: str
    body: str
    figures: list[str] = field(default_factory=list)  # PNG file names in the report's directory


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A Markdown table of dict rows (floats rounded to ``digits``)."""
    if not rows:
        return ""
    columns = list(columns or rows[0])

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            return "**yes**" if value else "no"
        if isinstance(value, float):
            return "n/a" if value != value else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    parts = [f"# {title}", ""]
    for s in sections:
        parts += [f"## {s.title}", "", s.body.strip(), ""]
        parts += [f"![{Path(f).stem}]({f})\n" for f in s.figures]
    return "\n".join(parts).rstrip() + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
    "th{background:#f3f3f3}img{max-width:100%;margin:.4em 0}code,pre{background:#f6f6f6}pre{padding:.6em;"
    "overflow-x:auto}"
)


def render_html(markdown_text: str, directory: Path) -> str:
    """Markdown -> HTML with every local PNG inlined as a data URI, so the one file opens anywhere."""
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])

    def inline(match: re.Match) -> str:
        path = directory / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^":]+\.png)"', inline, body)
    title = re.search(r"<h1>(.*?)</h1>", body)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title.group(1) if title else 'finexp report'}"
        f"</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(directory: str | Path, title: str, sections: Sequence[Section]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``directory``; returns their paths."""
    directory = Path(directory)
    text = render_markdown(title, sections)
    md_path, html_path = directory / "report.md", directory / "report.html"
    md_path.write_text(text)
    html_path.write_text(render_html(text, directory))
    return md_path, html_path
