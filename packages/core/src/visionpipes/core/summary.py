"""Summaries of the domain pipelines: the metrics each `pipelines/<domain>/dvc.yaml` declares,
read back from the files its stages wrote, flattened into one table.

It reads YAML and JSON only; it never runs a stage (that is DVC's job).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from visionpipes.core.errors import UserError


def declared_metrics(pipeline_dir: Path) -> list[Path]:
    """The metrics files declared in `<pipeline_dir>/dvc.yaml`, resolved against that folder.

    Raises:
        UserError: if the dvc.yaml is missing or malformed.
    """
    dvc_yaml = pipeline_dir / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise UserError(f"{dvc_yaml} does not exist.")
    try:
        data = yaml.safe_load(dvc_yaml.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{dvc_yaml} is not valid YAML: {err}") from None
    paths: list[Path] = []
    for stage in (data.get("stages") or {}).values():
        for entry in stage.get("metrics", []) or []:
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            paths.append((pipeline_dir / name).resolve())
    for entry in data.get("metrics", []) or []:
        paths.append((pipeline_dir / entry).resolve())
    return paths


def _flatten(data: Any, prefix: str = "") -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix[:-1]] = float(data)
    elif isinstance(data, str):
        out[prefix[:-1]] = data
    return out


def domain_metrics(pipeline_dir: Path) -> dict[str, float | str]:
    """All declared metrics of one pipeline, flattened (`file.key.subkey -> value`).

    Raises:
        UserError: if a declared metrics file is missing (run the pipeline first).
    """
    metrics: dict[str, float | str] = {}
    for path in declared_metrics(pipeline_dir):
        if not path.is_file():
            raise UserError(f"metrics file {path} does not exist; run `dvc repro {pipeline_dir}` first.")
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        metrics.update(_flatten(data))
    return metrics


def format_summary(rows: dict[str, dict[str, float | str]]) -> str:
    """One aligned text table: domain, metric, value."""
    lines = [("domain", "metric", "value")]
    for domain, metrics in rows.items():
        for key, value in metrics.items():
            lines.append((domain, key, f"{value:.4f}" if isinstance(value, float) else str(value)))
    widths = [max(len(row[i]) for row in lines) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in lines)


def write_summary(domain: str, pipeline_dir: Path, out: Path) -> dict[str, float | str]:
    """Write `out` (JSON) with the domain's declared metrics; return them."""
    from visionpipes.core.io import write_json

    metrics = domain_metrics(pipeline_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"domain": domain, "metrics": metrics})
    return metrics
