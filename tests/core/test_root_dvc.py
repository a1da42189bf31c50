"""The shipped root `dvc.yaml`, read by DVC's own index: each root stage `pipelines/<domain>` depends on
its domain's final outputs, so `dvc repro pipelines/<domain>` reaches every stage of that domain; and
`vp-core demo` stops at the first failing pipeline with DVC's exit code (a scratch repository)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOMAINS = ("core", "driving", "medical", "retail")


def _copy_dvc_files(src: Path, dst: Path) -> None:
    """The root dvc.yaml and each domain's dvc.yaml + params.yaml (unchanged) in a fresh DVC repo."""
    from dvc.repo import Repo

    Repo.init(str(dst), no_scm=True).close()
    shutil.copy(src / "dvc.yaml", dst / "dvc.yaml")
    for domain in DOMAINS:
        (dst / "pipelines" / domain).mkdir(parents=True)
        for name in ("dvc.yaml", "params.yaml"):
            shutil.copy(src / "pipelines" / domain / name, dst / "pipelines" / domain / name)


def _outputs(stage, repo_root: Path) -> set[Path]:
    return {Path(out.fs_path).resolve().relative_to(repo_root) for out in stage.outs}


def test_root_stages_depend_on_each_domains_final_outputs(tmp_path: Path, monkeypatch) -> None:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    _copy_dvc_files(ROOT, tmp_path)
    monkeypatch.chdir(tmp_path)  # DVC names stages relative to the working folder
    root = tmp_path.resolve()
    with Repo(str(tmp_path)) as repo:
        stages = list(repo.index.stages)
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        by_name = {stage.addressing: stage for stage in stages}
        assert {f"pipelines/{d}" for d in DOMAINS} <= set(by_name)
        for domain in DOMAINS:
            top = by_name[f"pipelines/{domain}"]
            own = {
                s
                for s in stages
                if Path(s.dvcfile.path).resolve() == root / "pipelines" / domain / "dvc.yaml"
            }
            assert own, domain
            # `dvc repro pipelines/<domain>` runs exactly the domain's stages (and no other domain's)
            assert set(nx.descendants(graph, top)) == own, domain
            produced = set().union(*(_outputs(s, root) for s in own))
            data_deps = {
                path
                for dep in top.deps
                if not isinstance(dep, ParamsDependency)
                and (path := Path(dep.fs_path).resolve().relative_to(root)).parts[0] != "packages"
            }
            # every data dependency of the root stage is something the domain's stages write
            assert data_deps and data_deps <= produced, (domain, data_deps - produced)
            # ... and every final stage of the domain (one no other stage of it depends on) is depended on
            finals = {s for s in own if not any(graph.has_edge(o, s) for o in own)}
            for stage in finals:
                assert _outputs(stage, root) & data_deps, (domain, stage.addressing)
        # the deploy stage is a final stage of every domain that has one
        for domain in ("driving", "medical", "retail"):
            deploy = by_name[f"pipelines/{domain}/dvc.yaml:deploy"]
            assert not any(
                graph.has_edge(s, deploy)
                for s in stages
                if s.addressing.startswith("pipelines/" + domain + "/")
            )


def _toy_pipeline(root: Path, name: str, code: int) -> None:
    """pipelines/<name>: one stage that writes data/<name>.txt and exits with `code`; a root stage on it."""
    pipe = root / "pipelines" / name
    pipe.mkdir(parents=True)
    cmd = f"{sys.executable} -c \"open('../../data/{name}.txt', 'w').write('x'); raise SystemExit({code})\""
    stage = {"cmd": cmd, "outs": [f"../../data/{name}.txt"]}
    (pipe / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"run": stage}}))


def test_demo_stops_with_dvcs_exit_code_when_a_pipeline_fails(tmp_path: Path) -> None:
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "packages").mkdir()  # what marks the project root, beside .dvc/
    (tmp_path / "data").mkdir()
    for name, code in (("alpha", 0), ("beta", 3), ("gamma", 0)):  # run in this (sorted) order
        _toy_pipeline(tmp_path, name, code)
    roots = {
        f"pipelines/{n}": {"cmd": f"{sys.executable} -c \"print('{n}')\"", "deps": [f"data/{n}.txt"]}
        for n in ("alpha", "beta", "gamma")
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": roots}))
    env = {"DVC_NO_ANALYTICS": "1", "PATH": str(BIN), "HOME": str(tmp_path)}
    scratch = tmp_path.parent / "direct"
    shutil.copytree(tmp_path, scratch)
    direct = subprocess.run(
        [str(BIN / "dvc"), "repro", "pipelines/beta"], cwd=scratch, env=env, capture_output=True
    )
    assert direct.returncode != 0

    demo = subprocess.run(
        [str(BIN / "vp-core"), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert demo.returncode == direct.returncode, demo.stdout + demo.stderr
    assert f"error: the beta pipeline failed (dvc exit code {direct.returncode})." in demo.stderr
    assert (tmp_path / "data" / "alpha.txt").is_file()  # the pipeline before ran
    assert not (tmp_path / "data" / "gamma.txt").exists()  # the one after never started
    assert "headline metrics" not in demo.stdout
