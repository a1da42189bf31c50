"""The driving stages depend on the code they run (issue #11 item 5): in a scratch copy of the
repository, with placeholder outputs committed to `dvc.lock` by the real DVC (`dvc commit -f`, so
nothing runs), editing the lane source makes `dvc status` report the stages that run it changed and
leaves the others (data, prepare, train-det) up to date; the multi-task stage follows its own code and
the lane/detector code it reuses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "pipelines/driving/dvc.yaml"
#: A placeholder file inside each directory output, so that every output and dep exists.
FILES_IN_OUTS = {
    "models/det": "weights/best.pt",
    "models/lanes": "lane_model.pt",
}


def _scratch_repo(root: Path) -> Path:
    repo = root / "repo"
    (repo / ".dvc").mkdir(parents=True)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    for name in ("dvc.yaml", ".dvcignore"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, repo / name)
    (repo / "pipelines" / "driving").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / "pipelines" / "driving" / name, repo / "pipelines" / "driving" / name)
    for package in ("core", "driving"):
        shutil.copytree(
            REPO / "packages" / package / "src",
            repo / "packages" / package / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
        )
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    # every stage output as a placeholder (directories get one file), so a lock can be recorded
    stages = yaml.safe_load((repo / PIPELINE).read_text())["stages"]
    data = repo / "data" / "driving"
    for stage in stages.values():
        for out in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            rel = next(iter(out)) if isinstance(out, dict) else out
            path = (repo / "pipelines" / "driving" / rel).resolve()
            if path.suffix == ".json":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                inner = FILES_IN_OUTS.get(str(path.relative_to(data)), "placeholder.txt")
                (path / inner).parent.mkdir(parents=True, exist_ok=True)
                (path / inner).write_text(f"{rel}\n")
    return repo


def _changed(repo: Path) -> set[str]:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        status = dvc.status(targets=[PIPELINE])
    return {key.split(":")[-1] for key in status}


def test_editing_lane_code_reruns_only_the_stages_that_run_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvc.repo import Repo

    repo = _scratch_repo(tmp_path)
    monkeypatch.chdir(repo)  # DVC resolves targets and stage folders from the working directory
    with Repo(str(repo)) as dvc:
        dvc.commit(PIPELINE, force=True)  # records dvc.lock for every stage; runs nothing
    assert (repo / "pipelines" / "driving" / "dvc.lock").is_file()
    assert _changed(repo) == set()

    source = repo / "packages" / "driving" / "src" / "visionpipes" / "driving" / "lanes" / "decode.py"
    source.write_text(source.read_text() + "\n# an edit of the lane decoding\n")
    # not data, prepare or train-det; train-multitask too: its data reuses the lane targets (lanes/data.py)
    assert _changed(repo) == {"train-lanes", "train-multitask", "eval", "deploy"}

    detection = source.parents[1] / "detection" / "runtime.py"
    source.write_text(source.read_text().replace("\n# an edit of the lane decoding\n", ""))
    assert _changed(repo) == set()  # back to the recorded code: nothing to run
    detection.write_text(detection.read_text() + "\n# an edit of the ONNX detector\n")
    assert _changed(repo) == {"train-det", "train-multitask", "eval", "deploy"}  # multitask: the letterbox

    multitask = source.parents[1] / "multitask" / "loss.py"
    detection.write_text(detection.read_text().replace("\n# an edit of the ONNX detector\n", ""))
    multitask.write_text(multitask.read_text() + "\n# an edit of the multi-task loss\n")
    assert _changed(repo) == {"train-multitask", "eval", "deploy"}  # not the two dedicated models
