"""The data stage (synthesise or validate + point), the data fingerprint, deployment to ONNX + TorchScript
with a model card, and prediction from every model form `vp-medical` writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from visionpipes.core.errors import UserError
from visionpipes.medical.data_stage import (
    DataStageConfig,
    dataset_fingerprint,
    prepare_data,
    resolve_task_dir,
)
from visionpipes.medical.msd.regions import regions_from_labels
from visionpipes.medical.msd.volumes import read_nifti, to_channels_first
from visionpipes.medical.runtime.deployed import load_deployed
from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor
from visionpipes.medical.training.config import SegmentationConfig
from visionpipes.medical.training.deploy import DeployConfig, deploy

REGIONS = regions_from_labels({0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"})


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from visionpipes.medical import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


@pytest.fixture(scope="module")
def deployed(trained: Path, synth_task_readonly: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny trained model deployed with non-default inference settings and a metrics file."""
    tmp = tmp_path_factory.mktemp("deploy")
    metrics = tmp / "metrics.json"
    metrics.write_text(json.dumps({"WT": {"dice": 0.5, "hd95": 3.0, "n_dice": 2}, "mean": {"dice": 0.4}}))
    deploy(
        trained / "checkpoints" / "last.ckpt",
        tmp / "model",
        inference=InferenceConfig(overlap=0.25, crop_foreground=True),
        task_dir=synth_task_readonly,
        metrics=metrics,
        params={"train": {"max_epochs": 2}},
    )
    return tmp / "model"


# --- data stage ---------------------------------------------------------------------------------


def test_fingerprint_follows_content_or_sizes(synth_task: Path) -> None:
    content, sizes = dataset_fingerprint(synth_task), dataset_fingerprint(synth_task, "size")
    assert content["files"] == 7 and content["bytes"] > 0 and content["sha256"] != sizes["sha256"]
    label = synth_task / "labelsTr" / "BRATS_001.nii.gz"
    data = bytearray(label.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    label.write_bytes(bytes(data))
    assert dataset_fingerprint(synth_task)["sha256"] != content["sha256"]
    assert dataset_fingerprint(synth_task, "size")["sha256"] == sizes["sha256"]
    label.unlink()
    with pytest.raises(
        UserError, match=r"BRATS_001\.nii\.gz is listed in .*dataset\.json but does not exist"
    ):
        dataset_fingerprint(synth_task)


def test_data_stage_synthesises_and_points(tmp_path: Path) -> None:
    record = prepare_data(DataStageConfig(cases=2, size=24, test_cases=1, seed=3), tmp_path / "raw")
    assert record["synthetic"] and record["task_dir"] == "Task01_BrainTumour"
    assert json.loads((tmp_path / "raw" / "task.json").read_text()) == record
    assert resolve_task_dir(tmp_path / "raw") == tmp_path / "raw" / "Task01_BrainTumour"
    assert resolve_task_dir(tmp_path / "raw" / "task.json") == tmp_path / "raw" / "Task01_BrainTumour"
    assert (
        resolve_task_dir(tmp_path / "raw" / "Task01_BrainTumour") == tmp_path / "raw" / "Task01_BrainTumour"
    )
    assert record["fingerprint"] == dataset_fingerprint(tmp_path / "raw" / "Task01_BrainTumour")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temporary left


def test_data_stage_validates_a_real_folder_in_place(synth_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "pipeline" / "raw"
    record = prepare_data(DataStageConfig(path=str(synth_task)), out)
    assert not record["synthetic"] and resolve_task_dir(out) == synth_task
    assert not (out / "Task01_BrainTumour").exists()  # read in place, never copied
    # a relative data.path is taken from the params folder and recorded relative to the output
    relative = prepare_data(
        DataStageConfig(path="../Task01_BrainTumour"), out, base_dir=tmp_path / "pipeline"
    )
    assert resolve_task_dir(out).resolve() == synth_task.resolve()
    assert relative["fingerprint"] == record["fingerprint"]
    # a broken folder is refused and the previous output stays as it was
    before = (out / "task.json").read_text()
    image = synth_task / "imagesTr" / "BRATS_002.nii.gz"
    image.write_bytes(image.read_bytes()[:100])
    with pytest.raises(UserError, match=r"fails validation with \d+ problems .*BRATS_002\.nii\.gz"):
        prepare_data(DataStageConfig(path=str(synth_task)), out)
    assert (out / "task.json").read_text() == before
    with pytest.raises(UserError, match=r"data\.path .* is not a folder"):
        prepare_data(DataStageConfig(path=str(tmp_path / "absent")), out)
    with pytest.raises(UserError, match=r"params\.yaml:data: unknown key 'folder'"):
        DataStageConfig.from_params({"folder": "x"}, source="params.yaml:data")


def test_cli_data_reads_params(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  cases: 1\n  size: 24\n  test_cases: 0\n  fingerprint: size\n")
    code, out, _ = _cli(["data", "--params", str(params), "--out", str(tmp_path / "raw")], capsys)
    assert code == 0 and out.startswith("synthetic task BRATS: 1 training and 0 test cases")
    assert json.loads((tmp_path / "raw" / "task.json").read_text())["fingerprint"]["mode"] == "size"
    params.write_text("data:\n  path: nowhere\n")
    code, _, err = _cli(["data", "--params", str(params), "--out", str(tmp_path / "raw2")], capsys)
    assert code == 2 and err.startswith("error: data.path nowhere is not a folder")
    assert not (tmp_path / "raw2").exists()


# --- configuration --------------------------------------------------------------------------------


def test_trainer_keys_may_be_given_flat() -> None:
    config = SegmentationConfig.from_params({"max_epochs": 3, "seed": 5, "lr": 0.01}, source="train")
    assert (config.trainer.max_epochs, config.trainer.seed, config.lr) == (3, 5, 0.01)
    assert config.trainer.monitor == "val_dice"
    assert SegmentationConfig.from_params({"monitor": None}, source="train").trainer.monitor is None
    with pytest.raises(UserError, match="train: max_epochs given both flat and under trainer"):
        SegmentationConfig.from_params({"max_epochs": 3, "trainer": {"max_epochs": 4}}, source="train")


# --- deployment -----------------------------------------------------------------------------------


def test_deploy_writes_checked_files_and_a_model_card(deployed: Path, synth_task_readonly: Path) -> None:
    assert sorted(p.name for p in deployed.iterdir()) == [
        "MODEL_CARD.md",
        "model.json",
        "model.onnx",
        "model.pt",
    ]
    record = json.loads((deployed / "model.json").read_text())
    assert record["runtime"] == "onnx" and record["inference"]["overlap"] == 0.25
    for fmt in ("onnx", "torchscript"):
        assert record["files"][fmt]["max_abs_diff"] <= 1e-4 + 1e-4 * 10  # the core parity check passed
    assert record["data"]["fingerprint"] == dataset_fingerprint(synth_task_readonly)
    card = (deployed / "MODEL_CARD.md").read_text()
    for expected in (
        "| WT | 0.5000 | 3.0000 | 2 |",  # metrics
        "max_epochs: 2",  # params
        record["data"]["fingerprint"]["sha256"],  # data fingerprint
        "FLAIR, T1w, t1gd, T2w",
        "TC = labels {2, 3}",
    ):
        assert expected in card
    assert [p.name for p in deployed.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("form", ["folder", "model.onnx", "model.pt", "checkpoint"])
def test_every_model_form_predicts_the_same(
    form: str, deployed: Path, trained: Path, synth_task_readonly: Path
) -> None:
    model = {
        "folder": deployed,
        "model.onnx": deployed / "model.onnx",
        "model.pt": deployed / "model.pt",
        "checkpoint": trained / "checkpoints" / "last.ckpt",
    }[form]
    predictor = Predictor.load(model, overlap=0.25, crop_foreground=True)
    reference = Predictor.load(trained / "checkpoints" / "last.ckpt", overlap=0.25, crop_foreground=True)
    data, image = read_nifti(synth_task_readonly / "imagesTr" / "BRATS_002.nii.gz")
    volume = to_channels_first(data, 4)
    got, want = predictor.predict_array(volume, image.affine), reference.predict_array(volume, image.affine)
    assert got.shape == want.shape and (got == want).mean() > 0.999  # onnxruntime differs by ~1e-6
    assert predictor.regions == reference.regions and predictor.modality == ["FLAIR", "T1w", "t1gd", "T2w"]


def test_deployed_model_brings_its_settings(deployed: Path) -> None:
    assert Predictor.load(deployed).config.overlap == 0.25
    assert Predictor.load(deployed / "model.pt").config.crop_foreground is True
    assert Predictor.load(deployed, overlap=0.5).config.overlap == 0.5  # a flag wins
    net, description, _ = load_deployed(deployed / "model.pt")
    assert description["roi_size"] == [32, 32, 32]
    # traced with dynamic shapes: a window of another size runs
    assert net(torch.zeros(2, 4, 16, 24, 32)).shape == (2, 3, 16, 24, 32)


def test_crop_to_foreground_changes_nothing_outside_the_brain() -> None:
    class Bright(torch.nn.Module):  # every region where channel 0 is non-zero
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (20.0 * (x[:, :1] != 0).float() - 10.0).repeat(1, 3, 1, 1, 1)

    image = np.zeros((4, 40, 36, 30), np.float32)
    image[:, 5:17, 20:31, 3:12] = np.random.default_rng(0).uniform(1.0, 2.0, (4, 12, 11, 9))
    labels = {}
    for crop in (False, True):
        predictor = Predictor(
            Bright(),
            regions=REGIONS,
            modality=["a", "b", "c", "d"],
            roi_size=(16, 16, 16),
            config=InferenceConfig(crop_foreground=crop, crop_margin=2),
        )
        labels[crop] = predictor.predict_array(image, np.eye(4))
    np.testing.assert_array_equal(labels[True], labels[False])
    assert int((labels[True] == 3).sum()) == 12 * 11 * 9


def test_parity_failure_and_bad_models_are_one_clear_error(
    trained: Path, deployed: Path, tmp_path: Path, capsys
) -> None:
    checkpoint = trained / "checkpoints" / "last.ckpt"
    code, _, err = _cli(
        ["export", "--model", str(checkpoint), "--out", str(tmp_path / "strict"), "--formats", "onnx", "--params",
         str(_params(tmp_path, "deploy:\n  atol: 0.0\n  rtol: 0.0\n"))],
        capsys,
    )  # fmt: skip
    assert code == 2 and "differs from the eager model" in err and not (tmp_path / "strict").exists()
    with pytest.raises(UserError, match="deploy: runtime 'onnx' must be one of the formats"):
        DeployConfig.from_params({"formats": ["torchscript"]}, source="deploy")
    bad = {
        "no record": tmp_path / "empty",
        "not onnx": tmp_path / "junk.onnx",
        "foreign onnx": tmp_path / "foreign.onnx",
    }
    bad["no record"].mkdir()
    bad["not onnx"].write_bytes(b"not a model")
    from visionpipes.core.export import export_onnx

    export_onnx(torch.nn.Conv3d(4, 3, 1), torch.zeros(1, 4, 4, 4, 4), bad["foreign onnx"])
    messages = {
        "no record": "has no model.json",
        "not onnx": "cannot be loaded by onnxruntime",
        "foreign onnx": "was not written by `vp-medical export`",
    }
    for kind, path in bad.items():
        with pytest.raises(UserError, match=messages[kind]):
            Predictor.load(path)


def _params(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_cli_predict_with_the_deployed_model(
    deployed: Path, synth_task_readonly: Path, tmp_path: Path, capsys
) -> None:
    scan = synth_task_readonly / "imagesTs" / "BRATS_004.nii.gz"
    for model in (deployed, deployed / "model.pt"):
        out = tmp_path / f"{model.name}.nii.gz"
        code, stdout, _ = _cli(
            ["predict", "--model", str(model), "--input", str(scan), "--output", str(out)], capsys
        )
        assert code == 0 and stdout.strip() == f"wrote {out}"
        assert nib.load(out).shape == nib.load(scan).shape[:3]
    # a 3-channel scan for a 4-channel model: one line, no output file
    three = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16, 3), np.float32), np.eye(4)), three)
    code, _, err = _cli(
        ["predict", "--model", str(deployed), "--input", str(three), "--output", str(tmp_path / "x.nii.gz")],
        capsys,
    )
    assert (
        code == 2
        and "has 3 channels (shape (16, 16, 16, 3)), but 4 modalities" in err
        and not (tmp_path / "x.nii.gz").exists()
    )


def test_cli_evaluate_draws_the_overlay(
    trained: Path, synth_task_readonly: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "eval"  # created by evaluate
    code, _, _ = _cli(
        ["evaluate", str(synth_task_readonly), "--model", str(trained / "checkpoints" / "last.ckpt"),
         "--split", str(trained / "split.json"), "--metrics", str(out / "metrics.json"),
         "--overlay", str(out / "overlay.png"), "--overlap", "0.25"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(json.loads((out / "metrics.json").read_text())) == {"TC", "WT", "ET", "mean"}
    shutil.rmtree(out)


# --- runtime without the training stack ----------------------------------------------------------

#: What a predictor must never load: the training modules and the training stack.
TRAINING_STACK = ("lightning", "pytorch_lightning", "dvclive", "optuna", "visionpipes.medical.training")


def _loaded_training_modules(code: str) -> dict:
    """Run `code` in a fresh interpreter; return its JSON result plus the training modules it loaded."""
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        f"{code}\n"
        f"stack = {TRAINING_STACK!r}\n"
        "loaded = sorted(m for m in sys.modules if any(m == s or m.startswith(s + '.') for s in stack))\n"
        "print(json.dumps({'result': result, 'loaded': loaded}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_runtime_modules_import_no_training() -> None:
    out = _loaded_training_modules(
        "import visionpipes.medical.runtime.predictor, visionpipes.medical.runtime.deployed\n"
        "import visionpipes.medical.cli\n"
        "result = None"
    )
    assert out["loaded"] == []


def test_predict_with_a_deployed_model_loads_no_training(
    deployed: Path, trained: Path, synth_task_readonly: Path, tmp_path: Path
) -> None:
    """`vp-medical predict` (deployed folder, then checkpoint) loads no training module, Lightning or DVCLive.

    Optuna is the one exception we do not control: `import monai` itself loads every MONAI subpackage,
    and `monai.apps.auto3dseg` imports Optuna whenever it is installed (here, through core's `nas`
    extra). So Optuna may appear only if MONAI alone brings it in this environment.
    """
    by_monai = set(_loaded_training_modules("import monai\nresult = None")["loaded"])
    scan = synth_task_readonly / "imagesTs" / "BRATS_004.nii.gz"
    for model in (deployed, trained / "checkpoints" / "last.ckpt"):
        out = tmp_path / f"{model.name}.nii.gz"
        run = _loaded_training_modules(
            "from visionpipes.medical import cli\n"
            "try:\n"
            f"    cli.main(['predict', '--model', {str(model)!r}, '--input', {str(scan)!r}, '--output', {str(out)!r}])\n"
            "except SystemExit as exit:\n"
            "    result = exit.code"
        )
        assert run["result"] == 0 and out.is_file()
        ours = [m for m in run["loaded"] if m not in by_monai]
        assert ours == [], ours
        assert not any(m.startswith(("lightning", "pytorch_lightning", "dvclive")) for m in run["loaded"])
