"""The Hugging Face model card of an export (``README.md`` with YAML front matter) and the upload to the hub.

The card is built with ``huggingface_hub.ModelCard``: ``library_name``, ``base_model``, ``pipeline_tag``,
``datasets``, ``license`` and ``model-index`` (the run's test metrics from ``metrics.json``) in the front matter; the
body is how to load the directory, then the run's trust report (``report.md``, with the figures it shows copied
beside it) when the run wrote one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from finexp import FinexpError

CARD_FILE = "README.md"
LIBRARIES = {"sentence-transformers": "sentence-transformers", "peft": "peft", "unmerged": "peft"}
FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")


def hub_preflight(repo: str) -> str:
    """Check, before any work, that ``repo`` can be pushed to: online, logged in, token accepted. Returns the token.

    Raises:
        FinexpError: offline (``HF_HUB_OFFLINE``), not logged in, or the hub refused or could not be reached.
    """
    from huggingface_hub import HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false"):
        raise FinexpError(
            f"push_to_hub={repo}: this machine is offline (HF_HUB_OFFLINE is set); nothing was exported. Export "
            f"without push_to_hub and upload later with `hf upload {repo} OUT_DIR`"
        )
    token = get_token()
    if not token:
        raise FinexpError(
            f"push_to_hub={repo}: not logged in to the Hugging Face Hub; nothing was exported. Run `hf auth login` "
            "(or set HF_TOKEN) first"
        )
    try:
        HfApi().whoami(token=token)
    except Exception as err:  # an HTTP refusal or no network: either way, nothing can be uploaded
        raise FinexpError(
            f"push_to_hub={repo}: the Hugging Face Hub refused the login or cannot be reached "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); nothing was exported"
        ) from None
    return token


def push(out: Path, repo: str, token: str) -> str:
    """Upload ``out`` to the hub repo ``repo`` (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(out), commit_message="finexp-export")
    return str(url)


def _dataset(cfg: dict[str, Any]) -> str | None:
    data = cfg.get("data") or {}
    if data.get("rdataset"):
        return str(data["rdataset"])
    source = data.get("path") or data.get("train_path")
    return Path(str(source)).stem if source else None


def run_test_metrics(run_dir: Path) -> dict[str, float]:
    """The run's ``test/*`` numbers from ``metrics.json`` (empty when the run has none)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise FinexpError(f"{path}: not valid JSON ({err})") from None
    return {
        k.removeprefix("test/"): float(v)
        for k, v in metrics.items()
        if k.startswith("test/") and isinstance(v, int | float) and not isinstance(v, bool)
    }


def build_card(
    run_dir: Path,
    cfg: dict[str, Any],
    layout_name: str,
    loads_with: str,
    base_model: str | None,
    license_id: str | None,
    labels: list[str],
) -> tuple[Any, list[Path]]:
    """The export's ``ModelCard`` and the report figures its body shows (to copy beside it)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    task = cfg["task"]["name"]  # the run's config on its schema (finexp.runs.TrainedRun): task.name is required
    name = str(cfg.get("run_name") or task)
    dataset = _dataset(cfg)
    metrics = run_test_metrics(run_dir)
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=dataset or task,
            dataset_name=dataset or task,
            dataset_split="test",
            metric_type=metric,
            metric_name=f"test/{metric}",
            metric_value=value,
        )
        for metric, value in metrics.items()
    ]
    adapter = str(((cfg.get("choices") or {}).get("adapter")) or "")
    data = ModelCardData(
        model_name=name,
        library_name=LIBRARIES.get(layout_name, "transformers"),
        base_model=base_model,
        pipeline_tag="text-classification",
        datasets=[dataset] if dataset else None,
        license=license_id,
        metrics=list(metrics) or None,
        tags=["finexp", task, *([adapter] if adapter else [])],
        eval_results=results or None,
    )
    report = run_dir / "report.md"
    body = report.read_text() if report.is_file() else ""
    figures = [run_dir / f for f in dict.fromkeys(FIGURE.findall(body)) if "/" not in f and (run_dir / f).is_file()]
    labels_line = ", ".join(f"{i}: {n}" for i, n in enumerate(labels))
    load = f"## How to load\n\n```python\n{loads_with}\n```\n\nLabels (logit index: name): {labels_line}.\n"
    if not body:
        rows = "\n".join(f"| test/{k} | {v:.4f} |" for k, v in metrics.items())
        body = f"# {name}\n\n| metric | value |\n|---|---|\n{rows}\n" if rows else f"# {name}\n"
    text = f"---\n{data.to_yaml()}\n---\n\n{load}\n{body}"
    return ModelCard(text), figures


def write_card(out: Path, card: Any, figures: list[Path]) -> Path:
    for figure in figures:
        shutil.copy(figure, out / figure.name)
    path = out / CARD_FILE
    card.save(path)
    return path
