"""The nnU-Net planning rules reproduce nnU-Net's own published plans for two Decathlon tasks
(nnUNetv2 default planner, 8 GB): BrainTumour and Liver both plan a 128^3 patch at batch 2 with six
stages (features 32..320); Liver, much larger than its patch, gets a low-resolution cascade stage."""

from __future__ import annotations

import numpy as np
import pytest

from visionpipes.medical.planning.rules import (
    feature_map_voxels,
    needs_lowres_stage,
    normalization_scheme,
    plan_patch_and_batch,
    pool_and_conv_props,
    target_spacing,
)


def test_brain_tumour_plan_matches_nnunet() -> None:
    median = [138, 169, 138]  # Task01 median shape after cropping at 1 mm
    plan = plan_patch_and_batch(
        [1.0, 1.0, 1.0], median, num_classes=4, memory_gb=8, dataset_voxels=np.prod(median) * 484
    )
    assert plan.patch_size == (128, 128, 128) and plan.batch_size == 2
    assert plan.features == (32, 64, 128, 256, 320, 320)
    assert plan.topology.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5
    assert not needs_lowres_stage(plan.patch_size, median)
    assert plan.estimated_gb <= 8


def test_liver_plan_matches_nnunet_and_needs_a_cascade() -> None:
    median = [432, 512, 512]
    plan = plan_patch_and_batch(
        [1.0, 0.767578125, 0.767578125],
        median,
        num_classes=3,
        memory_gb=8,
        dataset_voxels=np.prod(median) * 131,
    )
    assert plan.patch_size == (128, 128, 128) and plan.batch_size == 2
    assert needs_lowres_stage(plan.patch_size, median)


def test_more_memory_buys_a_bigger_batch_or_patch() -> None:
    median = [138, 169, 138]
    small = plan_patch_and_batch([1, 1, 1], median, num_classes=4, memory_gb=2, dataset_voxels=1e12)
    big = plan_patch_and_batch([1, 1, 1], median, num_classes=4, memory_gb=80, dataset_voxels=1e12)
    assert np.prod(small.patch_size) * small.batch_size < np.prod(big.patch_size) * big.batch_size
    assert small.estimated_gb <= 2 * 1.05 or small.batch_size == 2


def test_anisotropic_axis_takes_its_tenth_percentile() -> None:
    spacings = [[0.8, 0.8, 5.0]] * 9 + [[0.8, 0.8, 1.0]]
    assert target_spacing(spacings, [[512, 512, 40]] * 10).tolist() == pytest.approx([0.8, 0.8, 4.6])
    # isotropic-enough data keeps the median
    assert target_spacing([[1, 1, 1.5]] * 3, [[100, 100, 80]] * 3).tolist() == [1, 1, 1.5]


def test_topology_does_not_pool_the_coarse_axis_first() -> None:
    topo = pool_and_conv_props([0.8, 0.8, 4.0], [256, 256, 32])
    assert topo.strides[1] == (2, 2, 1)  # the 4 mm axis waits until the others are coarse too
    assert topo.kernel_sizes[0] == (3, 3, 1)
    assert all(p % d == 0 for p, d in zip(topo.patch_size, topo.divisible_by))


def test_feature_map_estimate_counts_encoder_and_decoder() -> None:
    # one stage: two convs of 32 features on 8^3 plus the 2-class output
    assert feature_map_voxels([8, 8, 8], [(1, 1, 1)], [32], 2) == 2 * 32 * 512 + 2 * 512


def test_normalization_by_modality() -> None:
    assert normalization_scheme("CT", median_relative_size_after_crop=1.0)["scheme"] == "ct"
    mri = normalization_scheme("FLAIR", median_relative_size_after_crop=0.6)
    assert mri == {"scheme": "zscore", "use_nonzero_mask": True}
