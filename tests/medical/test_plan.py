"""`vp-medical plan`: the nnU-Net dataset fingerprint of an MSD folder (checked against nibabel + numpy
computed here), plans for a CPU and for an 80 GB GPU, `auto` values resolved from the plan, the
per-channel normalisation (CT against numpy, MRI against MONAI), one-line errors, and the plan
recorded in a deployed model."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_fill_holes

from visionpipes.core.errors import UserError
from visionpipes.medical.planning.fingerprint import compute_fingerprint
from visionpipes.medical.planning.normalization import NormalizeChannelsd, normalize_channels
from visionpipes.medical.planning.plan import make_plan, read_plan, write_plan
from visionpipes.medical.training.config import resolve_training_config

CPU = {"device": "cpu", "memory_gb": 8.0, "cpu_cores": 2}
CPU_GFLOPS = 40.0  # GFLOP/s of a 32-channel conv (what `plan.cpu_gflops` gives)
GPU80 = {"device": "cuda", "memory_gb": 80.0, "cpu_cores": 16}


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from visionpipes.medical import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return info.value.code, out, err


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-case 24^3 Task01 sample written by `vp-medical synth` (never modify it)."""
    from visionpipes.medical import cli

    out = tmp_path_factory.mktemp("plan") / "Task01_BrainTumour"
    with pytest.raises(SystemExit) as info:
        cli.main(["synth", str(out), "--cases", "3", "--size", "24", "--seed", "5", "--test-cases", "1"])
    assert info.value.code == 0
    return out


def _task01_like(cases: int = 484) -> dict:
    """A fingerprint with Task01's geometry (1 mm, 138 x 169 x 138 after cropping, four MRI channels)."""
    stats = {"mean": 1.0, "std": 1.0, "percentile_00_5": 0.0, "percentile_99_5": 2.0}
    return {
        "spacings": [[1.0, 1.0, 1.0]] * cases,
        "shapes_after_crop": [[138, 169, 138]] * cases,
        "modality": ["FLAIR", "T1w", "t1gd", "T2w"],
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "median_relative_size_after_cropping": 0.6,
        "foreground_intensity_properties_per_channel": [dict(stats) for _ in range(4)],
    }


# --- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_matches_nibabel_and_numpy(tiny_task: Path) -> None:
    fp = compute_fingerprint(tiny_task, samples_total=600_000)
    dataset = json.loads((tiny_task / "dataset.json").read_text())
    assert fp["modality"] == ["FLAIR", "T1w", "t1gd", "T2w"] and fp["num_training"] == 3
    pooled: list[list[np.ndarray]] = [[] for _ in range(4)]
    counts: dict[int, int] = {}
    relative = []
    for i, item in enumerate(dataset["training"]):
        image = nib.load(tiny_task / item["image"])
        label = np.asarray(nib.load(tiny_task / item["label"]).dataobj).astype(int)
        data = np.asarray(image.dataobj, dtype=np.float32)  # (X, Y, Z, C)
        assert fp["spacings"][i] == pytest.approx(list(image.header.get_zooms()[:3]))
        mask = binary_fill_holes((data != 0).any(axis=-1))
        box = tuple(
            slice(int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]),
                  int(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[-1]) + 1)
            for axis in range(3)
        )  # fmt: skip
        shape = [s.stop - s.start for s in box]
        assert fp["shapes_after_crop"][i] == shape  # diagonal affine: RAS order is the file's
        assert fp["shapes_before_crop"][i] == list(label.shape)
        relative.append(np.prod(shape) / label.size)
        foreground = label[box] > 0
        for c in range(4):
            pooled[c].append(data[box][..., c][foreground])
        for value, n in zip(*np.unique(label, return_counts=True)):
            counts[int(value)] = counts.get(int(value), 0) + int(n)
    assert fp["median_relative_size_after_cropping"] == pytest.approx(np.median(relative))
    for value, n in counts.items():
        assert fp["label_frequencies"][str(value)]["voxels"] == n
    for c in range(4):
        # nnU-Net draws as many samples from every case: each case weighs the same, whatever its size;
        # 200,000 draws per case from a few thousand voxels approach these weighted statistics
        voxels = np.concatenate(pooled[c]).astype(np.float64)
        weights = np.concatenate([np.full(len(v), 1.0 / len(v)) for v in pooled[c]])
        mean = np.average(voxels, weights=weights)
        std = np.sqrt(np.average((voxels - mean) ** 2, weights=weights))
        order = np.argsort(voxels)
        cumulative = np.cumsum(weights[order]) / weights.sum()
        got = fp["foreground_intensity_properties_per_channel"][c]
        assert got["mean"] == pytest.approx(mean, rel=0.005)
        assert got["std"] == pytest.approx(std, rel=0.01)
        for key, q in (("percentile_00_5", 0.005), ("percentile_99_5", 0.995)):
            assert got[key] == pytest.approx(voxels[order][np.searchsorted(cumulative, q)], rel=0.02)
        assert got["min"] >= voxels.min() and got["max"] <= voxels.max()


def test_fingerprint_samples_as_nnunet_and_is_deterministic(tiny_task: Path) -> None:
    fp = compute_fingerprint(tiny_task, samples_total=300)
    assert fp == compute_fingerprint(tiny_task, samples_total=300)
    assert fp["foreground_samples_per_case"] == 100
    dataset = json.loads((tiny_task / "dataset.json").read_text())
    drawn = []
    for item in dataset["training"]:  # nnU-Net: RandomState(1234) per case, 100 draws with replacement
        data = np.asarray(nib.load(tiny_task / item["image"]).dataobj, dtype=np.float32)[..., 0]
        label = np.asarray(nib.load(tiny_task / item["label"]).dataobj)
        drawn.append(np.random.RandomState(1234).choice(data[label > 0], 100, replace=True))
    assert fp["foreground_intensity_properties_per_channel"][0]["mean"] == pytest.approx(
        float(np.concatenate(drawn).astype(np.float64).mean()), rel=1e-9
    )


# --- plans ---------------------------------------------------------------------------------------


def test_gpu_budget_plans_a_bigger_patch_and_batch_than_the_cpu() -> None:
    cpu = make_plan(_task01_like(), CPU, cpu_gflops=CPU_GFLOPS)
    gpu = make_plan(_task01_like(), GPU80)
    assert cpu.memory["budget_gb"] == pytest.approx(4.0)  # the 8 GB RAM share, counted half (fp32)
    assert gpu.memory["budget_gb"] == 80
    assert all(g >= c for g, c in zip(gpu.patch_size, cpu.patch_size))
    assert np.prod(gpu.patch_size) * gpu.batch_size > 2 * np.prod(cpu.patch_size) * cpu.batch_size
    assert gpu.batch_size > 2 and cpu.batch_size == 2
    for plan in (cpu, gpu):
        assert plan.memory["estimated_gb"] <= plan.memory["budget_gb"] * 1.3
        assert all(p % (2**n) == 0 for p, n in zip(plan.patch_size, plan.num_pool_per_axis))
        assert [e["scheme"] for e in plan.normalization] == ["zscore"] * 4
        assert all(e["use_nonzero_mask"] for e in plan.normalization)  # cropping left 60 %
        assert plan.hardware["device"] in ("cpu", "cuda") and plan.pixdim is None
    assert len(gpu.strides) >= len(cpu.strides)  # a bigger patch pools at least as often
    assert gpu.features[0] == 32 and cpu.features[0] <= 32  # a CPU may plan a narrower network


def test_ct_plan_normalises_with_dataset_statistics_and_handles_anisotropy() -> None:
    stats = {"mean": 99.4, "std": 39.0, "percentile_00_5": -17.0, "percentile_99_5": 201.0}
    fp = {
        "spacings": [[0.8, 0.8, 2.5]] * 10,
        "shapes_after_crop": [[512, 512, 200]] * 10,
        "modality": ["CT"],
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": [stats],
    }
    plan = make_plan(fp, {"device": "cuda", "memory_gb": 8, "cpu_cores": 8})
    assert plan.normalization == [
        {
            "modality": "CT",
            "scheme": "ct",
            "use_nonzero_mask": False,
            "clip": [-17.0, 201.0],
            "mean": 99.4,
            "std": 39.0,
        }
    ]
    assert plan.values["train.model.strides"][0] == [2, 2, 1]  # the 2.5 mm axis waits
    assert plan.kernel_sizes[0] == [3, 3, 1]
    assert plan.patch_size[2] < plan.patch_size[0]
    assert plan.cascade["enabled"] and all(
        lo >= s for lo, s in zip(plan.cascade["lowres_spacing"], plan.spacing)
    )


def test_explicit_params_override_the_plan_and_are_recorded(tmp_path: Path) -> None:
    plan = make_plan(_task01_like(), GPU80, {"train.data.roi_size": [64, 64, 64], "train.data.batch_size": 3})
    assert plan.patch_size == [64, 64, 64] and plan.batch_size == 3
    assert plan.overridden["train.data.roi_size"]["planned"] == plan.values["train.data.roi_size"]
    assert plan.overridden["train.data.roi_size"]["differs"]
    assert plan.num_pool_per_axis == [4, 4, 4]  # strides follow the patch actually used
    assert plan.auto["train.model.strides"] == [2, 2, 2, 2] != plan.values["train.model.strides"]
    assert len(plan.auto["train.model.channels"]) == 5
    path = write_plan(tmp_path / "plan.json", plan)
    section = {"data": {"roi_size": [64, 64, 64]}, "model": {"strides": "auto", "channels": "auto"}}
    config, _ = resolve_training_config(section, path, source="x")  # auto strides fit the explicit patch
    assert config.model.divisors == (16, 16, 16) and list(config.model.channels) == [32, 64, 128, 256, 320]
    with pytest.raises(UserError, match=r"train\.data\.roisize"):
        make_plan(_task01_like(), CPU, {"train.data.roisize": [8, 8, 8]})


def test_cli_plans_for_cpu_and_for_an_80_gb_gpu(tiny_task: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = _cli(["plan", str(tiny_task), "--out", str(tmp_path / "cpu" / "plan.json"), "--device", "cpu",
                         "--cpu-cores", "2", "--samples", "30000"], capsys)  # fmt: skip
    assert code == 0 and "patch" in out
    code, _, _ = _cli(["plan", str(tiny_task), "--out", str(tmp_path / "gpu" / "plan.json"), "--device", "cuda",
                       "--memory-gb", "80", "--samples", "30000"], capsys)  # fmt: skip
    assert code == 0
    cpu, gpu = read_plan(tmp_path / "cpu" / "plan.json"), read_plan(tmp_path / "gpu" / "plan.json")
    assert (tmp_path / "cpu" / "fingerprint.json").is_file()
    assert cpu["hardware"]["device"] == "cpu" and cpu["hardware"]["cpu_cores"] == 2
    assert gpu["hardware"]["device"] == "cuda" and gpu["hardware"]["memory_gb"] == 80
    assert gpu["memory"]["budget_gb"] == 80
    assert cpu["memory"]["budget_gb"] == pytest.approx(cpu["hardware"]["memory_gb"] / 2)
    assert cpu["time"]["cpu_gflops_source"].startswith("measured")  # plan.cpu_gflops: auto -> the probe
    assert cpu["time"]["planned"]["seconds_per_step"] > 0 and "seconds_per_step" not in gpu["time"]["planned"]
    assert np.prod(gpu["patch_size"]) >= np.prod(cpu["patch_size"])
    fp = json.loads((tmp_path / "cpu" / "fingerprint.json").read_text())
    assert cpu["fingerprint_sha256"] == gpu["fingerprint_sha256"] and fp["num_training"] == 3


@pytest.mark.parametrize("make", ["missing", "no_dataset_json", "bad_params"])
def test_cli_plan_bad_input_is_one_line(tmp_path: Path, capsys, make: str) -> None:
    folder = tmp_path / "Task01"
    argv = ["plan", str(folder), "--out", str(tmp_path / "plan.json")]
    if make != "missing":
        folder.mkdir()
    if make == "bad_params":
        (folder / "dataset.json").write_text("{}")
        (tmp_path / "params.yaml").write_text("plan: {device: tpu}\n")
        argv += ["--params", str(tmp_path / "params.yaml")]
    code, out, err = _cli(argv, capsys)
    lines = (out + err).strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:")
    assert ("tpu" if make == "bad_params" else str(folder)) in lines[0]
    assert not (tmp_path / "plan.json").exists()


# --- auto values ---------------------------------------------------------------------------------


def test_auto_values_take_the_plans_and_explicit_ones_win(tmp_path: Path) -> None:
    stages = len(make_plan(_task01_like(), CPU, cpu_gflops=CPU_GFLOPS).strides)
    channels = [8 * 2**i for i in range(stages)]  # one per stage of the planned patch
    plan = make_plan(_task01_like(), CPU, {"train.model.channels": channels}, cpu_gflops=CPU_GFLOPS)
    path = write_plan(tmp_path / "plan.json", plan)
    section = {
        "model": {"channels": channels, "strides": "auto"},
        "data": {"roi_size": "auto", "batch_size": "auto", "pixdim": "auto", "num_samples": 1},
    }
    config, record = resolve_training_config(section, path, source="params.yaml:train")
    assert list(config.data.roi_size) == plan.values["train.data.roi_size"]
    assert config.data.batch_size == plan.values["train.data.batch_size"] and config.data.pixdim is None
    assert list(config.model.strides) == plan.values["train.model.strides"]
    assert list(config.model.channels) == channels
    assert plan.time["effective"]["features"] == channels  # the estimate is of the network params runs
    assert config.data.normalization == plan.values["train.data.normalization"]  # absent: the plan's
    assert record["sources"]["train.data.roi_size"] == "plan"
    assert record["sources"]["train.model.channels"] == "params"
    assert record["patch_size"] == plan.patch_size and record["path"] == str(path)

    explicit, _ = resolve_training_config({"data": {"roi_size": [16, 16, 16]}}, path, source="x")
    assert explicit.data.roi_size == (16, 16, 16)
    with pytest.raises(UserError, match=r"params.yaml:train: key 'data.pixdim' is 'auto' but no plan"):
        resolve_training_config(section, None, source="params.yaml:train")
    with pytest.raises(UserError, match=r"params.yaml:train: key 'data.roi_size' is 'auto' but no plan"):
        resolve_training_config({"data": {"roi_size": "auto"}}, None, source="params.yaml:train")
    no_plan, none = resolve_training_config({"data": {"normalization": "auto"}}, None, source="x")
    assert no_plan.data.normalization == "auto" and none is None  # training computes CT statistics itself


def test_ct_by_name_takes_the_plans_statistics(tmp_path: Path) -> None:
    fp = _task01_like()
    fp["foreground_intensity_properties_per_channel"][2] = {
        "mean": 5.0, "std": 2.0, "percentile_00_5": 1.0, "percentile_99_5": 9.0,
    }  # fmt: skip
    path = write_plan(tmp_path / "plan.json", make_plan(fp, CPU))
    config, _ = resolve_training_config({"data": {"normalization": "ct"}}, path, source="x")
    assert config.data.normalization[2] == {"scheme": "ct", "clip": [1.0, 9.0], "mean": 5.0, "std": 2.0}


# --- normalisation -------------------------------------------------------------------------------


def test_ct_normalisation_against_numpy() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 3000, size=(1, 9, 8, 7)).astype(np.int16)
    entry = {"scheme": "ct", "clip": [-17.0, 201.0], "mean": 99.4, "std": 39.0}
    got = normalize_channels(hu, [entry])
    expected = (np.clip(hu.astype(np.float64), -17.0, 201.0) - 99.4) / 39.0
    assert got.dtype == np.float32 and got.shape == hu.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert got.min() == pytest.approx((-17.0 - 99.4) / 39.0, rel=1e-5)
    with pytest.raises(ValueError, match="2 channels"):
        normalize_channels(np.zeros((2, 2, 2, 2)), [entry])


def test_mri_normalisation_equals_monai_and_the_dict_transform_keeps_metadata() -> None:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import NormalizeIntensity

    rng = np.random.default_rng(1)
    image = rng.normal(300, 80, size=(2, 10, 9, 8)).astype(np.float32)
    image[:, :3] = 0  # background outside the brain
    entries = [{"scheme": "zscore", "use_nonzero_mask": True}] * 2
    expected = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(image.copy()))
    np.testing.assert_allclose(normalize_channels(image, entries), np.asarray(expected), atol=1e-5)
    assert np.all(normalize_channels(image, entries)[:, :3] == 0)

    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    out = NormalizeChannelsd(keys="image", normalization=entries)(
        {"image": MetaTensor(torch.from_numpy(image), affine=affine)}
    )
    assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, affine.double())
    np.testing.assert_allclose(out["image"].numpy(), np.asarray(expected), atol=1e-5)


# --- the plan in a deployed model ----------------------------------------------------------------


def test_plan_is_recorded_in_the_checkpoint_and_the_deployed_model(
    tiny_task: Path, tmp_path: Path, capsys
) -> None:
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "plan": {"device": "cpu", "cpu_cores": 2},
        "train": {
            "max_epochs": 1, "check_val_every_n_epoch": 1, "progress": False,
            "model": {"channels": [8, 16], "strides": [2], "num_res_units": 0},
            "data": {"roi_size": [16, 16, 16], "batch_size": "auto", "pixdim": "auto", "num_samples": 1,
                     "val_fraction": 0.34, "cache": "none", "augment": False},
        },
    }))  # fmt: skip
    plan_path = tmp_path / "plan" / "plan.json"
    argv = ["plan", str(tiny_task), "--out", str(plan_path), "--params", str(params), "--samples", "30000"]
    assert _cli(argv, capsys)[0] == 0
    plan = read_plan(plan_path)
    assert plan["overridden"]["train.data.roi_size"]["params"] == [16, 16, 16]
    run = tmp_path / "run"
    code, _, _ = _cli(["train", str(tiny_task), "--out", str(run), "--params", str(params), "--plan", str(plan_path),
                       "--no-resume"], capsys)  # fmt: skip
    assert code == 0
    summary = json.loads((run / "train.json").read_text())
    assert summary["plan"]["sources"]["train.data.batch_size"] == "plan"
    assert summary["config"]["data"]["batch_size"] == plan["values"]["train.data.batch_size"]
    code, _, _ = _cli(["export", "--model", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "deploy"),
                       "--formats", "torchscript"], capsys)  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "deploy" / "model.json").read_text())
    assert record["plan"]["fingerprint_sha256"] == plan["fingerprint_sha256"]
    assert record["plan"]["sources"]["train.data.roi_size"] == "params"
    assert record["description"]["normalization"] == [
        {k: v for k, v in e.items()} for e in plan["values"]["train.data.normalization"]
    ]
    card = (tmp_path / "deploy" / "MODEL_CARD.md").read_text()
    assert "## Plan" in card and "z-scored over its non-zero voxels" in card
    from visionpipes.medical.runtime.predictor import Predictor

    # predict (runtime) normalises with the entries the plan gave training
    predictor = Predictor.load(tmp_path / "deploy")
    assert [{k: v for k, v in e.items() if k != "modality"} for e in predictor.normalization] == [
        {k: v for k, v in e.items() if k != "modality"} for e in plan["values"]["train.data.normalization"]
    ]


@pytest.mark.parametrize(
    "plan", [None, "not json", '{"domain": "driving", "values": {}, "format_version": 1}']
)
def test_train_without_a_usable_plan_is_one_line(
    tiny_task: Path, tmp_path: Path, capsys, plan: str | None
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  data: {roi_size: auto}\n")
    argv = ["train", str(tiny_task), "--out", str(tmp_path / "run"), "--params", str(params)]
    if plan is not None:
        (tmp_path / "plan.json").write_text(plan)
        argv += ["--plan", str(tmp_path / "plan.json")]
    code, out, err = _cli(argv, capsys)
    lines = (out + err).strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:")
    assert ("roi_size" if plan is None else "plan.json") in lines[0]
    assert not (tmp_path / "run").exists()
