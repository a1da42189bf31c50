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
