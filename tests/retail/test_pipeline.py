"""End to end: `dvc repro` of pipelines/retail on a tiny configuration, in a scratch DVC repository
holding a copy of the pipeline (data, train, eval, deploy all run; metrics, plots, ONNX model, index
and model card exist; a second repro has nothing to do), then the deployed index served by a real
`vp-retail serve` on a free loopback port and queried over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "retail"
BIN = Path(sys.executable).parent

TINY = {
    "data": {"synth": {"products": 6, "views": 3, "queries": 1, "size": 48, "seed": 1}},
    "train": {
        "width_multiplier": 0.25,
        "dimension": 16,
        "image_size": 48,
        "epochs": 2,
        "products_per_batch": 4,
        "views_per_product": 2,
    },
    "deploy": {"factory": "HNSW16"},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) and value else value
    return out


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "VISIONPIPES_THREADS": "1"}
    return subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_dvc_repro_tiny_pipeline_then_serve(tmp_path: Path, serve, console_script) -> None:
    console_script("dvc"), console_script("vp-retail")
    repo = tmp_path / "repo"
    pipeline = repo / "pipelines" / "retail"
    pipeline.mkdir(parents=True)
    shutil.copy(PIPELINE / "dvc.yaml", pipeline / "dvc.yaml")
    # The stages list the code they run as deps (issue #11): the copy holds that code too.
    for package in ("retail", "core"):
        src = Path("packages") / package / "src" / "visionpipes" / package
        shutil.copytree(REPO / src, repo / src, ignore=shutil.ignore_patterns("__pycache__"))
    params = _merge(yaml.safe_load((PIPELINE / "params.yaml").read_text()), TINY)
    params["cli"] = str(BIN / "vp-retail")
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _dvc(["init", "--no-scm", "-q"], repo).returncode == 0

    first = _dvc(["repro", "pipelines/retail/dvc.yaml"], repo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("data", "train", "eval", "deploy"):
        assert f"Running stage 'pipelines/retail/dvc.yaml:{stage}'" in first.stdout

    data = repo / "data" / "retail"
    metrics = json.loads((data / "eval" / "metrics.json").read_text())
    assert {"recall_at_1", "recall_at_5", "recall_at_10", "mAP"} <= set(metrics)
    assert metrics["queries"] == 6 and metrics["products"] == 6 and metrics["recall_at_10"] == 1.0
    assert {p.name for p in (data / "eval" / "plots").iterdir()} == {"recall_curve.png", "sample_queries.png"}
    assert json.loads((data / "eval" / "recall.json").read_text())["recall"][0]["k"] == 1
    assert (data / "model" / "dvclive" / "metrics.json").is_file()
    for name in ("model.onnx", "model.json", "MODEL_CARD.md", "deploy.json", "index/manifest.json"):
        assert (data / "deploy" / name).is_file(), name
    card = (data / "deploy" / "MODEL_CARD.md").read_text()
    assert f"recall_at_1: {metrics['recall_at_1']:.4f}" in card and "HNSW16" in card

    second = _dvc(["repro", "pipelines/retail/dvc.yaml"], repo)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Running stage" not in second.stdout, second.stdout

    # Serve the deployed index (a copy: live adds change the DVC output) and query it over HTTP.
    served = tmp_path / "served"
    shutil.copytree(data / "deploy", served)
    server = serve(served, log=tmp_path / "server.log")
    query = sorted((data / "catalog" / "queries").iterdir())[0]
    r = httpx.post(server.url + "/search", params={"k": 3}, files={"image": (query.name, query.read_bytes())}, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and all(h["product_id"].startswith("P") for h in results)
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    image = httpx.get(server.url + results[0]["image_url"], timeout=30)
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "retail_index_products 6" in httpx.get(server.url + "/metrics", timeout=30).text
