"""Models, MONAI transforms, training through the core glue, and whole-volume prediction to NIfTI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.dataset_json import MSDCase, load_task
from visionpipes.medical.msd.regions import regions_from_labels
from visionpipes.medical.msd.volumes import read_nifti
from visionpipes.medical.runtime.checkpoint import load_training_checkpoint
from visionpipes.medical.runtime.networks import MODEL_NAMES, ModelConfig, build_model
from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor
from visionpipes.medical.training.config import SegmentationConfig
from visionpipes.medical.training.data import build_transforms, split_cases
from visionpipes.medical.training.fit import train

REGIONS = regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"})


# --- models and configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_map_modalities_to_region_logits(name: str) -> None:
    config = ModelConfig.from_params(
        {"name": name, "channels": [8, 16, 32], "strides": [2, 2], "attn": "cbam"}, source="model"
    )
    net = build_model(config, in_channels=4, out_channels=3)
    x = torch.randn(1, 4, 16, 16, 16, requires_grad=True)
    y = net(x)
    assert y.shape == (1, 3, 16, 16, 16)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_configuration_is_one_clear_error() -> None:
    with pytest.raises(UserError, match="model: key 'name' = 'vnet': input should be 'unet'"):
        ModelConfig.from_params({"name": "vnet"}, source="model")
    with pytest.raises(UserError, match=r"model: key 'strides' .*one stride per level"):
        ModelConfig.from_params({"channels": [8, 16, 32], "strides": [2]}, source="model")
    with pytest.raises(UserError, match="train: unknown key 'epochs'"):
        SegmentationConfig.from_params({"epochs": 3}, source="train")
    with pytest.raises(UserError, match=r"train: key 'data' .*divisible by 8"):
        SegmentationConfig.from_params({"data": {"roi_size": [36, 36, 36]}}, source="train")
    with pytest.raises(
        UserError, match=r"train: unknown key 'trainer\.max_epoch'; did you mean 'max_epochs'"
    ):
        SegmentationConfig.from_params({"trainer": {"max_epoch": 3}}, source="train")


def test_split_is_deterministic_and_disjoint() -> None:
    cases = [MSDCase(f"c{i}", Path(f"c{i}")) for i in range(10)]
    train_a, val_a = split_cases(cases, 0.2, seed=1)
    train_b, val_b = split_cases(cases, 0.2, seed=1)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 2 and not {c.case_id for c in train_a} & {c.case_id for c in val_a}
    assert split_cases(cases, 0.2, seed=2)[1] != val_a
    assert split_cases(cases[:1], 0.5, seed=0) == (cases[:1], [])


def test_training_transforms_give_crops_and_nested_regions(synth_task_readonly: Path) -> None:
    config = SegmentationConfig.from_params(
        {"data": {"roi_size": [16, 16, 16], "num_samples": 3}}, source="train"
    )
    task = load_task(synth_task_readonly)
    item = task.datalist()[0]
    samples = build_transforms(REGIONS, config.data, train=True, seed=0)(item)
    assert len(samples) == 3
    for sample in samples:
        image, regions = sample["image"], sample["label"]
        assert image.shape == (4, 16, 16, 16) and regions.shape == (3, 16, 16, 16)
        tc, wt, et = (regions[i].bool() for i in range(3))
        assert bool((et <= tc).all()) and bool((tc <= wt).all())  # ET inside TC inside WT
    whole = build_transforms(REGIONS, config.data, train=False)(item)
    brain = whole["image"][0] != 0
    assert abs(float(whole["image"][0][brain].mean())) < 1e-3  # non-zero voxels normalised per channel
    label, _ = read_nifti(task.training[0].label)
    assert int(whole["label"][1].sum()) == int((label > 0).sum())  # WT voxel count survives reorientation


# --- training -----------------------------------------------------------------------------------


def test_train_writes_checkpoints_logs_and_split(trained: Path) -> None:
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    assert (trained / "checkpoints" / "best.ckpt").is_file()
    split = json.loads((trained / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 1
    summary = json.loads((trained / "train.json").read_text())
    assert summary["epochs"] == 2 and summary["seconds_per_epoch"] > 0
    assert {"val_dice", "val_dice_TC", "val_dice_WT", "val_dice_ET", "train_loss"} <= set(summary["metrics"])
    logged = json.loads((trained / "dvclive" / "metrics.json").read_text())
    assert "train" in logged and "val" in logged
    assert (trained / "dvclive" / "plots" / "metrics" / "val" / "dice.tsv").is_file()
    hp = load_training_checkpoint(trained / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert hp["modality"] == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert hp["regions"] == [["TC", [2, 3]], ["WT", [1, 2, 3]], ["ET", [3]]]


def test_training_is_reproducible_by_seed(
    synth_task_readonly: Path, tmp_path: Path, tiny_train: dict
) -> None:
    """The seed fixes the initial weights too, not only the data order: same seed, same weights."""
    config = SegmentationConfig.from_params(
        {**tiny_train, "max_epochs": 1, "trainer": {"progress": False}}, source="train"
    )
    weights = []
    for run in ("a", "b"):
        train(synth_task_readonly, tmp_path / run, config)
        weights.append(load_training_checkpoint(tmp_path / run / "checkpoints" / "last.ckpt")["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_resumes_from_last_checkpoint(
    trained: Path, synth_task_readonly: Path, tmp_path: Path, tiny_train: dict
) -> None:
    import shutil

    run = Path(shutil.copytree(trained, tmp_path / "run"))
    config = SegmentationConfig.from_params(
        {**tiny_train, "trainer": {**tiny_train["trainer"], "max_epochs": 3}}, source="train"
    )
    result = train(synth_task_readonly, run, config)
    assert result.fit.resumed_from == run / "checkpoints" / "last.ckpt"
    assert result.fit.epochs == 3
    assert json.loads((run / "train.json").read_text())["epochs_this_run"] == 1


def test_train_rejects_volumes_that_do_not_match_the_task(
    synth_task: Path, tmp_path: Path, tiny_train: dict
) -> None:
    path = synth_task / "imagesTr" / "BRATS_001.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[..., :2], img.affine), path)
    with pytest.raises(UserError, match=r"BRATS_001\.nii\.gz has shape \(32, 32, 32, 2\).*4 modalities"):
        train(synth_task, tmp_path / "run", SegmentationConfig.from_params(tiny_train, source="train"))


# --- inference ----------------------------------------------------------------------------------


def test_predict_file_keeps_grid_affine_and_header(
    trained: Path, synth_task_readonly: Path, tmp_path: Path
) -> None:
    predictor = Predictor.from_checkpoint(
        trained / "checkpoints" / "best.ckpt", InferenceConfig(tta_flips=True)
    )
    scan = synth_task_readonly / "imagesTs" / "BRATS_004.nii.gz"
    out = predictor.predict_file(scan, tmp_path / "BRATS_004_seg.nii.gz")
    ref, seg = nib.load(scan), nib.load(out)
    assert seg.shape == ref.shape[:3]
    np.testing.assert_array_equal(seg.affine, ref.affine)
    assert seg.header.get_zooms() == ref.header.get_zooms()[:3]
    assert seg.header["qform_code"] == ref.header["qform_code"] and seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2, 3}
    assert [p.name for p in tmp_path.iterdir()] == ["BRATS_004_seg.nii.gz"]  # no temporary left


class _ChannelZeroIsTumour(torch.nn.Module):
    """A stand-in network: every region wherever channel 0 is non-zero (so geometry can be checked)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (20.0 * (x[:, :1] != 0).float() - 10.0).repeat(1, 3, 1, 1, 1)


@pytest.mark.parametrize("pixdim", [None, (2.0, 2.0, 2.0)])
def test_prediction_lands_on_the_input_grid(pixdim, tmp_path: Path) -> None:
    """An LPS-stored scan is reoriented (and resampled) for the model and the result mapped back."""
    image = np.zeros((4, 30, 26, 22), np.float32)
    # An off-centre block (a flip or axis swap would move it) of varied intensities (normalising a constant
    # block would zero it).
    image[:, 2:12, 3:9, 14:20] = np.random.default_rng(0).uniform(1.0, 2.0, (4, 10, 6, 6))
    affine = np.diag([-1.5, -1.0, 2.0, 1.0])
    predictor = Predictor(
        _ChannelZeroIsTumour(),
        regions=REGIONS,
        modality=["a", "b", "c", "d"],
        roi_size=(16, 16, 16),
        pixdim=pixdim,
    )
    labels = predictor.predict_array(image, affine)
    assert labels.shape == (30, 26, 22)
    expected = np.where(image[0] != 0, 3, 0)
    if pixdim is None:
        np.testing.assert_array_equal(labels, expected)
    else:  # resampled to 2 mm and back: the block survives up to its border voxels
        inter = np.logical_and(labels == 3, expected == 3).sum()
        assert inter / np.logical_or(labels == 3, expected == 3).sum() > 0.6


def _write(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


@pytest.mark.parametrize(
    ("make_input", "output", "match"),
    [
        (
            lambda d: _write(d / "two.nii.gz", np.ones((16, 16, 16, 2), np.float32)),
            "seg.nii.gz",
            "2 channels",
        ),
        (lambda d: _write(d / "flat.nii.gz", np.ones((16, 16, 16), np.float32)), "seg.nii.gz", "3-D volume"),
        (lambda d: d / "missing.nii.gz", "seg.nii.gz", "does not exist"),
        (
            lambda d: (d / "bad.nii.gz").write_bytes(b"\x1f\x8b broken") and d / "bad.nii.gz",
            "seg.nii.gz",
            "truncated",
        ),
        (
            lambda d: _write(d / "ok.nii.gz", np.ones((16, 16, 16, 4), np.float32)),
            "nofolder/seg.nii.gz",
            "does not exist",
        ),
        (lambda d: _write(d / "ok.nii.gz", np.ones((16, 16, 16, 4), np.float32)), "seg.png", "must end in"),
    ],
)
def test_predict_bad_input_leaves_no_output(
    trained: Path, tmp_path: Path, make_input, output: str, match: str
) -> None:
    predictor = Predictor.from_checkpoint(trained / "checkpoints" / "last.ckpt")
    scan = make_input(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=match):
        predictor.predict_file(scan, tmp_path / output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch file"):
        Predictor.from_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="not written by `vp-medical train`"):
        Predictor.from_checkpoint(tmp_path / "other.ckpt")


# --- command line -------------------------------------------------------------------------------


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from visionpipes.medical import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


def test_cli_train_with_params_file(
    synth_task_readonly: Path, tmp_path: Path, capsys, tiny_train: dict
) -> None:
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": tiny_train}))
    code, out, _ = _cli(["train", str(synth_task_readonly), "--out", str(tmp_path / "run"), "--params", str(params),
                         "--epochs", "1"], capsys)  # fmt: skip
    assert code == 0 and "trained 1 epochs" in out
    assert json.loads((tmp_path / "run" / "train.json").read_text())["epochs"] == 1
    params.write_text(yaml.safe_dump({"train": {"lr": 0.01, "epochz": 2}}))
    code, _, err = _cli(
        ["train", str(synth_task_readonly), "--out", str(tmp_path / "r2"), "--params", str(params)], capsys
    )
    assert code == 2 and err.startswith(f"error: {params}:train: unknown key 'epochz'")


def test_cli_evaluate_writes_dvc_metrics(
    trained: Path, synth_task_readonly: Path, tmp_path: Path, capsys
) -> None:
    metrics, cases = tmp_path / "metrics.json", tmp_path / "cases.json"
    code, out, _ = _cli(["evaluate", str(synth_task_readonly), "--model", str(trained / "checkpoints" / "best.ckpt"),
                         "--split", str(trained / "split.json"), "--metrics", str(metrics), "--cases-out", str(cases)],
                        capsys)  # fmt: skip
    assert code == 0 and '"WT"' in out
    summary = json.loads(metrics.read_text())
    assert set(summary) == {"TC", "WT", "ET", "mean"}
    for region in ("TC", "WT", "ET"):
        assert summary[region]["n_dice"] == 2  # both held-out cases have every region
        assert 0.0 <= summary[region]["dice"] <= 1.0
    per_case = json.loads(cases.read_text())
    assert [c["case_id"] for c in per_case] == json.loads((trained / "split.json").read_text())["val"]


@pytest.mark.parametrize("kind", ["missing model", "channels", "missing output folder"])
def test_cli_predict_bad_input(kind: str, trained: Path, tmp_path: Path, capsys) -> None:
    model = trained / "checkpoints" / "last.ckpt"
    scan = _write(tmp_path / "scan.nii.gz", np.ones((16, 16, 16, 4), np.float32))
    output = tmp_path / "seg.nii.gz"
    if kind == "missing model":
        model = tmp_path / "none.ckpt"
    elif kind == "channels":
        scan = _write(tmp_path / "scan.nii.gz", np.ones((16, 16, 16, 3), np.float32))
    else:
        output = tmp_path / "absent" / "seg.nii.gz"
    code, _, err = _cli(
        ["predict", "--model", str(model), "--input", str(scan), "--output", str(output)], capsys
    )
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_cli_predict_folder(trained: Path, synth_task_readonly: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = _cli(["predict", "--model", str(trained / "checkpoints" / "best.ckpt"), "--input",
                         str(synth_task_readonly / "imagesTs"), "--output", str(tmp_path)], capsys)  # fmt: skip
    assert code == 0 and "wrote 1 label maps" in out
    assert [p.name for p in tmp_path.iterdir()] == ["BRATS_004.nii.gz"]
