"""Architecture search on a tiny proxy configuration: specs it finds build, the search is
reproducible by seed and resumable from SQLite, budgets prune, and the CLI writes its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import torch
import yaml

from visionpipes.core.backbones import build_backbone, load_spec_file
from visionpipes.core.nas.proxy import CLASSES, ProxyConfig, make_proxy_dataset
from visionpipes.core.nas.results import CandidateResult, dominates, pareto_front
from visionpipes.core.nas.space import suggest_spec
from visionpipes.core.nas.study import SearchConfig, run_search
from visionpipes.core.nas.training import ProxyTraining

TINY = ProxyTraining(per_class=6, size=32, epochs=1, batch_size=16, latency_repeats=2)


def test_proxy_dataset_is_deterministic_and_balanced() -> None:
    x1, y1 = make_proxy_dataset(ProxyConfig(per_class=5, size=32, seed=3))
    x2, y2 = make_proxy_dataset(ProxyConfig(per_class=5, size=32, seed=3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.bincount(y1).tolist() == [5] * len(CLASSES)
    assert not torch.equal(x1, make_proxy_dataset(ProxyConfig(per_class=5, size=32, seed=4))[0])


def test_sampled_specs_build_and_sampling_is_reproducible() -> None:
    specs = []
    for _ in range(2):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(seed=7))
        trials = [study.ask() for _ in range(5)]
        specs.append([suggest_spec(t).to_dict() for t in trials])
    assert specs[0] == specs[1]
    for spec in specs[0]:
        net = build_backbone(spec).eval()
        assert net.strides == [4, 8, 16, 32]
        assert [f.shape[1] for f in net(torch.zeros(1, 3, 32, 32))] == net.out_channels


def _result(name: str, acc: float, cost: float) -> CandidateResult:
    return CandidateResult(name, acc, cost, cost, 1, 0.0, spec={})


def test_pareto_front_and_domination() -> None:
    a, b, c, d = _result("a", 0.9, 10), _result("b", 0.8, 5), _result("c", 0.7, 20), _result("d", 0.9, 10)
    assert dominates(a, c, "flops") and not dominates(a, b, "flops") and not dominates(a, d, "flops")
    assert [r.name for r in pareto_front([a, b, c], "flops")] == ["b", "a"]


def test_search_resumes_from_sqlite_and_prunes_over_budget(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    config = SearchConfig(trials=2, param_budget=400_000, storage=storage, proxy=TINY, baselines=(), seed=1)
    first = run_search(config, log=lambda *_: None)
    study = optuna.load_study(study_name=config.study_name, storage=storage)
    assert len(study.trials) == 2
    # Seed 1 draws a 0.39 M and a 0.98 M parameter network: exactly the second is over the budget.
    over_budget = {t.number for t in study.trials if t.user_attrs["params"] > 400_000}
    pruned = {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED}
    assert over_budget, "the seeded trials never exceed the budget: pruning would go untested"
    assert pruned == over_budget and first.pruned == len(over_budget)
    assert len(first.trials) == 2 - len(over_budget) and all(r.params <= 400_000 for r in first.trials)
    config.trials = 3
    run_search(config, log=lambda *_: None)
    assert len(optuna.load_study(study_name=config.study_name, storage=storage).trials) == 3


def test_cli_search_writes_spec_plot_and_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        str(Path(sys.executable).with_name("vp-core")), "search", "--out", str(out), "--trials", "3",
        "--budget", "3000000", "--epochs", "1", "--per-class", "6", "--size", "32", "--baselines", "resnet18",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "search.json").read_text())
    assert report["baselines"][0]["name"] == "resnet18" and report["front"]
    spec = load_spec_file(out / "best_spec.yaml")
    assert build_backbone(spec).strides == [4, 8, 16, 32]
    assert yaml.safe_load((out / "best_spec.yaml").read_text())["name"] == report["best"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([*cmd[:4], "--baselines", "resnet1000"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown baseline backbone 'resnet1000'" in bad.stderr
