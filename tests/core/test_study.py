"""The architecture study and the core pipeline's verbs on tiny settings: the large-context proxy
set means what it says, the study writes its report and plots in one command, `train-proxy` and
`evaluate-search` write what the DVC stages declare, and bad input fails in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from visionpipes.core.backbones import load_spec_file
from visionpipes.core.errors import UserError
from visionpipes.core.nas.outputs import write_outcome
from visionpipes.core.nas.proxy import CONTEXT_CLASSES, ProxyConfig, make_context_dataset
from visionpipes.core.nas.study import SearchConfig, run_search
from visionpipes.core.nas.training import Classifier, ProxyTraining
from visionpipes.core.profile import compare_latency

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "benchmarks" / "architecture_study.py"
VP_CORE = str(Path(sys.executable).with_name("vp-core"))
TINY = ProxyTraining(per_class=6, size=32, epochs=1, batch_size=16, latency_repeats=1)
#: tiny nets and batches run fastest on one thread, and do not fight the other tests for cores
ONE_THREAD = {**os.environ, "VISIONPIPES_THREADS": "1", "OMP_NUM_THREADS": "1"}
SECTION_TITLES = (
    "## 0. The proxy task and its budget",
    "## 1. Depth without and with skip connections",
    "## 2. Standard vs depthwise separable convolutions",
    "## 3. Depth vs width vs cardinality at equal parameters",
    "## 4. Attention: SE, CBAM, self-attention vs none",
    "## 5. ASPP and dilation vs plain convolutions",
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_context_set_is_deterministic_and_labelled_by_the_pair_orientation() -> None:
    cfg = ProxyConfig(per_class=10, size=48, seed=5, noise=0.0)
    x, y = make_context_dataset(cfg)
    x2, y2 = make_context_dataset(cfg)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.bincount(y).tolist() == [10, 10]
    for img, label in zip(x, y):
        # without noise the discs are the only pixels that differ from the corner's colour
        mask = (img - img[:, :1, :1]).abs().sum(0) > 1e-3
        rows, cols = mask.nonzero(as_tuple=True)
        spread_y, spread_x = float(rows.float().std()), float(cols.float().std())
        orientation = "pair_horizontal" if spread_x > spread_y else "pair_vertical"
        assert orientation == CONTEXT_CLASSES[int(label)]
        # far apart: the discs' pixels span at least half the image along the pair's axis
        assert max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) >= 0.5 * 48
    with pytest.raises(ValueError, match="distance"):
        make_context_dataset(cfg, distance=(0.5, 0.95))


def test_quick_study_writes_report_plots_and_results(tmp_path: Path) -> None:
    out = tmp_path / "study"
    done = subprocess.run([sys.executable, str(STUDY), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-2000:]
    report = (out / "report.md").read_text()
    for title in SECTION_TITLES:
        assert title in report
    for name in ("calibration", "depth", "separable", "scaling", "attention", "context"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"![{name}]({name}.png)" in report
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["section"] for r in rows.values()} == {"calibration", "depth", "separable", "scaling", "attention", "context"}
    for row in rows.values():
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["params"] > 0 and row["mflops"] > 0
        assert row["latency_ms"] > 0 and len(row["curve_train_loss"]) == 1
    # plain and residual nets of one depth differ only by the shortcuts (no projection at equal widths)
    depth = {r["name"]: r for r in rows.values() if r["section"] == "depth"}
    assert depth["residual-8"]["params"] >= depth["plain-8"]["params"]
    assert abs(depth["residual-8"]["mflops"] - depth["plain-8"]["mflops"]) / depth["plain-8"]["mflops"] < 0.05
    # the scaling variants are matched in parameters to within 20 %
    scaling = [r["params"] for r in rows.values() if r["section"] == "scaling"][1:]
    assert max(scaling) / min(scaling) < 1.2
    # dilation widens the receptive field at the same parameter count
    ctx = {r["name"]: r for r in rows.values() if r["section"] == "context" and r["task"] == "context"}
    assert ctx["dilated"]["params"] == ctx["plain"]["params"]
    assert ctx["dilated"]["receptive_field"] > ctx["plain"]["receptive_field"]

    # the report can be re-written from results.json alone (same numbers, no training)
    again = subprocess.run([sys.executable, str(STUDY), "--rerender", "--out", str(out)], capture_output=True,
                           text=True, timeout=120, env=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "re-rendered from its results.json" in (out / "report.md").read_text()
    none = subprocess.run([sys.executable, str(STUDY), "--rerender", "--out", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120, env=ONE_THREAD)
    assert none.returncode == 2 and "results.json does not exist" in none.stderr

    bad = subprocess.run([sys.executable, str(STUDY), "--quick", "--sections", "depth,colour", "--out", str(out)],
                         capture_output=True, text=True, timeout=120, env=ONE_THREAD)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: unknown section 'colour'; use calibration, depth, separable, scaling, attention, context."
    ]


def test_compare_latency_times_every_model() -> None:
    models = {"small": torch.nn.Conv2d(3, 4, 3), "large": torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3)] * 8)}
    ms = compare_latency(models, torch.zeros(1, 3, 32, 32), rounds=2, per_round=1)
    assert set(ms) == {"small", "large"} and all(v > 0 for v in ms.values())
    with pytest.raises(ValueError, match="rounds"):
        compare_latency(models, torch.zeros(1, 3, 32, 32), rounds=0)


def test_resuming_a_study_with_other_proxy_settings_is_refused(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'nested' / 'search.db'}"  # the folder is created
    run_search(SearchConfig(trials=1, storage=storage, proxy=TINY, baselines=()), log=lambda *_: None)
    other = ProxyTraining(**{**TINY.model_dump(), "epochs": 2})
    with pytest.raises(UserError, match="other proxy settings"):
        run_search(SearchConfig(trials=2, storage=storage, proxy=other, baselines=()), log=lambda *_: None)


def _vp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VP_CORE, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=ONE_THREAD)


def test_train_proxy_and_evaluate_search_write_what_the_stages_declare(tmp_path: Path) -> None:
    config = SearchConfig(trials=2, proxy=TINY, baselines=("mobilenet_v2",), seed=3)
    outcome = run_search(config, log=lambda *_: None)
    write_outcome(outcome, config, tmp_path / "search")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "search": {"proxy": TINY.model_dump()},
        "train": {"epochs": 2},
        "eval": {"rounds": 1, "per_round": 1, "threads": 1},
    }))

    trained = tmp_path / "train"
    done = _vp("train-proxy", "--spec", str(tmp_path / "search" / "best_spec.yaml"), "--params", str(params),
               "--out", str(trained))
    assert done.returncode == 0, done.stderr
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["epoch_accuracy"]) == 2 and metrics["name"] == outcome.best.name
    assert len((trained / "dvclive" / "plots" / "metrics" / "val_accuracy.tsv").read_text().splitlines()) == 3
    checkpoint = torch.load(trained / "model.pt", weights_only=False)
    model = Classifier(load_spec_file(tmp_path / "search" / "best_spec.yaml"), len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["state_dict"])

    done = _vp("evaluate-search", "--search", str(tmp_path / "search"), "--trained", str(trained),
               "--params", str(params), "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr
    ev = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert ev["best"]["name"] == outcome.best.name and ev["best"]["accuracy_trained"] == metrics["accuracy"]
    assert set(ev["baselines"]) == {"mobilenet_v2"} and ev["baselines"]["mobilenet_v2"]["latency_ms"] > 0
    assert set(ev["front"]) == {r.name for r in outcome.front}
    assert ev["baselines_dominated_flops"] == int(bool(outcome.dominated_baselines))
    assert (tmp_path / "eval" / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    missing = _vp("evaluate-search", "--search", str(tmp_path / "search"), "--trained", str(tmp_path / "nowhere"),
                  "--out", str(tmp_path / "eval2"))
    assert missing.returncode == 2 and "nowhere/metrics.json does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "eval2" / "metrics.json").exists()
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("train:\n  epocs: 3\n")
    bad = _vp("train-proxy", "--spec", str(tmp_path / "search" / "best_spec.yaml"), "--params", str(bad_key),
              "--out", str(tmp_path / "t2"))
    assert bad.returncode == 2 and "unknown key 'epocs'; did you mean 'epochs'?" in bad.stderr


def test_pipeline_params_are_valid_for_the_verbs() -> None:
    from visionpipes.core.cli import _proxy_settings

    params = ROOT / "pipelines" / "core" / "params.yaml"
    search = yaml.safe_load(params.read_text())["search"]
    config = SearchConfig.from_params(search, source=f"{params}:search")
    assert config.proxy == ProxyTraining(**search["proxy"])
    train = ProxyTraining.from_params(_proxy_settings(str(params), "train"), source=f"{params}:train")
    assert train.epochs > config.proxy.epochs and train.size == config.proxy.size
    stages = yaml.safe_load((ROOT / "pipelines" / "core" / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["search", "train", "eval"]
    assert "../../data/core/eval/metrics.json" in str(stages["eval"]["metrics"])
