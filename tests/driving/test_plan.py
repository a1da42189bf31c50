"""`vp-driving plan`: the fingerprint of a tiny BDD100K-format folder against direct computation, the
plans for a 2-core CPU and an 80 GB GPU, `auto` resolution with explicit overrides recorded, the
plan in a deployed model's card, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpipes.core.errors import UserError
from visionpipes.core.hardware import probe_hardware
from visionpipes.core.plan import read_plan
from visionpipes.driving import cli
from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND
from visionpipes.driving.planning import (
    PLANNED_KEYS,
    fingerprint_bdd100k,
    make_plan,
    plan_values,
    resolve_section,
)

W, H = 1280, 720
# (category, width, height) of the train boxes, per image; small traffic lights dominate
BOXES = [
    [("traffic light", 10, 14), ("traffic light", 8, 12), ("car", 200, 120)],
    [("traffic sign", 14, 14), ("pedestrian", 20, 60), ("van", 90, 70), ("other person", 30, 80)],
    [("traffic light", 9, 16), ("traffic light", 11, 13), ("traffic sign", 12, 12)],
    [],
]
STROKE, LANE_TOP = 6, 400  # lane strokes 6 px wide, from row 400 down


def _sample(root: Path, *, sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    sizes = sizes or {}
    for split, n in (("train", len(BOXES)), ("val", 2)):
        (root / "images" / "100k" / split).mkdir(parents=True)
        (root / "labels" / "lane" / "masks" / split).mkdir(parents=True)
        frames = []
        for i in range(n):
            name = f"{split}{i}.jpg"
            Image.new("RGB", sizes.get(name, (W, H))).save(root / "images" / "100k" / split / name)
            labels = []
            for j, (cat, w, h) in enumerate(BOXES[i] if split == "train" else []):
                labels.append(
                    {
                        "id": str(j),
                        "category": cat,
                        "box2d": {"x1": 100.0, "y1": 100.0, "x2": 100.0 + w, "y2": 100.0 + h},
                    }
                )
            frames.append({"name": name, "labels": labels})
            mask = np.full((H, W), LANE_BACKGROUND, np.uint8)
            for x in (300 + 100 * i, 900):
                mask[LANE_TOP + 20 * i :, x : x + STROKE] = 6  # single white, solid, parallel
            Image.fromarray(mask, mode="L").save(
                root / "labels" / "lane" / "masks" / split / f"{split}{i}.png"
            )
        (root / "labels" / "det_20").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "det_20" / f"det_{split}.json").write_text(json.dumps(frames))
    return root


def test_fingerprint_against_direct_computation(tmp_path: Path) -> None:
    root = _sample(tmp_path / "raw", sizes={"val1.jpg": (640, 360)})
    fp = fingerprint_bdd100k(root)
    assert fp["images"] == {"train": 4, "val": 2}
    assert fp["image_sizes"] == {"1280x720": 5, "640x360": 1} and fp["native_size"] == [W, H]
    kept = [(c, w, h) for boxes in BOXES for c, w, h in boxes if c != "other person"]  # an ignore region
    sides = np.sqrt([w * h for _, w, h in kept])
    boxes = fp["boxes"]
    assert boxes["boxes"] == len(kept) == 9 and boxes["frames"] == 4
    assert boxes["boxes_per_image"]["mean"] == pytest.approx(9 / 4, abs=1e-3)
    assert boxes["box_side_px"]["p25"] == pytest.approx(np.percentile(sides, 25), abs=1e-3)
    assert boxes["box_side_relative"]["p50"] == pytest.approx(
        np.percentile(sides, 50) / math.sqrt(W * H), abs=1e-4
    )
    assert boxes["size_share"]["small"] == pytest.approx(np.mean(sides**2 < 32**2), abs=1e-4)
    assert boxes["classes"]["traffic light"] == 4 and boxes["classes"]["car"] == 2  # van -> car
    assert boxes["classes"]["(other or ignored)"] == 1
    lanes = fp["lanes"]
    lane_pixels = sum(2 * (H - LANE_TOP - 20 * i) * STROKE for i in range(4))
    assert lanes["masks"] == 4 and lanes["lane_pixel_share"] == pytest.approx(
        lane_pixels / (4 * W * H), abs=1e-6
    )
    assert lanes["stroke_px"] == STROKE
    assert LANE_TOP / H - 0.01 <= lanes["rows_above_hold_1pct"] <= LANE_TOP / H + 0.02


def test_raw_folder_pointing_at_a_real_copy(tmp_path: Path) -> None:
    """`vp-driving data` with `data.path` writes a pointer; the plan reads the copy it points at."""
    from visionpipes.driving.prepare import DataConfig, obtain_data

    root = _sample(tmp_path / "copy")
    obtain_data(DataConfig(path=str(root)), tmp_path / "raw")
    fp = fingerprint_bdd100k(tmp_path / "raw")
    assert fp["source"] == "bdd100k" and fp["images"] == {"train": 4, "val": 2}
    assert fp["boxes"] == fingerprint_bdd100k(root)["boxes"]


def test_sampling_is_bounded_and_said(tmp_path: Path) -> None:
    fp = fingerprint_bdd100k(_sample(tmp_path / "raw"), sample_images=2, sample_masks=1)
    assert sum(fp["image_sizes"].values()) == fp["sampled"]["image_headers"] == 4  # 2 per split
    assert fp["lanes"]["masks"] == fp["sampled"]["lane_masks"] == 1
    assert "at most 2 images per split" in fp["sampled"]["note"]


def test_cpu_and_gpu_plans_differ_as_expected(tmp_path: Path) -> None:
    root = _sample(tmp_path / "raw")
    cpu = make_plan(root, probe_hardware("cpu", memory_gb=4, cpu_cores=2)).values
    gpu = make_plan(root, probe_hardware("cuda", memory_gb=80, cpu_cores=16)).values
    assert set(cpu) == set(gpu) == {f"{s}.{k}" for s, keys in PLANNED_KEYS.items() for k in keys}
    # small boxes: 8 px at the 25th percentile wants a large input; the 2-core CPU affords 320
    p25 = np.percentile(np.sqrt([w * h for b in BOXES for c, w, h in b if c != "other person"]), 25)
    assert gpu["det.imgsz"] == math.ceil(W * 8 / p25 / 32) * 32 > cpu["det.imgsz"] == 320
    assert gpu["det.imgsz"] % 32 == 0
    assert gpu["det.batch"] == 4 >= cpu["det.batch"]  # the GPU's batch is bounded by the 4 training images
    assert (cpu["det.workers"], gpu["det.workers"]) == (2, 8)
    assert gpu["lanes.model.width"] > cpu["lanes.model.width"] == 448
    assert cpu["lanes.model.roi_top"] == 0.55  # lanes start at row 400 of 720
    assert cpu["lanes.model.height"] == math.ceil((1 - 0.55) * H * 448 / W / 32) * 32
    assert gpu["lanes.train.batch_size"] >= cpu["lanes.train.batch_size"]
    # a small GPU affords a smaller detector input than the 80 GB one (16 images must fit at 60 %)
    small = make_plan(root, probe_hardware("cuda", memory_gb=2, cpu_cores=16)).values
    assert 320 <= small["det.imgsz"] < gpu["det.imgsz"]
    # the time budgets scale with the data: 70,000 training images instead of 4
    fp = fingerprint_bdd100k(root)
    fp["images"]["train"] = 70_000
    big, _ = plan_values(fp, probe_hardware("cpu", memory_gb=4, cpu_cores=2))
    assert cpu["det.time_minutes"] == 0.5 and big["det.time_minutes"] == round(10 * 70_000 / 11 / 60 * 2) / 2
    assert big["lanes.trainer.max_time"] > cpu["lanes.trainer.max_time"]


def test_auto_resolution_and_recorded_overrides(tmp_path: Path) -> None:
    root = _sample(tmp_path / "raw")
    params = {
        "det": {"imgsz": "auto", "batch": 3, "model": "yolov8n.yaml"},
        "lanes": {"model": {"width": "auto"}},
    }
    plan = make_plan(root, probe_hardware("cuda", memory_gb=80, cpu_cores=16), params=params)
    assert set(plan.overridden) == {"det.batch"} and plan.overridden["det.batch"]["params"] == 3
    path = tmp_path / "plan.json"
    from visionpipes.core.plan import write_plan

    write_plan(path, plan)
    det, got = resolve_section(params["det"], path, "det", source="p:det")
    assert det["imgsz"] == plan.values["det.imgsz"] and det["batch"] == 3 and got is not None
    from visionpipes.driving.detection.train import DetectorConfig

    assert DetectorConfig.from_params(det, source="p:det").imgsz == plan.values["det.imgsz"]
    with pytest.raises(UserError, match="key 'imgsz' is auto but no plan was given"):
        resolve_section(params["det"], None, "det", source="p:det")


def _main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return int(exc.value.code or 0)


def test_cli_writes_the_plan_and_bad_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _sample(tmp_path / "raw")
    params = tmp_path / "params.yaml"
    params.write_text("plan:\n  device: cuda\n  memory_gb: 80\ndet:\n  imgsz: 320\n")
    out = tmp_path / "plan" / "plan.json"
    assert _main(["plan", str(root), "--out", str(out), "--params", str(params), "--cpu-cores", "16"]) == 0
    printed = json.loads(capsys.readouterr().out)
    plan = read_plan(out, domain="driving")
    assert (
        plan.hardware["device"] == "cuda" and plan.hardware["memory_gb"] == 80 and not plan.hardware["probed"]
    )
    assert plan.overridden["det.imgsz"] == {"planned": plan.values["det.imgsz"], "params": 320}
    assert (
        printed["effective"]["det.imgsz"] == 320 and printed["fingerprint_sha256"] == plan.fingerprint_sha256
    )
    assert _main(["plan", str(root), "--out", str(out), "--device", "cpu", "--memory-gb", "4"]) == 0
    assert read_plan(out).hardware["device"] == "cpu"
    capsys.readouterr()
    for argv, message in (
        (["plan", str(tmp_path / "nope"), "--out", str(out)], "does not exist"),
        (["plan", str(tmp_path), "--out", str(out)], "is not a BDD100K root"),
    ):
        assert _main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    (root / "labels" / "det_20" / "det_train.json").write_text("{broken")
    assert _main(["plan", str(root), "--out", str(out)]) == 2
    assert "det_train.json are not readable JSON" in capsys.readouterr().err


def test_plan_in_the_model_card() -> None:
    from visionpipes.driving.deploy import model_card

    plan = {
        "values": {"det.imgsz": 640, "det.batch": 64},
        "overridden": {"det.batch": {"planned": 64, "params": 8}},
        "effective": {"det.imgsz": 640, "det.batch": 8},
        "hardware": {"device": "cuda", "memory_gb": 80.0, "cpu_cores": 16, "probed": False},
        "fingerprint_sha256": "ab" * 32,
    }
    text = "\n".join(model_card({}, None, None, plan).lines)
    assert "| `det.imgsz` | 640 | 640 |" in text and "| `det.batch` | 64 | 8 (params) |" in text
    assert "cuda with 80.0 GB and 16 cores (given, not probed)" in text and "abababababababab" in text


def test_train_verbs_refuse_auto_without_a_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An `auto` key without `--plan` (or with another domain's plan) is one error line, before any work."""
    params = tmp_path / "params.yaml"
    params.write_text("det:\n  imgsz: auto\nlanes:\n  model:\n    width: auto\n")
    retail_plan = tmp_path / "retail.json"
    retail_plan.write_text(json.dumps({"format_version": 1, "domain": "retail", "values": {}}))
    for verb, message in (("train-det", "key 'imgsz' is auto"), ("train-lanes", "key 'model.width' is auto")):
        argv = [
            verb,
            "--dataset",
            str(tmp_path / "dataset.json"),
            "--out",
            str(tmp_path / "o"),
            "--params",
            str(params),
        ]
        assert _main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
        assert _main([*argv, "--plan", str(retail_plan)]) == 2
        assert "is a 'retail' plan, not a 'driving' one" in capsys.readouterr().err
    # a command-line flag replaces an auto value: no plan needed, the next error is the missing dataset
    params.write_text("det:\n  imgsz: auto\nlanes:\n  trainer:\n    max_time: auto\n")
    for flag in (["train-det", "--imgsz", "64"], ["train-lanes", "--max-time", "00:00:01:00"]):
        assert (
            _main(
                [
                    flag[0],
                    "--dataset",
                    str(tmp_path / "dataset.json"),
                    "--out",
                    str(tmp_path / "o"),
                    "--params",
                    str(params),
                    *flag[1:],
                ]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert "is auto" not in err and "dataset.json" in err


def test_plan_recorded_in_the_deployed_model(tmp_path: Path) -> None:
    """`deploy(..., plan=...)` of a small untrained lane model: `model.json` and the card hold the plan."""
    from visionpipes.core.artifact import read_record
    from visionpipes.core.plan import write_plan
    from visionpipes.driving.deploy import DeployConfig, deploy
    from visionpipes.driving.lanes.model import LaneModelConfig, build_lane_model, save_lane_model

    root = _sample(tmp_path / "raw")
    plan_path = write_plan(
        tmp_path / "plan.json",
        make_plan(root, probe_hardware("cuda", memory_gb=80, cpu_cores=16), params={"det": {"batch": 8}}),
    )
    config = LaneModelConfig(encoder="resnet18", decoder_channels=[16, 16, 8, 8, 8], width=64, height=32)
    save_lane_model(tmp_path / "lane_model.pt", build_lane_model(config).eval())
    plan = read_plan(plan_path, domain="driving").summary()
    deploy(
        tmp_path / "deploy",
        det_weights=None,
        lane_model=tmp_path / "lane_model.pt",
        config=DeployConfig(latency_runs=0),
        plan=plan,
    )
    record = read_record(tmp_path / "deploy", domain="driving")
    assert record["plan"]["fingerprint_sha256"] == plan["fingerprint_sha256"]
    assert record["plan"]["overridden"] == {
        "det.batch": {"planned": plan["values"]["det.batch"], "params": 8}
    }
    card = (tmp_path / "deploy" / "MODEL_CARD.md").read_text()
    assert (
        f"| `det.imgsz` | {plan['values']['det.imgsz']} |" in card
        and "| `det.batch` |" in card
        and "8 (params)" in card
    )
