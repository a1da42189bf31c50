"""Training, scoring and deploying the multi-task network on a tiny synthetic sample: letterboxed
items whose flip moves boxes and masks alike, the loss batch (drivable skipped where a sample has no
mask), a few steps that lower the loss, the staged schedule's freezing, params errors as one sentence,
the model family marker, and train -> deploy (perception.onnx in model.json) -> PerceptionRuntime
equal to the eager model."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from visionpipes.core.errors import UserError
from visionpipes.driving import cli
from visionpipes.driving.multitask.command import resolve_multitask_model
from visionpipes.driving.multitask.config import IGNORE_INDEX, MultiTaskConfig
from visionpipes.driving.multitask.data import MultiTaskDataset, collate, multitask_samples
from visionpipes.driving.multitask.loss import detection_targets
from visionpipes.driving.multitask.train import MultiTaskModule, train_multitask

W, H = 128, 96  # 1280x720 letterboxed: scale 0.1, 128x72, 12 grey rows above and below
PAD = 12
#: A small NAS-style backbone spec at strides 4/8/16/32 and narrow heads: fast on one thread.
TINY_MODEL = {
    "backbone": {
        "name": "tiny",
        "stem": "conv",
        "stem_width": 8,
        "stages": [
            {"block": "depthwise_separable", "depth": 1, "width": 16, "stride": 2},
            {"block": "inverted_residual", "depth": 1, "width": 24, "stride": 2, "expand_ratio": 3},
            {"block": "inverted_residual", "depth": 1, "width": 32, "stride": 2, "expand_ratio": 3},
            {"block": "basic", "depth": 1, "width": 48, "stride": 2},
        ],
    },
    "width": W,
    "height": H,
    "neck_width": 16,
    "seg_width": 16,
    "lane_head_width": 8,
    "drivable_head_width": 8,
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dataset_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visionpipes.driving.prepare import prepare_dataset
    from visionpipes.driving.synth.sample import SynthConfig, write_sample

    root = tmp_path_factory.mktemp("multitask")
    write_sample(root / "raw", SynthConfig(images=4, seed=3, val_fraction=0.25, cameras=0))
    prepare_dataset(root / "raw", root / "prepared")
    return root / "prepared" / "dataset.json"


def _module(schedule: str = "joint", **train) -> MultiTaskModule:
    cfg = MultiTaskConfig.from_params(
        {"model": TINY_MODEL, "train": {"schedule": schedule, "warmup_steps": 0, "lr": 3e-3, **train}},
        source="test",
    )
    return MultiTaskModule(cfg.model.to_dict(), cfg.loss.to_dict(), cfg.train.to_dict(), 100, 100.0)


def test_items_are_letterboxed_and_the_flip_moves_boxes_and_masks_alike(dataset_json: Path) -> None:
    samples = multitask_samples(dataset_json, "train")
    assert all(s.lane_mask is not None and s.drivable_mask is not None for s in samples)
    index = next(i for i, s in enumerate(samples) if len(s.boxes))
    plain = MultiTaskDataset(samples, (W, H))[index]
    assert plain["image"].shape == (3, H, W)
    assert torch.allclose(plain["image"][:, :PAD], torch.tensor(114 / 255))  # the letterbox band
    for key in ("lane_category", "lane_style", "lane_direction", "drivable"):
        assert (plain[key][:PAD] == IGNORE_INDEX).all() and (plain[key][-PAD:] == IGNORE_INDEX).all(), key
    assert set(plain["drivable"][PAD:-PAD].unique().tolist()) <= {0, 1, 2}
    assert (plain["lane_category"][PAD:-PAD] >= 0).all()
    assert torch.allclose(
        plain["boxes"], torch.from_numpy(samples[index].boxes) * 0.1 + torch.tensor([0, PAD, 0, PAD])
    )

    flipped = MultiTaskDataset(samples, (W, H), train=True, flip=1.0)[index]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    for key in ("lane_category", "lane_style", "lane_direction", "drivable"):
        assert torch.equal(flipped[key], plain[key].flip(-1)), key
    boxes = plain["boxes"]
    assert torch.allclose(
        flipped["boxes"], torch.stack([W - boxes[:, 2], boxes[:, 1], W - boxes[:, 0], boxes[:, 3]], 1)
    )
    assert torch.equal(flipped["classes"], plain["classes"])

    # seeded: the same seed and epoch flip the same items, whatever the order of reads
    first = MultiTaskDataset(samples, (W, H), train=True, flip=0.5, seed=7)
    second = MultiTaskDataset(samples, (W, H), train=True, flip=0.5, seed=7)
    draws = [[torch.equal(first[i]["image"], second[i]["image"]) for i in reversed(range(len(samples)))]]
    assert all(draws[0])


def test_the_batch_is_ultralytics_layout_and_a_missing_drivable_mask_is_skipped(dataset_json: Path) -> None:
    samples = multitask_samples(dataset_json, "train")[:2]
    items = [MultiTaskDataset(samples, (W, H))[i] for i in range(2)]
    batch = collate(items)
    expected = detection_targets([i["boxes"] for i in items], [i["classes"] for i in items], (W, H))
    for key in ("batch_idx", "cls", "bboxes"):
        assert torch.allclose(batch[key], expected[key]), key
    assert batch["drivable"].dtype == torch.int64 and batch["drivable"].shape == (2, H, W)

    unlabelled = [dataclasses.replace(s, drivable_mask=None) for s in samples]
    mixed = collate([MultiTaskDataset(unlabelled, (W, H))[0], items[1]])
    assert (mixed["drivable"][0] == IGNORE_INDEX).all() and (mixed["drivable"][1] != IGNORE_INDEX).any()
    none = collate([MultiTaskDataset(unlabelled, (W, H))[i] for i in range(2)])
    assert "drivable" not in none and "lane_category" in none  # the loss skips the drivable task

    module = _module()
    total, parts = module.criterion(module.model.forward_raw(none["image"]), none)
    assert torch.isfinite(total) and "drivable" not in parts and {"detection", "lanes"} <= set(parts)


def test_a_few_training_steps_reduce_the_loss(dataset_json: Path) -> None:
    """The lane and drivable losses fall step after step while the detection loss trains the same
    backbone. (The detection loss is no measure this early: ultralytics' task-aligned assigner
    normalises it by alignment-weighted target scores that start near zero, so it grows while the
    assigner finds its first positives — measured: 0.72 -> 3.1 in 20 steps on this sample.)"""
    samples = multitask_samples(dataset_json, "train")
    batch = collate([MultiTaskDataset(samples, (W, H))[i] for i in range(len(samples))])
    assert len(batch["cls"]) > 0
    module = _module(lr=1e-3)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    history = []
    for step in range(10):
        module.on_train_batch_start(batch, step)
        total, parts = module.criterion(module.model(batch["image"]), batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: float(v) for k, v in parts.items()})
    assert all(np.isfinite(h["total"]) for h in history)
    for task in ("lanes", "drivable"):
        values = [h[task] for h in history]
        assert values[-1] < 0.97 * values[0] and all(b < a for a, b in itertools.pairwise(values)), (
            task,
            values,
        )
    assert all(h["detection"] > 0 for h in history)
    detect = module.model.detect  # both branches of ultralytics' head learn: boxes (cv2) and classes (cv3)
    for branch in (detect.cv2, detect.cv3):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())


def test_a_few_steps_on_a_tiny_batch_reduce_the_detection_loss(dataset_json: Path) -> None:
    """The detection wiring learns (targets, strides, DFL bins, the head's bias init): 15 steps of
    the detection loss on the 3 training images at 256x160 (boxes of a few pixels at 128x96 find no
    positives) more than halve ultralytics' loss (measured 17.7 -> ~3)."""
    size = (256, 160)
    samples = multitask_samples(dataset_json, "train")
    batch = collate([MultiTaskDataset(samples, size)[i] for i in range(len(samples))])
    assert len(batch["cls"]) >= 10
    cfg = MultiTaskConfig.from_params(
        {
            "model": {**TINY_MODEL, "width": size[0], "height": size[1]},
            "loss": {"lanes": 0, "drivable": 0},
            "train": {"warmup_steps": 0, "lr": 3e-3},
        },
        source="test",
    )
    torch.manual_seed(0)
    module = MultiTaskModule(cfg.model.to_dict(), cfg.loss.to_dict(), cfg.train.to_dict(), 100, None)
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(15):
        total, parts = module.criterion(module.model(batch["image"]), batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(parts["detection"]))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses


def test_the_lane_and_multitask_trainers_share_one_warmup_cosine_schedule() -> None:
    """Both trainers take `core.training.adamw_warmup_cosine`; the lane model's learning rates are
    what its own schedule gave before the move (the reference formula below, copied from it)."""
    import math

    from visionpipes.driving.lanes.model import LaneModelConfig
    from visionpipes.driving.lanes.train import LaneModule, LaneTrainConfig

    def reference(step: int, warmup: int, total: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    lane_train = LaneTrainConfig(lr=0.004, warmup_steps=3, encoder_lr_scale=0.5, weight_decay=0.01)
    lane = LaneModule(LaneModelConfig(width=64, height=64).to_dict(), lane_train.to_dict(), 12, None)
    multi_cfg = MultiTaskConfig.from_params(
        {"model": TINY_MODEL, "train": {"lr": 0.002, "warmup_steps": 3, "max_minutes": None}}, source="test"
    )
    multi = MultiTaskModule(
        multi_cfg.model.to_dict(), multi_cfg.loss.to_dict(), multi_cfg.train.to_dict(), 12, None
    )
    for module, peaks in ((lane, [0.002, 0.004]), (multi, [0.002])):
        out = module.configure_optimizers()
        optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
        assert isinstance(optimizer, torch.optim.AdamW) and out["lr_scheduler"]["interval"] == "step"
        for step in range(14):
            lrs = [g["lr"] for g in optimizer.param_groups]
            assert lrs == pytest.approx([p * reference(step, 3, 12) for p in peaks]), (type(module), step)
            optimizer.step()
            scheduler.step()


def test_the_staged_schedule_trains_one_part_per_phase(dataset_json: Path) -> None:
    module = _module("staged", stages=[0.5, 0.25])  # budget 100 s: detection < 50 s < segmentation < 75 s
    module.train()
    parts = module.model.task_modules()

    def trainable(name: str) -> set[bool]:
        return {p.requires_grad for m in parts[name] for p in m.parameters()}

    for elapsed, phase, trained in (
        (10, "detection", {"encoder", "detection"}),
        (60, "segmentation", {"segmentation"}),
        (80, "joint", {"encoder", "detection", "segmentation"}),
    ):
        module._start = time.monotonic() - elapsed
        assert module.phase() == phase
        module.on_train_batch_start({}, 0)
        for name in parts:
            assert trainable(name) == {name in trained}, (phase, name)
        frozen_norms = [
            m
            for n in parts
            if n not in trained
            for x in parts[n]
            for m in x.modules()
            if isinstance(m, torch.nn.BatchNorm2d)
        ]
        assert not any(m.training for m in frozen_norms), phase
        weights = module.criterion.config
        assert (weights.detection > 0) == ("detection" in trained)
        assert (weights.lanes > 0) == (weights.drivable > 0) == ("segmentation" in trained)

    # a step of the segmentation phase leaves the encoder and the detection head untouched
    module._start = time.monotonic() - 60
    samples = multitask_samples(dataset_json, "train")[:2]
    batch = collate([MultiTaskDataset(samples, (W, H))[i] for i in range(2)])
    module.on_train_batch_start(batch, 0)
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items()}
    optimizer = module.configure_optimizers()["optimizer"]
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in module.model.backbone.parameters())
    assert any(p.grad is not None for p in module.model.lane_head.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.model.backbone.state_dict().items())


def _main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return int(exc.value.code or 0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("multitask:\n  train:\n    schedul: staged\n", "params.yaml:multitask: unknown key 'train.schedul'"),
        ("multitask:\n  train:\n    schedule: alternating\n", "params.yaml:multitask: key 'train.schedule'"),
        ("model:\n  family: three_model\n", "params.yaml:model: key 'family'"),
    ],
)
def test_bad_params_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], params: str, message: str
) -> None:
    (tmp_path / "params.yaml").write_text(params)
    argv = [
        "train-multitask",
        "--dataset",
        "d.json",
        "--out",
        str(tmp_path / "m"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    assert _main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_the_two_model_family_trains_nothing_and_is_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "params.yaml").write_text("model:\n  family: two_model\n")
    (tmp_path / "multi.yaml").write_text("model:\n  family: multitask\n")
    out = tmp_path / "m"
    assert (
        _main(
            [
                "train-multitask",
                "--dataset",
                "nowhere.json",
                "--out",
                str(out),
                "--params",
                str(tmp_path / "params.yaml"),
            ]
        )
        == 0
    )
    assert json.loads((out / "skipped.json").read_text())["family"] == "two_model"
    assert [p.name for p in out.iterdir()] == ["skipped.json"]
    assert resolve_multitask_model(str(out), str(tmp_path / "params.yaml")) is None
    with pytest.raises(UserError, match=r"model.family is multitask but .* holds no multitask_model\.pt"):
        resolve_multitask_model(str(out), str(tmp_path / "multi.yaml"))


def test_train_deploy_and_the_runtime_equals_the_eager_model(dataset_json: Path, tmp_path: Path) -> None:
    from visionpipes.core.artifact import read_record
    from visionpipes.core.image import read_image
    from visionpipes.driving.deploy import DeployConfig, deploy
    from visionpipes.driving.multitask.decode import network_input
    from visionpipes.driving.multitask.model import load_multitask_model
    from visionpipes.driving.multitask.runtime import PerceptionRuntime
    from visionpipes.driving.prepare import load_manifest

    cfg = MultiTaskConfig.from_params(
        {
            "model": TINY_MODEL,
            "train": {"batch_size": 2, "max_minutes": None, "max_epochs": 1, "warmup_steps": 1},
            "trainer": {"accelerator": "cpu", "log_every_n_steps": 1},
        },
        source="test",
    )
    run = train_multitask(dataset_json, tmp_path / "run", cfg)
    assert run.model_path.is_file() and run.epochs == 1 and run.phase_steps == {"joint": 1}
    logged = json.loads((tmp_path / "run" / "dvclive" / "metrics.json").read_text())  # DVCLive
    assert {"detection", "lanes", "drivable"} <= set(logged["train"])

    summary = deploy(
        tmp_path / "deploy",
        det_weights=None,
        lane_model=None,
        multitask_model=run.model_path,
        config=DeployConfig(latency_runs=0, perception_int8=False),
        dataset=dataset_json,
    )
    record = read_record(tmp_path / "deploy", domain="driving", verify=True)  # checksums
    assert record["files"]["perception"]["file"] == "perception.onnx"
    assert summary["models"]["perception"]["max_abs_diff"] <= 1e-4
    card = (tmp_path / "deploy" / "MODEL_CARD.md").read_text()
    assert "Multi-task network (`perception.onnx`)" in card
    assert "perception_int8" not in record["files"]  # off here: quantising and scoring twice is slow

    dataset = load_manifest(dataset_json)
    frames = [read_image(dataset.images["val"] / name, order="BGR") for name in dataset.names["val"]]
    runtime = PerceptionRuntime(tmp_path / "deploy" / "perception.onnx", threads=1)
    onnx_outputs, _ = runtime.raw(frames)
    model = load_multitask_model(run.model_path)
    x, _ = network_input(frames, (W, H))
    model.native_outputs = True  # as exported: segmentation logits at the heads' strides
    with torch.inference_mode():
        eager = model(torch.from_numpy(x))
    for name, got, want in zip(("predictions", "lanes", "drivable"), onnx_outputs, eager):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    result = runtime.predict(frames)[0]
    assert result.drivable_mask.shape == frames[0].shape[:2] and result.lanes.shape == frames[0].shape[:2]


def test_the_int8_graph_is_kept_only_within_both_the_ap_and_the_lane_limits() -> None:
    from visionpipes.driving.deploy import DeployConfig
    from visionpipes.driving.multitask.deploy import int8_verdict

    fp32 = {"AP": 0.600, "AP_50": 0.886, "lane_F1_pix2": 79.8, "drivable_mIoU": 92.6}
    config = DeployConfig()
    limits = (config.perception_max_ap_drop, config.perception_max_lane_drop)
    assert limits == (0.01, 1.0)
    kept, reason = int8_verdict(fp32, {**fp32, "AP": 0.5966, "lane_F1_pix2": 79.92}, *limits)
    assert kept and "AP -0.0034" in reason and "F1_pix2 +0.12" in reason
    # the first graph's int8 version: AP within 0.01, lanes 1.1 points down -> not deployed
    kept, reason = int8_verdict(fp32, {**fp32, "AP": 0.5966, "lane_F1_pix2": 78.7}, *limits)
    assert not kept and "lane F1_pix2 on val fell by 1.10 points (79.80 -> 78.70)" in reason
    kept, reason = int8_verdict(fp32, {**fp32, "AP": 0.585, "lane_F1_pix2": 80.0}, *limits, split="test")
    assert not kept and "AP on test fell by 0.0150" in reason
    assert int8_verdict(fp32, {**fp32, "lane_F1_pix2": 79.8 - 2.0}, 0.01, 2.5)[0]  # limits are honoured
    # the model card states the verdict with both graphs' scores
    from visionpipes.driving.multitask.deploy import card_lines

    int8 = {**fp32, "AP": 0.5966, "lane_F1_pix2": 78.7}
    kept, reason = int8_verdict(fp32, int8, *limits)
    report = {
        "perception": {
            "input": [1, 3, 224, 384],
            "parameters": 2_880_000,
            "gflops": 1.9,
            "max_abs_diff": 1e-5,
            "latency_ms_onnxruntime": None,
            "int8": {
                "kept": kept,
                "reason": reason,
                "split": "val",
                "official_scores_onnx": {"perception.onnx": fp32, "perception_int8.onnx": int8},
            },
        }
    }
    card = "\n".join(card_lines(report, None))
    assert "int8 (not deployed): int8 skipped: lane F1_pix2 on val fell by 1.10 points" in card
    assert "`perception_int8.onnx` AP 0.597 / AP_50 0.886, lane F1_pix2 78.70" in card
    assert "`lanes` (N, 13, H/s, W/s)" in card
