"""Workspace orchestration: the domain pipelines of this repository as DVC sees them, their
metrics, and the headline table `make demo` ends with.

Everything is read through DVC (`dvc.repo.Repo` for the stages and metrics files of one
pipeline, `dvc.api.params_show` for its params); nothing here parses `dvc.yaml` by hand or runs a
stage (that is `dvc repro`'s job). Not part of the network library: no torch, no model code.

The headline keys of a domain are declared in its `pipelines/<domain>/params.yaml`:

    summary:
      headline: [det.AP, det.AP_50, lanes.F1_pix2, lanes.sub_tasks.*.F1_pix2]

Each entry is a flattened metrics key (`file key.subkey`, files merged) or an `fnmatch` pattern
over those keys, in the order shown; a pipeline without the section shows all of its metrics.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visionpipes.core.config import ConfigModel, Field, parse_config
from visionpipes.core.errors import UserError

#: Where a pipeline's headline keys live in its params.yaml.
SUMMARY_SECTION = "summary"
#: What the table's footer points to for the full set of metrics.
FULL_SET_HINT = "All metrics: `dvc metrics show` (or data/summary/<domain>.json after `make demo`)."


class SummaryConfig(ConfigModel):
    """The `summary` section of a pipeline's params.yaml."""

    headline: list[str] = Field(default_factory=list)


def project_root() -> Path:
    """The repository root (the folder with `.dvc/` and `packages/`).

    Raises:
        UserError: if neither the working folder nor this package lies inside the repository.
    """
    from visionpipes.core.settings import find_project_root

    root = find_project_root() or find_project_root(Path(__file__).parent)
    if root is None:
        raise UserError("not inside the visionpipes repository (no folder with .dvc/ and packages/ above here).")
    return root


def _open_repo(path: Path) -> Any:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(str(Repo.find_root(str(path))))
    except NotDvcRepoError:
        raise UserError(f"{path} is not inside a DVC repository.") from None


def domain_pipelines(root: Path) -> list[str]:
    """Names of the domains whose `pipelines/<domain>/dvc.yaml` DVC knows, sorted.

    Raises:
        UserError: if `root` is not a DVC repository, or a dvc.yaml is invalid.
    """
    from dvc.exceptions import DvcException

    pipelines = Path(root).resolve() / "pipelines"
    with _open_repo(Path(root)) as repo:
        try:
            files = {Path(stage.dvcfile.path).resolve() for stage in repo.index.stages}
        except DvcException as err:
            raise UserError(f"DVC cannot read the pipelines of {root}: {err}") from None
    return sorted(f.parent.name for f in files if f.name == "dvc.yaml" and f.parent.parent == pipelines)


def _flatten(data: Any, prefix: str = "") -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix[:-1]] = float(data)
    elif isinstance(data, str):
        out[prefix[:-1]] = data
    return out


def domain_metrics(pipeline_dir: str | os.PathLike) -> dict[str, float | str]:
    """All metrics the stages of `<pipeline_dir>/dvc.yaml` declare, read by DVC and flattened
    (`key.subkey -> value`; numbers as float, booleans and lists left out).

    Raises:
        UserError: if the dvc.yaml is missing or invalid, or a declared metrics file is missing
            or unreadable (run the pipeline first).
    """
    from dvc.exceptions import DvcException

    pipeline_dir = Path(pipeline_dir).resolve()
    dvc_yaml = pipeline_dir / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise UserError(f"{dvc_yaml} does not exist.")
    with _open_repo(pipeline_dir) as repo:
        try:
            shown = repo.metrics.show(stages=[str(dvc_yaml)], on_error="return")
        except DvcException as err:
            raise UserError(f"DVC cannot read the metrics of {dvc_yaml}: {err}") from None
        root = Path(repo.root_dir)
    metrics: dict[str, float | str] = {}
    for rev in shown.values():
        if "error" in rev:
            raise UserError(f"DVC cannot read the metrics of {dvc_yaml}: {rev['error']}")
        for name, result in rev.get("data", {}).items():
            if "error" in result:
                where = os.path.relpath(root / name)
                if isinstance(result["error"], FileNotFoundError):
                    raise UserError(
                        f"metrics file {where} does not exist; run `dvc repro {os.path.relpath(pipeline_dir)}` first."
                    )
                raise UserError(f"metrics file {where} cannot be read: {result['error']}")
            metrics.update(_flatten(result.get("data")))
    return metrics


def headline_keys(pipeline_dir: str | os.PathLike) -> list[str]:
    """The `summary.headline` keys (or patterns) of `<pipeline_dir>/params.yaml`, read with
    `dvc.api.params_show`; empty when the file or the section is absent.

    Raises:
        UserError: if the section is malformed (unknown key, not a list of strings).
    """
    import dvc.api

    pipeline_dir = Path(pipeline_dir).resolve()
    params = pipeline_dir / "params.yaml"
    if not params.is_file():
        return []
    with _open_repo(pipeline_dir) as repo:
        values = dvc.api.params_show(str(params), repo=repo.root_dir)
    config = parse_config(SummaryConfig, values.get(SUMMARY_SECTION), source=f"{params}:{SUMMARY_SECTION}")
    return config.headline


def select_headline(metrics: Mapping[str, float | str], keys: Sequence[str]) -> list[tuple[str, float | str | None]]:
    """The rows of `metrics` that `keys` name (exact keys or `fnmatch` patterns), in the order of
    `keys`, each metric once; a key that matches nothing gives one row with the value None. No
    keys: every metric.

    Example:
        >>> select_headline({"a.x": 1.0, "b.x": 2.0, "c": 3.0}, ["c", "*.x", "d"])
        [('c', 3.0), ('a.x', 1.0), ('b.x', 2.0), ('d', None)]
    """
    if not keys:
        return list(metrics.items())
    rows: list[tuple[str, float | str | None]] = []
    seen: set[str] = set()
    for key in keys:
        found = [k for k in metrics if k == key or fnmatch.fnmatchcase(k, key)]
        if not found:
            rows.append((key, None))
        for k in found:
            if k not in seen:
                seen.add(k)
                rows.append((k, metrics[k]))
    return rows


def _cell(value: float | str | None) -> str:
    if value is None:
        return "missing"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_summary(rows: Mapping[str, Sequence[tuple[str, float | str | None]]], *, footer: str | None = None) -> str:
    """One aligned text table (domain, metric, value), and `footer` under it.

    Example:
        >>> print(format_summary({"core": [("best.accuracy", 0.7)]}))
        domain  metric          value
        core    best.accuracy  0.7000
    """
    lines = [("domain", "metric", "value")]
    for domain, metrics in rows.items():
        lines.extend((domain, key, _cell(value)) for key, value in metrics)
    widths = [max(len(row[i]) for row in lines) for i in range(3)]
    text = "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in lines)
    return f"{text}\n{footer}" if footer else text


def headline_table(pipeline_dirs: Mapping[str, str | os.PathLike]) -> str:
    """The headline table of several pipelines (`{domain: pipeline folder}`), with the footer that
    points to the full set.

    Raises:
        UserError: as `domain_metrics` and `headline_keys`.
    """
    rows = {
        domain: select_headline(domain_metrics(folder), headline_keys(folder))
        for domain, folder in pipeline_dirs.items()
    }
    return format_summary(rows, footer=FULL_SET_HINT)


def write_summary(domain: str, pipeline_dir: str | os.PathLike, out: str | os.PathLike) -> dict[str, float | str]:
    """Write `out` (JSON: the domain and all its declared metrics, flattened) atomically; return
    the metrics.

    Raises:
        UserError: as `domain_metrics`.
    """
    from visionpipes.core.io import write_json

    metrics = domain_metrics(pipeline_dir)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"domain": domain, "metrics": metrics})
    return metrics
