"""The DVC wiring every domain uses, in a real DVC repo: a root stage named `pipelines/<domain>`
depending on the domain's deploy output makes `dvc repro pipelines/<domain>` run the whole
pipeline, a second run skips everything, and `vp-core summary` collects the declared metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visionpipes.core.errors import UserError
from visionpipes.core.summary import domain_metrics, format_summary

BIN = Path(sys.executable).parent
PY = sys.executable


def _write_toy_repo(root: Path) -> None:
    pipe = root / "pipelines" / "toy"
    pipe.mkdir(parents=True)
    (pipe / "params.yaml").write_text("train:\n  factor: 2\n")
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
    second = _dvc(tmp_path, "repro", "pipelines/toy")
    assert second.returncode == 0 and "Running stage" not in second.stdout
    # a changed param re-runs train and everything downstream, not data
    (tmp_path / "pipelines" / "toy" / "params.yaml").write_text("train:\n  factor: 5\n")
    third = _dvc(tmp_path, "repro", "pipelines/toy")
    assert "Running stage 'pipelines/toy/dvc.yaml:data'" not in third.stdout
    assert "Running stage 'pipelines/toy/dvc.yaml:train'" in third.stdout
    assert json.loads((tmp_path / "data" / "toy" / "metrics.json").read_text())["score"] == 15


def test_domain_metrics_and_table(tmp_path: Path) -> None:
    pipe = tmp_path / "pipelines" / "x"
    pipe.mkdir(parents=True)
    (pipe / "dvc.yaml").write_text("stages:\n  eval:\n    cmd: true\n    metrics:\n      - m.json:\n          cache: false\n")
    with pytest.raises(UserError, match="does not exist; run `dvc repro"):
        domain_metrics(pipe)
    (pipe / "m.json").write_text(json.dumps({"dice": {"mean": 0.9}, "epochs": 3, "ok": True}))
    metrics = domain_metrics(pipe)
    assert metrics == {"dice.mean": 0.9, "epochs": 3.0}
    assert "dice.mean" in format_summary({"x": metrics}).splitlines()[1]
    with pytest.raises(UserError, match="does not exist"):
        domain_metrics(tmp_path / "nowhere")
