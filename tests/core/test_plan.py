"""core.plan: the plan record, its JSON, hardware overrides from params, and `auto` resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visionpipes.core.errors import UserError
from visionpipes.core.plan import (
    Plan,
    fingerprint_sha256,
    plan_hardware,
    plan_verb,
    read_plan,
    resolve_auto,
    write_plan,
)

PARAMS = {
    "det": {"imgsz": "auto", "batch": 12, "device": "auto"},
    "lanes": {"model": {"width": "AUTO", "height": 160}},
}


def _plan(params: dict | None = PARAMS) -> Plan:
    values = {"det.imgsz": 640, "det.batch": 64, "lanes.model.width": 640, "lanes.model.height": 224}
    hw = {"device": "cuda", "memory_gb": 80.0, "cpu_cores": 16, "gpus": 1, "probed": False}
    return Plan.make(
        "driving", values, hardware=hw, fingerprint={"images": 3, "sizes": {"1280x720": 3}}, params=params
    )


def test_explicit_params_are_recorded_as_overrides() -> None:
    plan = _plan()
    assert plan.overridden == {
        "det.batch": {"planned": 64, "params": 12},
        "lanes.model.height": {"planned": 224, "params": 160},
    }
    assert plan.effective() == {
        "det.imgsz": 640,
        "det.batch": 12,
        "lanes.model.width": 640,
        "lanes.model.height": 160,
    }
    assert _plan(params=None).overridden == {}


def test_fingerprint_hash_is_canonical() -> None:
    a = fingerprint_sha256({"a": 1, "b": [1, 2]})
    assert a == fingerprint_sha256({"b": [1, 2], "a": 1})
    assert a != fingerprint_sha256({"a": 1, "b": [2, 1]})
    assert _plan().fingerprint_sha256 == fingerprint_sha256({"images": 3, "sizes": {"1280x720": 3}})


def test_write_read_round_trip(tmp_path: Path) -> None:
    path = write_plan(tmp_path / "sub" / "plan.json", _plan())
    back = read_plan(path, domain="driving")
    assert back.to_dict() == _plan().to_dict()
    assert "fingerprint" not in back.summary() and back.summary()["effective"]["det.batch"] == 12
    assert not list((tmp_path / "sub").glob("*.tmp*"))  # atomic: no temporary left


def test_read_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"plan file .*missing.json does not exist"):
        read_plan(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="is not readable JSON"):
        read_plan(bad)
    bad.write_text(json.dumps({"x": 1}))
    with pytest.raises(UserError, match="is not a plan"):
        read_plan(bad)
    path = write_plan(tmp_path / "plan.json", _plan())
    with pytest.raises(UserError, match="is a 'driving' plan, not a 'retail' one"):
        read_plan(path, domain="retail")
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="format_version 99"):
        read_plan(path)


def test_resolve_auto_takes_plan_values_and_keeps_explicit_ones() -> None:
    plan = _plan()
    det, origin = resolve_auto(PARAMS["det"], plan, prefix="det", keys=("imgsz", "batch"), source="p:det")
    assert det == {"imgsz": 640, "batch": 12, "device": "auto"}  # device: not a planned key, left alone
    assert origin == {"det.imgsz": "plan", "det.batch": "params"}
    assert PARAMS["det"]["imgsz"] == "auto"  # the input is not modified
    lanes, origin = resolve_auto(
        PARAMS["lanes"], plan, prefix="lanes", keys=("model.width", "model.height"), source="p"
    )
    assert lanes == {"model": {"width": 640, "height": 160}}
    assert origin == {"lanes.model.width": "plan", "lanes.model.height": "params"}


def test_resolve_auto_without_a_plan_is_one_sentence() -> None:
    with pytest.raises(UserError, match=r"p:det: key 'imgsz' is auto but no plan was given"):
        resolve_auto(PARAMS["det"], None, prefix="det", keys=("imgsz",), source="p:det")
    resolve_auto(
        {"imgsz": 320}, None, prefix="det", keys=("imgsz",), source="p:det"
    )  # explicit: no plan needed
    with pytest.raises(UserError, match=r"the driving plan has no value for 'det.workers'"):
        resolve_auto({"workers": "auto"}, _plan(), prefix="det", keys=("workers",), source="p:det")


def test_plan_hardware_from_params_and_flags() -> None:
    hw = plan_hardware({"device": "cuda", "memory_gb": 80, "cpu_cores": 16})
    assert (hw.device, hw.memory_gb, hw.cpu_cores, hw.probed) == ("cuda", 80.0, 16, False)
    hw = plan_hardware({"device": "cuda", "memory_gb": 80}, device="cpu", memory_gb=4)  # flags win
    assert (hw.device, hw.memory_gb) == ("cpu", 4.0)
    assert plan_hardware({"device": "auto", "memory_gb": None}).probed  # auto/null: this machine, probed
    with pytest.raises(UserError, match="unknown key 'memory'"):
        plan_hardware({"memory": 80})
    with pytest.raises(UserError, match="key 'memory_gb' = 'lots' is not a float"):
        plan_hardware({"memory_gb": "lots"})


def test_plan_hardware_without_a_gpu_driver_equals_the_probe() -> None:
    """The torch-free path (no GPU driver on this Linux machine) answers what probe_hardware answers."""
    import subprocess
    import sys

    from visionpipes.core.hardware import probe_hardware

    code = (
        "import sys, json; from visionpipes.core.plan import plan_hardware, _without_gpu_driver; "
        "hw = [plan_hardware(None).to_dict(), plan_hardware({'device': 'cpu'}, cpu_cores=3).to_dict()]; "
        "print(json.dumps([_without_gpu_driver(), 'torch' in sys.modules, hw]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    fast, imported, (auto, cpu3) = json.loads(out)
    if not fast:
        pytest.skip("this machine has a GPU driver: plan_hardware probes through torch")
    assert not imported  # no torch import for a CPU plan
    assert auto == probe_hardware().to_dict()
    assert cpu3 == probe_hardware("cpu", cpu_cores=3).to_dict()
    with pytest.raises(UserError, match="memory_gb must be > 0"):
        plan_hardware({"memory_gb": 0})


def _count_plan(data: str | Path, hardware: object, *, params: dict | None = None) -> Plan:
    """A domain's `make_plan` in miniature: the batch from the number of files in `data`."""
    folder = Path(data)
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist.")
    files = len(list(folder.iterdir()))
    return Plan.make(
        "toy",
        {"train.batch": files * 2, "train.workers": 1},
        hardware=hardware,
        fingerprint={"files": files},
        reasons={"train.batch": "two per file"},
        params=params,
    )


def test_plan_verb_writes_prints_and_passes_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared handler of `vp-driving plan` / `vp-retail plan`: params' plan section + flags ->
    hardware, make_plan(data, hardware, params=...), the plan JSON written, its summary printed."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.txt").write_text("x")
    params = tmp_path / "params.yaml"
    params.write_text("plan: {device: cpu, memory_gb: 6, cpu_cores: 2}\ntrain: {batch: 5, workers: auto}\n")
    out = tmp_path / "plans" / "plan.json"
    result = plan_verb(data, out, _count_plan, params=params, cpu_cores=3)  # the flag wins over params
    printed = capsys.readouterr().out
    assert printed == json.dumps(result, indent=2) + "\n"
    assert next(iter(result)) == "plan" and result["plan"] == str(out) and "reasons" not in result
    plan = read_plan(out, domain="toy")
    assert plan.values == {"train.batch": 6, "train.workers": 1} and plan.reasons == {
        "train.batch": "two per file"
    }
    assert (plan.hardware["device"], plan.hardware["memory_gb"], plan.hardware["cpu_cores"]) == (
        "cpu",
        6.0,
        3,
    )
    assert plan.overridden == {"train.batch": {"planned": 6, "params": 5}}  # params reached make_plan
    assert result == {"plan": str(out), **{k: v for k, v in plan.summary().items() if k != "reasons"}}
    # without params: no overrides recorded
    plan_verb(data, out, _count_plan, device="cpu", memory_gb=2, cpu_cores=1)
    assert read_plan(out).overridden == {} and read_plan(out).hardware["memory_gb"] == 2.0


def test_plan_verb_errors_name_the_file_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    with pytest.raises(UserError, match=r"params file .*missing.yaml does not exist"):
        plan_verb(tmp_path, out, _count_plan, params=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan: {device: cpu, memory: 4}\n")
    with pytest.raises(UserError, match=r"bad.yaml:plan: unknown key 'memory'"):
        plan_verb(tmp_path, out, _count_plan, params=bad)
    with pytest.raises(UserError, match=r"data folder .*nowhere does not exist"):
        plan_verb(tmp_path / "nowhere", out, _count_plan, device="cpu", memory_gb=2, cpu_cores=1)
    assert not out.exists()
