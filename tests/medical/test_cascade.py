"""nnU-Net's low-resolution cascade (`train.configuration`): the configuration's resolution, the
previous stage's one-hot input and its augmentations, and 3d_lowres + 3d_cascade_fullres trained, exported
and predicted end to end on a tiny synthetic sample whose plan enables the cascade."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.synth import SynthConfig, write_synthetic_task
from visionpipes.medical.runtime.cascade import one_hot_foreground
from visionpipes.medical.training.config import resolve_configuration, resolve_training_config

#: Volumes larger than the patch a 20 MB budget plans (20x20x16 of a ~30x35x28 median image: < 25 %).
CASCADE_SYNTH = SynthConfig(cases=4, size=40, seed=3, test_cases=1)
HARDWARE = {"device": "cuda", "memory_gb": 0.02, "cpu_cores": 2}  # cuda: the budget is exactly memory_gb
TRAIN_PARAMS = {
    "configuration": "auto",
    "max_epochs": 2,
    "progress": False,
    "log_every_n_steps": 1,
    "monitor": None,
    "check_val_every_n_epoch": 2,
    "model": {"name": "unet", "channels": [8, 16, 32], "strides": "auto", "num_res_units": 1},
    "data": {
        "roi_size": "auto",
        "batch_size": "auto",
        "pixdim": "auto",
        "num_samples": 1,
        "val_fraction": 0.2,
    },
}


def test_configuration_auto_follows_the_plan_and_explicit_ones_need_the_cascade() -> None:
    with_cascade = {"cascade": {"enabled": True, "lowres_spacing": [2.0, 2.0, 2.0]}}
    assert resolve_configuration("auto", with_cascade, source="p") == "3d_cascade_fullres"
    assert resolve_configuration("auto", {"cascade": {"enabled": False}}, source="p") == "3d_fullres"
    assert resolve_configuration("auto", None, source="p") == "3d_fullres"
    assert resolve_configuration("3d_fullres", with_cascade, source="p") == "3d_fullres"
    assert resolve_configuration("3d_lowres", with_cascade, source="p") == "3d_lowres"
    for requested in ("3d_lowres", "3d_cascade_fullres"):
        with pytest.raises(UserError, match=f"params.yaml:train: configuration {requested} needs a plan"):
            resolve_configuration(requested, {"cascade": {"enabled": False}}, source="params.yaml:train")
    with pytest.raises(UserError, match="no plan was given"):
        resolve_training_config({"configuration": "3d_cascade_fullres"}, None, source="params.yaml:train")
    with pytest.raises(UserError, match="configuration"):
        resolve_training_config({"configuration": "2d"}, None, source="params.yaml:train")
    config, _ = resolve_training_config({}, None, source="defaults")
    assert config.configuration == "3d_fullres"


def test_previous_stage_one_hot_and_its_augmentations() -> None:
    from visionpipes.medical.training.cascade import (
        PrevStageOneHotd,
        random_binary_operator,
        remove_random_component,
    )

    labels = np.zeros((24, 24, 24), dtype=np.int64)
    labels[4:14, 4:14, 4:14] = 2  # a large component (~7 % of the crop)
    labels[7:10, 7:10, 7:10] = 1
    labels[18:20, 18:20, 18:20] = 2  # a small one
    onehot = one_hot_foreground(labels, [1, 2, 3])
    assert onehot.shape == (3, 24, 24, 24) and onehot.dtype == np.float32
    assert onehot.sum(0).max() == 1 and np.array_equal(onehot.sum(0) > 0, labels > 0)
    assert onehot[2].sum() == 0 and onehot[0].sum() == 27

    # the transform appends the one-hot to the image and drops `prev`; without augmentation it is exact
    image = torch.randn(4, 24, 24, 24)
    out = PrevStageOneHotd([1, 2, 3], augment=False)({"image": image, "prev": torch.from_numpy(labels)[None]})
    assert "prev" not in out and out["image"].shape == (7, 24, 24, 24)
    assert torch.equal(out["image"][:4], image) and np.array_equal(out["image"][4:].numpy(), onehot)

    # nnU-Net's binary operators change masks yet keep them one-hot (a voxel gained is removed elsewhere)
    rng = np.random.RandomState(0)
    changed = 0
    for _ in range(10):
        aug = random_binary_operator(onehot.copy(), rng)
        assert aug.sum(0).max() <= 1 and set(np.unique(aug)) <= {0.0, 1.0}
        changed += int(not np.array_equal(aug, onehot))
    assert changed >= 3

    # the distance-transform morphology equals skimage's by a ball (what nnU-Net uses) at integer radii
    skimage_morphology = pytest.importorskip("skimage.morphology")
    from visionpipes.medical.training.cascade import BINARY_OPERATORS

    mask = labels > 0
    for radius in (1, 3):
        for name, operation in BINARY_OPERATORS.items():
            expected = getattr(skimage_morphology, name)(mask, skimage_morphology.ball(radius))
            assert np.array_equal(operation(mask, float(radius)), expected), (name, radius)

    # connected-component removal removes whole small components only (< 15 % of the crop)
    for _ in range(20):
        removed = remove_random_component(onehot.copy(), rng)
        lost = onehot[1] - removed[1]
        assert lost.min() == 0 and lost.sum() in (0, 8, 1000 - 27)
    big = np.zeros((1, 10, 10, 10), dtype=np.float32)
    big[0, :5] = 1  # half the crop: never removed
    assert np.array_equal(remove_random_component(big.copy(), np.random.RandomState(0)), big)


@pytest.fixture(scope="module")
def cascade_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A plan that enables the cascade, and 3d_lowres + 3d_cascade_fullres trained for 2 epochs each."""
    from visionpipes.medical.planning.fingerprint import compute_fingerprint
    from visionpipes.medical.planning.plan import make_plan, overrides_from_params, write_plan
    from visionpipes.medical.training.fit import train

    root = tmp_path_factory.mktemp("cascade")
    task = write_synthetic_task(root / "Task01_BrainTumour", CASCADE_SYNTH)
    plan = make_plan(
        compute_fingerprint(task, samples_total=20_000), HARDWARE, overrides_from_params(TRAIN_PARAMS)
    )
    plan_path = write_plan(root / "plan.json", plan)
    config, record = resolve_training_config(TRAIN_PARAMS, plan_path, source="test params")
    out = root / "run"
    result = train(task, out, config, plan=record)
    return {"task": task, "plan": plan, "config": config, "out": out, "result": result}


def test_cascade_trains_both_stages_and_predicts_end_to_end(cascade_run: dict, tmp_path: Path) -> None:
    import nibabel as nib

    from visionpipes.medical.runtime.predictor import Predictor

    plan, config, out, task = (
        cascade_run["plan"],
        cascade_run["config"],
        cascade_run["out"],
        cascade_run["task"],
    )
    assert plan.cascade["enabled"], plan.cascade
    assert config.configuration == "3d_cascade_fullres"
    low = json.loads((out / "lowres" / "train.json").read_text())
    full = json.loads((out / "train.json").read_text())
    assert low["config"]["configuration"] == "3d_lowres" and low["epochs"] == 2 and full["epochs"] == 2
    assert low["config"]["data"]["pixdim"] == pytest.approx(plan.cascade["lowres_spacing"])
    assert low["config"]["data"]["roi_size"] == plan.cascade["lowres_patch_size"]
    assert full["config"]["data"]["pixdim"] is None and full["config"]["data"]["roi_size"] == plan.patch_size
    assert full["plan"]["configuration"] == "3d_cascade_fullres"
    # the low-resolution label maps of every training case, on the case's own grid
    preds = sorted((out / "lowres" / "predictions").glob("*.nii.gz"))
    assert len(preds) == CASCADE_SYNTH.cases
    assert nib.load(preds[0]).shape == (CASCADE_SYNTH.size,) * 3

    ckpt = out / "checkpoints" / "last.ckpt"
    predictor = Predictor.load(ckpt)
    assert predictor.previous_stage is not None and predictor.foreground_labels == [1, 2, 3]
    seen: list[tuple[int, ...]] = []
    predictor.net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    scan = sorted((task / "imagesTs").glob("*.nii.gz"))[0]
    written = predictor.predict_file(scan, tmp_path / "seg.nii.gz")
    assert seen and all(s[1] == 4 + 3 for s in seen)  # 4 modalities + one-hot of labels 1, 2, 3
    assert seen[0][2:] == tuple(plan.patch_size)
    seg, image = nib.load(written), nib.load(scan)
    assert seg.shape == image.shape[:3] and np.allclose(seg.affine, image.affine)
    assert seg.header.get_zooms()[:3] == image.header.get_zooms()[:3]
    values = np.asarray(seg.dataobj)
    assert set(np.unique(values)) <= {0, 1, 2, 3}

    # the deploy folder holds both networks; predicting from it gives the checkpoint's label map
    from visionpipes.medical.training.bundle import export_bundle
    from visionpipes.medical.training.deploy import DeployConfig, deploy

    deployed = deploy(
        ckpt, tmp_path / "deploy", config=DeployConfig(formats=["torchscript"], runtime="torchscript")
    )
    assert {p.name for p in deployed.files.values()} == {"model.pt", "lowres_model.pt"}
    record = json.loads((tmp_path / "deploy" / "model.json").read_text())
    assert record["configuration"] == "3d_cascade_fullres" and record["plan"]["cascade"]["enabled"]
    assert record["description"]["previous_stage"]["foreground_labels"] == [1, 2, 3]
    card = (tmp_path / "deploy" / "MODEL_CARD.md").read_text()
    assert "not trained" not in card and "3d_cascade_fullres" in card
    again = Predictor.load(tmp_path / "deploy").predict_file(scan, tmp_path / "seg_deployed.nii.gz")
    assert np.array_equal(np.asarray(nib.load(again).dataobj), values)
    (tmp_path / "deploy" / "lowres_model.pt").unlink()
    with pytest.raises(UserError, match=r"lowres_model\.pt"):
        Predictor.load(tmp_path / "deploy" / "model.pt")
    with pytest.raises(UserError, match=r"3d_cascade_fullres.*cannot express"):
        export_bundle(ckpt, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
