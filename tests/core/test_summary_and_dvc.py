"""The DVC wiring every domain uses, in a real DVC repo: a root stage named `pipelines/<domain>`
depending on the domain's deploy output makes `dvc repro pipelines/<domain>` run the whole
pipeline, a second run skips everything, and `vp-core summary` collects the declared metrics; the
workspace module reads metrics and headline keys through DVC and prints the short table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visionpipes.core.errors import UserError
from visionpipes.core.workspace import (
    FULL_SET_HINT,
    domain_metrics,
    domain_pipelines,
    headline_keys,
    headline_table,
    select_headline,
)

BIN = Path(sys.executable).parent
PY = sys.executable


def _write_toy_repo(root: Path) -> None:
    pipe = root / "pipelines" / "toy"
    pipe.mkdir(parents=True)
    (pipe / "params.yaml").write_text("train:\n  factor: 2\nsummary:\n  headline: [nested.f1]\n")
    d = "../../data/toy"
    stages = {
        "data": {"cmd": f"{PY} -c \"open('{d}/raw.txt','w').write('3')\"", "outs": [f"{d}/raw.txt"]},
        "train": {
            "cmd": f"{PY} -c \"import yaml; f=yaml.safe_load(open('params.yaml'))['train']['factor']; "
            f"open('{d}/model.txt','w').write(str(int(open('{d}/raw.txt').read())*f))\"",
            "deps": [f"{d}/raw.txt"], "params": ["train.factor"], "outs": [f"{d}/model.txt"],
        },
        "eval": {
            "cmd": f"{PY} -c \"import json; json.dump({{'score': int(open('{d}/model.txt').read()), "
            f"'nested': {{'f1': 0.5}}}}, open('{d}/metrics.json','w'))\"",
            "deps": [f"{d}/model.txt"], "metrics": [{f"{d}/metrics.json": {"cache": False}}],
        },
        "deploy": {
            "cmd": f"{PY} -c \"open('{d}/deployed.txt','w').write(open('{d}/model.txt').read())\"",
            "deps": [f"{d}/model.txt", f"{d}/metrics.json"], "outs": [f"{d}/deployed.txt"],
        },
    }
    (pipe / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / "data" / "toy").mkdir(parents=True)
    root_stage = {
        "cmd": f"{BIN / 'vp-core'} summary pipelines/toy --out data/summary/toy.json",
        "deps": ["data/toy/deployed.txt"],
        "outs": [{"data/summary/toy.json": {"cache": False}}],
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"pipelines/toy": root_stage}}, sort_keys=False))


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dvc"), *args], cwd=root, capture_output=True, text=True, timeout=300)


def test_root_stage_reproduces_the_whole_domain_pipeline(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert _dvc(tmp_path, "init", "-q").returncode == 0
    _dvc(tmp_path, "config", "core.analytics", "false")
    _write_toy_repo(tmp_path)
    first = _dvc(tmp_path, "repro", "pipelines/toy")
    assert first.returncode == 0, first.stderr
    for stage in ("data", "train", "eval", "deploy", "pipelines/toy"):
        assert f"Running stage '{stage if '/' in stage else 'pipelines/toy/dvc.yaml:' + stage}'" in first.stdout
    summary = json.loads((tmp_path / "data" / "summary" / "toy.json").read_text())
    assert summary == {"domain": "toy", "metrics": {"score": 6.0, "nested.f1": 0.5}}
    # the summary stage prints the headline rows only, and where the full set is
    assert "nested.f1" in first.stdout and FULL_SET_HINT in first.stdout
    second = _dvc(tmp_path, "repro", "pipelines/toy")
    assert second.returncode == 0 and "Running stage" not in second.stdout
    # a changed param re-runs train and everything downstream, not data
    (tmp_path / "pipelines" / "toy" / "params.yaml").write_text("train:\n  factor: 5\n")
    third = _dvc(tmp_path, "repro", "pipelines/toy")
    assert "Running stage 'pipelines/toy/dvc.yaml:data'" not in third.stdout
    assert "Running stage 'pipelines/toy/dvc.yaml:train'" in third.stdout
    assert json.loads((tmp_path / "data" / "toy" / "metrics.json").read_text())["score"] == 15


def _init_repo(root: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert _dvc(root, "init", "-q").returncode == 0


def test_domain_metrics_headline_and_table(tmp_path: Path) -> None:
    _init_repo(tmp_path)
    pipe = tmp_path / "pipelines" / "x"
    pipe.mkdir(parents=True)
    (tmp_path / "pipelines" / "y").mkdir()  # no dvc.yaml: not a pipeline
    (pipe / "dvc.yaml").write_text(
        "stages:\n  eval:\n    cmd: 'true'\n    metrics:\n      - m.json:\n          cache: false\n"
        "      - ../../data/x/lanes.json:\n          cache: false\n"
    )
    assert domain_pipelines(tmp_path) == ["x"]
    with pytest.raises(UserError, match=re.escape("m.json does not exist; run `dvc repro")):
        domain_metrics(pipe)
    (pipe / "m.json").write_text(json.dumps({"dice": {"mean": 0.9, "TC": 0.8, "WT": 0.7}, "epochs": 3, "ok": True}))
    (tmp_path / "data" / "x").mkdir(parents=True)
    classes = {f"class_{i}": {"F1_pix2": i / 100} for i in range(300)}
    (tmp_path / "data" / "x" / "lanes.json").write_text(json.dumps({"lanes": {"F1_pix2": 0.8, "classes": classes}}))
    metrics = domain_metrics(pipe)
    assert metrics["dice.mean"] == 0.9 and metrics["epochs"] == 3.0 and "ok" not in metrics
    assert len(metrics) == 4 + 1 + 300
    # no summary section: every metric; with one: the declared keys and patterns, in their order
    assert headline_keys(pipe) == []
    (pipe / "params.yaml").write_text("summary:\n  headline: [dice.mean, 'dice.*', lanes.F1_pix2, det.AP]\n")
    keys = headline_keys(pipe)
    assert select_headline(metrics, keys) == [
        ("dice.mean", 0.9), ("dice.TC", 0.8), ("dice.WT", 0.7), ("lanes.F1_pix2", 0.8), ("det.AP", None)
    ]
    table = headline_table({"x": pipe}).splitlines()
    assert table[0].split() == ["domain", "metric", "value"] and len(table) == 1 + 5 + 1
    assert table[1].split() == ["x", "dice.mean", "0.9000"] and table[5].split() == ["x", "det.AP", "missing"]
    assert table[-1] == FULL_SET_HINT
    (pipe / "params.yaml").write_text("summary:\n  headlines: [dice.mean]\n")
    with pytest.raises(UserError, match=re.escape("params.yaml:summary: unknown key 'headlines'; did you mean 'headline'")):
        headline_keys(pipe)
    with pytest.raises(UserError, match="does not exist"):
        domain_metrics(tmp_path / "nowhere")


def test_pipeline_headlines_name_real_metric_keys() -> None:
    """Each domain's declared headline keys match keys its metric writers produce (the key lists
    below are those writers' output shapes: core nas.evaluate, driving evaluation, medical
    evaluate, retail evaluate)."""
    written = {
        "core": ["best.accuracy", "best.accuracy_trained", "best.mflops", "best.params", "best_baseline.name",
                 "best_baseline.accuracy", "best_baseline.mflops", "best_baseline.params"],
        "driving": ["det.AP", "det.AP_50", "det.AP_75", "lanes.F1_pix2", "lanes.sub_tasks.direction.F1_pix2",
                    "lanes.sub_tasks.style.F1_pix2", "lanes.sub_tasks.category.F1_pix2",
                    "lanes.classes.category.crosswalk.F1_pix2"],
        "medical": ["mean.dice", "mean.hd95", "TC.dice", "WT.dice", "ET.dice", "TC.n_dice"],
        "retail": ["recall_at_1", "recall_at_5", "recall_at_10", "mAP", "queries", "products"],
    }
    root = Path(__file__).resolve().parents[2]
    for domain, keys in written.items():
        params = yaml.safe_load((root / "pipelines" / domain / "params.yaml").read_text())
        headline = params["summary"]["headline"]
        rows = select_headline(dict.fromkeys(keys, 1.0), headline)
        assert all(value is not None for _, value in rows), (domain, rows)
        assert 3 <= len(rows) <= 8, (domain, rows)
