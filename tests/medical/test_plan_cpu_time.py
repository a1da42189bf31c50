"""The CPU plan's rule (issue #13): patch from the RAM share, width from the time a prediction takes.

The FLOP count is checked against torch's own counter on MONAI's DynUNet; the rule on synthetic
fingerprints of real geometry (BraTS-size MRI, 512x512x200 CT) against the built-in sample's; the
estimates' monotonicity; the sample's plan, resolved with pipelines/medical/params.yaml, against the
demo's training settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from visionpipes.core.errors import UserError
from visionpipes.medical.planning import rules, throughput
from visionpipes.medical.planning.cost import CPU_MAX_BATCH, WIDTH_CANDIDATES, estimate_cost
from visionpipes.medical.planning.plan import (
    PLAN_KEYS,
    make_plan,
    overrides_from_params,
    write_plan,
)
from visionpipes.medical.training.config import resolve_training_config

ROOT = Path(__file__).resolve().parents[2]
LAPTOP = {"device": "cpu", "memory_gb": 8.0, "cpu_cores": 4}
STATS = {"mean": 1.0, "std": 1.0, "percentile_00_5": 0.0, "percentile_99_5": 2.0}
#: The built-in sample's shapes after cropping (fingerprint of `vp-medical synth` with params.yaml's
#: data section: 24 cases, 48^3 at 1 mm, seed 0), as `vp-medical plan` records them.
SAMPLE_SHAPES = [
    [38, 42, 35], [41, 44, 33], [42, 45, 37], [39, 42, 35], [42, 42, 35], [39, 44, 34], [39, 46, 34],
    [41, 43, 37], [38, 44, 38], [38, 42, 36], [39, 41, 37], [40, 43, 34], [38, 47, 34], [40, 42, 34],
    [40, 42, 37], [39, 45, 36], [40, 45, 34], [37, 44, 37], [38, 42, 37], [38, 44, 39], [41, 43, 36],
    [39, 45, 34], [36, 44, 34], [40, 47, 36],
]  # fmt: skip
MRI = ["FLAIR", "T1w", "t1gd", "T2w"]


def _fingerprint(shapes, spacing, modality, labels, relative=1.0) -> dict:
    return {
        "spacings": [list(spacing)] * len(shapes),
        "shapes_after_crop": [list(s) for s in shapes],
        "modality": modality,
        "labels": {str(i): f"l{i}" for i in range(labels + 1)},
        "median_relative_size_after_cropping": relative,
        "foreground_intensity_properties_per_channel": [dict(STATS) for _ in modality],
    }


def _sample() -> dict:
    return _fingerprint(SAMPLE_SHAPES, (1.0, 1.0, 1.0), MRI, 3, relative=0.55)


def _mri() -> dict:
    return _fingerprint([[240, 240, 155]] * 484, (1.0, 1.0, 1.0), MRI, 3)


def _ct() -> dict:
    return _fingerprint([[512, 512, 200]] * 131, (0.8, 0.8, 2.5), ["CT"], 2)


@pytest.mark.parametrize(
    ("spacing", "patch", "base", "in_channels", "classes"),
    [((1.0, 1.0, 1.0), (32, 32, 32), 16, 4, 3), ((0.8, 0.8, 2.5), (48, 48, 16), 8, 1, 2)],
)
def test_flop_count_equals_torchs_on_monai_dynunet(spacing, patch, base, in_channels, classes) -> None:
    import torch
    from monai.networks.nets import DynUNet
    from torch.utils.flop_counter import FlopCounterMode

    topo = rules.pool_and_conv_props(spacing, patch)
    features = rules.features_per_stage(len(topo.strides), 3, base)
    net = DynUNet(
        3, in_channels, classes,
        kernel_size=[list(k) for k in topo.kernel_sizes], strides=[list(s) for s in topo.strides],
        upsample_kernel_size=[list(s) for s in topo.strides[1:]], filters=list(features),
        norm_name="instance", res_block=False,
    ).eval()  # fmt: skip
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, in_channels, *topo.patch_size))
    ours = rules.forward_flops(
        topo.patch_size, topo.strides, topo.kernel_sizes, features, in_channels, classes
    )
    assert ours == counter.get_total_flops()


def test_window_count_equals_monais_grid() -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape, patch, overlap in (((240, 240, 155), (128, 128, 96), 0.5), ((39, 44, 36), (32, 32, 32), 0.25)):
        interval = _get_scan_interval(shape, patch, 3, (overlap,) * 3)
        assert rules.sliding_windows(shape, patch, overlap) == len(dense_patch_slices(shape, patch, interval))
    with pytest.raises(ValueError, match="overlap"):
        rules.sliding_windows((10, 10, 10), (4, 4, 4), 1.0)


def test_real_size_fingerprints_plan_larger_patches_than_the_sample() -> None:
    sample = make_plan(_sample(), LAPTOP, cpu_gflops=40)
    # the former calibration (0.055 GB-equivalent per core) planned 40x32x24 (MRI) and 40x40x16 (CT) windows
    for fingerprint, former in ((_mri(), (40, 32, 24)), (_ct(), (40, 40, 16))):
        real = make_plan(fingerprint, LAPTOP, cpu_gflops=40)
        assert np.prod(real.patch_size) > 4 * np.prod(sample.patch_size)
        assert real.batch_size == CPU_MAX_BATCH
        planned = real.time["planned"]
        shape = fingerprint["shapes_after_crop"][0]
        assert planned["windows_per_volume"] < 0.05 * rules.sliding_windows(
            shape, former, real.time["overlap"]
        )
        assert planned["predict_seconds_per_volume"] > 0 and planned["seconds_per_step"] > 0
        assert real.memory["estimated_gb"] <= real.memory["budget_gb"] * 1.05
    # the sample's own plan is its whole median image at nnU-Net's width, and it is fast
    median = np.median(SAMPLE_SHAPES, axis=0)
    assert all(p >= m for p, m in zip(sample.patch_size, median))
    assert sample.features[0] == 32 and sample.time["meets_target"]


def test_more_cores_or_gflops_never_shrink_the_patch_or_the_width() -> None:
    for fingerprint in (_mri(), _ct()):
        previous = None
        for gflops in (2.0, 20.0, 200.0, 2000.0):
            plan = make_plan(fingerprint, LAPTOP, cpu_gflops=gflops)
            seconds = plan.time["planned"]["predict_seconds_per_volume"]
            if previous is not None:
                assert np.prod(plan.patch_size) >= np.prod(previous.patch_size)
                assert plan.features[0] >= previous.features[0]
                if plan.features[0] == previous.features[0]:
                    assert seconds < previous.time["planned"]["predict_seconds_per_volume"]
            previous = plan
        assert previous.features[0] == WIDTH_CANDIDATES[0]  # a fast enough CPU gets nnU-Net's width
        cores = [make_plan(fingerprint, {**LAPTOP, "cpu_cores": n}, cpu_gflops=20.0) for n in (2, 16)]
        assert np.prod(cores[1].patch_size) >= np.prod(cores[0].patch_size)
        assert cores[1].features[0] >= cores[0].features[0]
    slow = make_plan(_ct(), LAPTOP, cpu_gflops=0.5)
    assert slow.features[0] == WIDTH_CANDIDATES[-1] and slow.time["meets_target"] is False
    fast = make_plan(_ct(), LAPTOP, cpu_gflops=0.5, predict_seconds=1e9)
    assert fast.features[0] == WIDTH_CANDIDATES[0] and fast.time["meets_target"]


def test_estimates_are_monotone() -> None:
    table = throughput.table_from_gflops(30.0)
    topo = rules.pool_and_conv_props((1, 1, 1), (64, 64, 64))
    kw = {"in_channels": 4, "num_classes": 3, "median_shape": (240, 240, 155)}

    def cost(patch=(64, 64, 64), batch=2, base=16, overlap=0.5, tab=table):
        t = rules.pool_and_conv_props((1, 1, 1), patch)
        feats = rules.features_per_stage(len(t.strides), 3, base)
        return estimate_cost(t.patch_size, batch, t, feats, overlap=overlap, table=tab, **kw)

    base = cost()
    assert cost(batch=4)["seconds_per_step"] == pytest.approx(2 * base["seconds_per_step"], rel=0.01)
    assert cost(base=32)["predict_seconds_per_volume"] > base["predict_seconds_per_volume"]
    assert cost(base=8)["predict_seconds_per_volume"] < base["predict_seconds_per_volume"]
    assert cost(overlap=0.75)["windows_per_volume"] > base["windows_per_volume"]
    assert cost(overlap=0.25)["windows_per_volume"] < base["windows_per_volume"]
    faster = cost(tab=throughput.table_from_gflops(60.0))
    assert faster["predict_seconds_per_volume"] == pytest.approx(
        base["predict_seconds_per_volume"] / 2, rel=0.02
    )
    assert cost(patch=(96, 96, 96))["forward_gflop_per_patch"] > base["forward_gflop_per_patch"]
    # a bigger window covers the image with less overlap: fewer voxels computed per volume
    assert (
        cost(patch=(128, 128, 128))["predict_gflop_per_volume"]
        < cost(patch=(32, 32, 32))["predict_gflop_per_volume"]
    )
    feats = rules.features_per_stage(len(topo.strides), 3, 16)
    assert "seconds_per_step" not in estimate_cost(
        topo.patch_size, 2, topo, feats, overlap=0.5, table=None, **kw
    )
    with pytest.raises(ValueError, match="per stage"):
        estimate_cost(topo.patch_size, 2, topo, feats[:-1], overlap=0.5, table=table, **kw)
    # the width curve: a narrower conv runs at a lower rate
    assert throughput.gflops_at(table, 8) < throughput.gflops_at(table, 16) < throughput.gflops_at(table, 32)
    assert throughput.gflops_at(table, 320) == throughput.gflops_at(table, 64)


def test_overrides_are_recorded_with_the_cost_of_what_training_runs() -> None:
    over = {
        "train.data.roi_size": [32, 32, 32],
        "train.data.batch_size": 2,
        "train.model.channels": [16, 32, 64, 128],
    }
    plan = make_plan(_mri(), LAPTOP, over, cpu_gflops=20.0)
    assert plan.overridden["train.data.roi_size"] == {
        "planned": plan.values["train.data.roi_size"], "params": [32, 32, 32], "differs": True,
    }  # fmt: skip
    eff = plan.time["effective"]
    assert eff["patch_size"] == [32, 32, 32] and eff["features"] == [16, 32, 64, 128]
    assert eff["windows_per_volume"] > plan.time["planned"]["windows_per_volume"]
    assert plan.time["cpu_gflops"]["32"] == 20.0 and plan.time["cpu_gflops_source"] == "given"
    with pytest.raises(UserError, match="cpu_gflops"):
        make_plan(_mri(), LAPTOP, cpu_gflops=-1)
    with pytest.raises(UserError, match="predict_seconds"):
        make_plan(_mri(), LAPTOP, cpu_gflops=1, predict_seconds=0)
    gpu = make_plan(_mri(), {"device": "cuda", "memory_gb": 80, "cpu_cores": 16}, cpu_gflops=20.0)
    assert gpu.features[0] == 32 and gpu.time["cpu_gflops"] is None  # a GPU plan ignores the CPU's rate


def test_the_samples_plan_resolves_to_the_demos_training_settings(tmp_path: Path) -> None:
    params = yaml.safe_load((ROOT / "pipelines" / "medical" / "params.yaml").read_text())
    train = params["train"]
    for gflops in (5.0, 50.0, 500.0):  # whatever this CPU measures
        plan = make_plan(_sample(), {"device": "cpu", "memory_gb": 11.77, "cpu_cores": 2},
                         overrides_from_params(train), cpu_gflops=gflops)  # fmt: skip
        config, record = resolve_training_config(train, write_plan(tmp_path / "plan.json", plan), source="x")
        assert config.data.roi_size == (32, 32, 32) and config.data.batch_size == 2
        assert tuple(config.model.strides) == (2, 2, 2) and tuple(config.model.channels) == (16, 32, 64, 128)
        assert config.data.pixdim is None
        assert [e["scheme"] for e in config.data.normalization] == ["zscore"] * 4
        assert all(e["use_nonzero_mask"] for e in config.data.normalization)
        assert set(plan.overridden) <= set(PLAN_KEYS) and "train.data.roi_size" in plan.overridden
        assert record["sources"]["train.model.strides"] == "plan"


@pytest.mark.parametrize(
    ("section", "key"),
    [("plan: {cpu_gflops: fast}", "cpu_gflops"), ("plan: {predict_seconds: -5}", "predict_seconds"),
     ("plan: {}\ninference: {overlap: 1.5}", "overlap")],
)  # fmt: skip
def test_bad_plan_time_settings_are_one_line(tmp_path: Path, capsys, section: str, key: str) -> None:
    from visionpipes.medical import cli

    (tmp_path / "params.yaml").write_text(section + "\n")
    argv = [
        "plan",
        str(tmp_path / "Task01"),
        "--out",
        str(tmp_path / "plan.json"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out, err = capsys.readouterr()
    lines = (out + err).strip().splitlines()
    assert info.value.code != 0 and len(lines) == 1 and lines[0].startswith("error:") and key in lines[0]
    assert not (tmp_path / "plan.json").exists()
