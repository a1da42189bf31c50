"""The published nnU-Net planning rules, as plain functions over a dataset fingerprint.

Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 18, 203-211 (2021), and its code (nnunetv2 `experiment_planning/
experiment_planners/default_experiment_planner.py`, `network_topology.py`,
`preprocessing/normalization/`; dynamic_network_architectures' `compute_conv_feature_map_size`):
- target spacing: the median spacing; where one axis is anisotropic (its spacing > 3x the others' and
  its size < 1/3 of the others'), that axis takes the 10th percentile of its spacings instead;
- topology: pool an axis while its feature map stays >= 2x the minimum edge (4) and its spacing is
  < 2x the finest; 3x3(x3) kernels once an axis' spacing is within 2x of the finest; the patch is
  padded to a multiple of 2^pools per axis;
- patch and batch: start from a 256^3 (2-D: 2048^2) voxel budget shaped like 1/spacing and clipped to
  the median image; shrink the axis largest relative to the median image until the network's feature
  map size fits the memory budget (560e6 voxel-features correspond to 8 GB at batch 2 in 3-D); the
  batch then fills the budget, at most 5 % of the dataset's voxels, at least 2;
- a low-resolution cascade stage when the full-resolution patch covers < 25 % of the median image;
- cost (ours, not nnU-Net's): `conv_layers` / `forward_flops` count the plain-conv U-Net's multiply-adds
  per forward pass of one patch (every 3-D conv, transposed conv and the 1x1 output), and
  `sliding_windows` counts the windows MONAI's `sliding_window_inference` runs over an image — what a
  plan's training step and full-volume prediction cost in FLOPs;
- normalisation per channel: CT clips to the foreground's 0.5/99.5 percentiles and z-scores with
  the foreground mean/std of the whole dataset; other modalities z-score each image (over the
  non-zero region when cropping to it shrank the images to < 3/4).
Nothing here reads files or imports torch: the fingerprint comes in as numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: An axis is anisotropic when its spacing is more than this times the others' (nnU-Net's ANISO_THRESHOLD).
ANISO_THRESHOLD = 3.0
#: Smallest edge of the bottleneck feature map.
MIN_FEATURE_MAP_EDGE = 4
#: nnU-Net's reference: this many feature-map voxels (summed over the U-Net's conv outputs) fit in
#: `REFERENCE_GB` at batch `REFERENCE_BATCH` (3-D: 560e6 / 8 GB / 2; 2-D: 85e6 / 8 GB / 12).
REFERENCE_VOXELS = {3: 560_000_000, 2: 85_000_000}
REFERENCE_GB = 8.0
REFERENCE_BATCH = {3: 2, 2: 12}
MIN_BATCH = 2
MAX_DATASET_COVERED = 0.05
LOWRES_THRESHOLD = 0.25
BASE_FEATURES = 32
MAX_FEATURES = {3: 320, 2: 512}


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """The full-resolution target spacing: the median, with nnU-Net's anisotropic-axis rule.

    Args:
        spacings: per case, the voxel spacing (mm) per axis.
        shapes: per case, the shape after cropping to the non-zero region, same axis order.

    Example:
        >>> target_spacing([[0.8, 0.8, 5.0]] * 9 + [[0.8, 0.8, 1.0]], [[512, 512, 40]] * 10).round(2).tolist()
        [0.8, 0.8, 4.6]
    """
    spacing_arr = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacing_arr, 50, axis=0)
    size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[i] for i in others)
    aniso_voxels = size[worst] * ANISO_THRESHOLD < min(size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        value = np.percentile(spacing_arr[:, worst], 10)
        largest_other = max(target[i] for i in others)
        if value < largest_other:
            value = max(largest_other, value) + 1e-5
        target[worst] = value
    return target


@dataclass(frozen=True)
class Topology:
    """A U-Net's shape for one patch: poolings per axis, per-stage strides and kernels, the padded patch."""

    num_pool_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]


def _pad_shape(shape: Sequence[int], divisible_by: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(-(-s // d) * d) for s, d in zip(shape, divisible_by))


def pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    min_edge: int = MIN_FEATURE_MAP_EDGE,
    max_pools: int = 999999,
) -> Topology:
    """nnU-Net's `get_pool_and_conv_props`: poolings and kernels per stage for a patch at a spacing."""
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_edge]
        if not valid:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2 and pools[i] < max_pools]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_edge:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            current_spacing[v] *= 2
            current_size[v] = float(np.ceil(current_size[v] / 2))
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    divisible = tuple(2**p for p in pools)
    return Topology(
        num_pool_per_axis=tuple(pools),
        strides=tuple(tuple(s) for s in strides),
        kernel_sizes=tuple(tuple(k) for k in kernels),
        patch_size=_pad_shape(patch_size, divisible),
        divisible_by=divisible,
    )


def features_per_stage(num_stages: int, dim: int, base: int = BASE_FEATURES) -> tuple[int, ...]:
    """`base` (nnU-Net: 32), doubling per stage, capped at 320 (3-D) or 512 (2-D) — for a narrower
    `base` the cap shrinks in proportion (16 -> 160), so the network is nnU-Net's at a fraction of the width.
    """
    cap = MAX_FEATURES[dim] * base // BASE_FEATURES
    return tuple(min(cap, base * 2**i) for i in range(num_stages))


def feature_map_voxels(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    num_classes: int,
    convs_per_stage: int = 2,
) -> int:
    """dynamic_network_architectures' `compute_conv_feature_map_size` of a plain-conv U-Net: the sum of
    every conv output's elements (features x voxels), encoder, decoder, transposed convs and the
    final segmentation layer — the activation estimate nnU-Net compares with its memory reference."""
    size = list(patch_size)
    total = 0
    skips: list[list[int]] = []
    for stride, feat in zip(strides, features):
        size = [s // st for s, st in zip(size, stride)]
        total += convs_per_stage * feat * int(np.prod(size))
        skips.append(size)
    for s in range(len(strides) - 1):
        skip = skips[-(s + 2)]
        feat = features[-(s + 2)]
        total += convs_per_stage * feat * int(np.prod(skip))  # decoder conv blocks
        total += feat * int(np.prod(skip))  # transposed conv
    total += num_classes * int(np.prod(skips[0]))  # segmentation output
    return int(total)


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of the U-Net: output voxels per patch, kernel voxels, input and output channels."""

    voxels: int
    kernel_voxels: int
    in_channels: int
    out_channels: int

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of this layer over one patch."""
        return 2 * self.voxels * self.kernel_voxels * self.in_channels * self.out_channels


def conv_layers(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]],
    features: Sequence[int],
    in_channels: int,
    num_classes: int,
    convs_per_stage: int = 2,
) -> list[ConvLayer]:
    """The convolutions of nnU-Net's plain-conv U-Net as MONAI's `DynUNet` builds it from the plan's strides,
    kernels and filters (the network `benchmarks/medical_real_geometry.py` runs): per encoder stage `convs_per_stage` convs (the first strided), per decoder stage a transposed
    conv (kernel = stride: one tap per output voxel) then `convs_per_stage` convs over the concatenation
    with the skip, and the 1x1 output. Normalisation and activations are not counted (elementwise)."""
    if not len(strides) == len(kernel_sizes) == len(features):
        raise ValueError(
            f"one stride, kernel and feature count per stage: {len(strides)}, {len(kernel_sizes)}, {len(features)}"
        )
    size = list(patch_size)
    sizes: list[int] = []
    layers: list[ConvLayer] = []
    channels = in_channels
    for stride, kernel, feat in zip(strides, kernel_sizes, features):
        size = [s // st for s, st in zip(size, stride)]
        voxels = int(np.prod(size))
        kv = int(np.prod(kernel))
        sizes.append(voxels)
        layers.append(ConvLayer(voxels, kv, channels, feat))
        layers.extend(ConvLayer(voxels, kv, feat, feat) for _ in range(convs_per_stage - 1))
        channels = feat
    for s in range(len(strides) - 2, -1, -1):
        # DynUNet's up block into level s convolves with the kernel of level s + 1 (nnU-Net's decoder with
        # level s's: the two differ only where a level's kernel is anisotropic, e.g. 3x3x1)
        voxels, feat, kv = sizes[s], features[s], int(np.prod(kernel_sizes[s + 1]))
        layers.append(ConvLayer(voxels, 1, features[s + 1], feat))  # transposed conv, kernel = stride
        layers.append(ConvLayer(voxels, kv, 2 * feat, feat))
        layers.extend(ConvLayer(voxels, kv, feat, feat) for _ in range(convs_per_stage - 1))
    layers.append(ConvLayer(sizes[0], 1, features[0], num_classes))
    return layers


def forward_flops(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]],
    features: Sequence[int],
    in_channels: int,
    num_classes: int,
) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass of one patch through the plain-conv U-Net.

    Example:
        >>> forward_flops([8, 8, 8], [(1, 1, 1)], [(3, 3, 3)], [32], 1, 2)  # 2 x 512 x (27x32 + 27x32x32 + 32x2)
        29261824
    """
    layers = conv_layers(patch_size, strides, kernel_sizes, features, in_channels, num_classes)
    return int(sum(layer.flops for layer in layers))


def sliding_windows(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> int:
    """Windows MONAI's `sliding_window_inference` runs over an image of `shape` (its `_get_scan_interval`:
    step `int(patch x (1 - overlap))`, at least 1; an axis no longer than the patch takes one window).

    Example:
        >>> sliding_windows([240, 240, 155], [128, 128, 128], 0.5)  # 3 x 3 x 2
        18
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    total = 1
    for size, p in zip(shape, patch_size):
        size = round(float(size))
        if size <= p:
            continue
        step = max(int(p * (1 - overlap)), 1)
        total *= -(-(size - p) // step) + 1
    return int(total)


@dataclass(frozen=True)
class PatchPlan:
    """Patch, batch and topology for one configuration, with the memory estimate behind them."""

    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    topology: Topology
    features: tuple[int, ...]
    feature_map_voxels: int
    estimated_gb: float


def plan_patch_and_batch(
    spacing: Sequence[float],
    median_shape: Sequence[int],
    *,
    num_classes: int,
    memory_gb: float,
    dataset_voxels: float,
) -> PatchPlan:
    """nnU-Net's patch/batch search for one configuration (see the module docstring).

    Args:
        spacing: the configuration's target spacing.
        median_shape: the median image shape at that spacing.
        num_classes: output channels of the network.
        memory_gb: the accelerator memory (GPU) or the share of RAM (CPU) the training may use.
        dataset_voxels: voxels of the whole training set at that spacing (caps the batch at 5 %).
    """
    dim = len(spacing)
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    budget = 256**3 if dim == 3 else 2048**2
    initial = [round(float(i)) for i in inv * (budget / np.prod(inv)) ** (1 / dim)]
    patch = [min(i, int(j)) for i, j in zip(initial, median_shape)]
    topo = pool_and_conv_props(spacing, patch)
    reference = REFERENCE_VOXELS[dim] * memory_gb / REFERENCE_GB
    ref_batch = REFERENCE_BATCH[dim]

    def estimate(t: Topology) -> int:
        return feature_map_voxels(
            t.patch_size, t.strides, features_per_stage(len(t.strides), dim), num_classes
        )

    voxels = estimate(topo)
    while voxels / ref_batch * 2 > reference:
        sizes = list(topo.patch_size)
        axis = int(np.argsort([p / m for p, m in zip(sizes, median_shape)])[-1])
        trial = list(sizes)
        trial[axis] -= topo.divisible_by[axis]
        divisible = pool_and_conv_props(spacing, trial).divisible_by
        sizes[axis] -= divisible[axis]
        if sizes[axis] < MIN_FEATURE_MAP_EDGE:
            break
        topo = pool_and_conv_props(spacing, sizes)
        voxels = estimate(topo)
    batch = round(reference / voxels * ref_batch)
    cap = round(dataset_voxels * MAX_DATASET_COVERED / float(np.prod(topo.patch_size, dtype=np.float64)))
    batch = max(min(batch, cap), MIN_BATCH)
    features = features_per_stage(len(topo.strides), dim)
    return PatchPlan(
        spacing=tuple(float(s) for s in spacing),
        patch_size=tuple(int(p) for p in topo.patch_size),
        batch_size=int(batch),
        topology=topo,
        features=features,
        feature_map_voxels=voxels,
        estimated_gb=round(voxels * batch / ref_batch * REFERENCE_GB / REFERENCE_VOXELS[dim], 3),
    )


def needs_lowres_stage(patch_size: Sequence[int], median_shape: Sequence[int]) -> bool:
    """Whether nnU-Net would add a low-resolution cascade stage: the patch covers < 25 % of the median image."""
    return (
        float(np.prod(patch_size, dtype=np.float64)) / float(np.prod(median_shape, dtype=np.float64))
        < LOWRES_THRESHOLD
    )


def normalization_scheme(modality: str, *, median_relative_size_after_crop: float) -> dict[str, object]:
    """One channel's normalisation: `ct` (dataset-wide clip + z-score) for CT, else per-image `zscore`,
    over the non-zero mask when cropping shrank the images to < 3/4 (nnU-Net's rule)."""
    if modality.strip().casefold() == "ct":
        return {"scheme": "ct", "use_nonzero_mask": False}
    return {"scheme": "zscore", "use_nonzero_mask": bool(median_relative_size_after_crop < 0.75)}
