"""Whole-volume prediction with a trained region model: the training's preprocessing (RAS orientation,
optional resampling, the per-channel normalisation it was trained with: z-score, or CT's clip + z-score), MONAI's `sliding_window_inference` with Gaussian blending,
optional flip test-time augmentation, region channels turned back into the MSD label map, written as NIfTI
with the input's affine and header.

It predicts and writes; it neither trains nor scores, and never imports training code. Outputs are atomic.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipes.core.config import parse_config
from visionpipes.core.device import select_device
from visionpipes.core.errors import UserError
from visionpipes.medical.msd.regions import Region, regions_to_labels
from visionpipes.medical.msd.validate import is_junk
from visionpipes.medical.msd.volumes import (
    NIFTI_SUFFIXES,
    NonFinitePolicy,
    check_output_path,
    finite_volume,
    read_image_volume,
    write_label_map,
)
from visionpipes.medical.runtime.checkpoint import network_from_checkpoint
from visionpipes.medical.runtime.crop import body_box, ct_channels, foreground_box
from visionpipes.medical.runtime.deployed import NotDeployedError, load_deployed
from visionpipes.medical.runtime.precision import window_precision, with_precision
from visionpipes.medical.runtime.settings import ONNX_MIN_WINDOW_VOXELS, InferenceConfig

#: Orientation every volume is brought to before the network sees it (training and inference alike).
AXCODES = "RAS"
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
@dataclass
class FolderPrediction:
    """What `Predictor.predict_folder` did.

    Attributes:
        written: the label maps written.
        failed: `(scan, reason)` for every scan that could not be predicted (the others went on).
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name (or, once written, would name) the same file or folder, links resolved."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def refuse_overwriting_input(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """Raises `UserError` if `output_path` is (or resolves to) `input_path`: a prediction never replaces a scan."""
    if same_file(input_path, output_path):
        raise UserError(
            f"output {output_path} is the input {input_path}; writing the prediction there would overwrite "
            f"the scan, so choose another output."
        )


def is_nonzero_zscore(normalization: Sequence[Mapping[str, Any]]) -> bool:
    """Whether per-channel entries are all the non-zero z-score (MONAI's `NormalizeIntensity(nonzero=True,
    channel_wise=True)`, which runs for them, so that Task01 models predict exactly as before)."""
    return all(e.get("scheme") == "zscore" and e.get("use_nonzero_mask") for e in normalization)


class Predictor:
    """A trained region model with its preprocessing, predicting label maps for whole scans.

    Args:
        net: maps `(B, C, X, Y, Z)` to region logits `(B, R, X, Y, Z)`.
        regions: the regions in channel order.
        modality: modality names in channel order (their count is the expected channel count).
        roi_size: sliding-window size.
        pixdim: voxel size the model was trained at (None: as stored).
        config: window, blending and TTA settings.
        device: where the network runs.
        labels: the task's `{label value: name}` (dataset.json `labels`), for outputs that name labels.
        normalization: per-channel entries (`planning.normalization`, e.g. CT's `{"scheme": "ct", "clip",
            "mean", "std"}`); None z-scores the non-zero voxels of each channel (the Task01 default).
        previous_stage: nnU-Net's 3d_cascade_fullres (`runtime.cascade`): the 3d_lowres stage's predictor,
            whose label map of the scan, brought back to the scan's grid and one-hot encoded over
            `foreground_labels`, follows the image through the preprocessing (nearest neighbour) and is
            appended to its normalised channels before the sliding windows; None for one network.
        foreground_labels: the task's labels other than background, in the one-hot channel order.

    Example:
        >>> predictor = Predictor.from_checkpoint("runs/medical/checkpoints/best.ckpt")  # doctest: +SKIP
        >>> predictor.predict_file("BRATS_485.nii.gz", "BRATS_485_seg.nii.gz")  # doctest: +SKIP
    """

    def __init__(
        self,
        net: torch.nn.Module,
        *,
        regions: Sequence[Region],
        modality: Sequence[str],
        roi_size: Sequence[int],
        pixdim: Sequence[float] | None = None,
        config: InferenceConfig | None = None,
        device: str | torch.device = "cpu",
        labels: Mapping[int | str, str] | None = None,
        normalization: Sequence[Mapping[str, Any]] | None = None,
        previous_stage: Predictor | None = None,
        foreground_labels: Sequence[int] = (),
    ) -> None:
        self.config = config or InferenceConfig()
        self.previous_stage = previous_stage
        self.foreground_labels = [int(v) for v in foreground_labels]
        self.normalization = None if normalization is None else [dict(e) for e in normalization]
        self.labels = {int(k): str(v) for k, v in (labels or {}).items()}
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.regions = tuple(regions)
        self.modality = list(modality)
        self.roi_size = tuple(int(s) for s in roi_size)
        self.pixdim = None if pixdim is None else tuple(float(p) for p in pixdim)
        self._window_net: torch.nn.Module | None = None

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, config: InferenceConfig | None = None, device: str = "cpu"
    ) -> Predictor:
        """Rebuild the network and its preprocessing from a `vp-medical train` checkpoint.

        Raises:
            UserError: if the checkpoint is missing or not one of ours.
        """
        net, description = network_from_checkpoint(path)
        return cls.from_description(net, description, config, device)

    @classmethod
    def from_description(
        cls,
        net: torch.nn.Module,
        description: Mapping[str, Any],
        config: InferenceConfig | None = None,
        device: str = "cpu",
    ) -> Predictor:
        """A predictor around `net` from a model description (`model_description`'s keys)."""
        regions = [Region(name, frozenset(int(v) for v in values)) for name, values in description["regions"]]
        return cls(
            net,
            regions=regions,
            modality=description["modality"],
            roi_size=description["roi_size"],
            pixdim=description.get("pixdim"),
            config=config,
            device=select_device(device),
            labels=description.get("labels"),
            normalization=description.get("normalization"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", **overrides: Any) -> Predictor:
        """A predictor from any model `vp-medical` writes: a training checkpoint (`.ckpt`), a deployed
        folder (`vp-medical export`), or one of its files (`model.onnx` run by onnxruntime, `model.pt`
        TorchScript).

        Inference settings are the ones a deployed model was evaluated with (the defaults for a
        checkpoint), with `overrides` (InferenceConfig fields) on top.

        Raises:
            UserError: if the path is missing or is none of these, or an override is unusable.
        """
        path = Path(path)
        if not path.exists():
            raise UserError(f"model {path} does not exist.")
        if path.suffix == ".ckpt":
            net, description = network_from_checkpoint(path)
            recorded = {}
        elif path.is_dir() or path.suffix == ".onnx":
            net, description, recorded = load_deployed(path)
        else:
            try:
                net, description, recorded = load_deployed(path)
            except NotDeployedError:
                net, description = network_from_checkpoint(path)
                recorded = {}
        settings = {**recorded, **{k: v for k, v in overrides.items() if v is not None}}
        config = parse_config(InferenceConfig, settings, source=f"inference settings for {path}")
        predictor = cls.from_description(net, description, config, device)
        prev = description.get("previous_stage")
        if prev:  # nnU-Net's 3d_cascade_fullres: both networks
            from visionpipes.medical.runtime.cascade import load_lowres_network

            lowres = cls.from_description(load_lowres_network(path), prev["description"], config, device)
            predictor.previous_stage = lowres
            predictor.foreground_labels = [int(v) for v in prev["foreground_labels"]]
        return predictor

    @property
    def num_channels(self) -> int:
        return len(self.modality)

    def label_names(self) -> dict[int, str]:
        """`{label value: name}` of every label the label maps can hold (background excluded)."""
        values = sorted({v for region in self.regions for v in region.labels})
        return {v: self.labels.get(v) or f"label {v}" for v in values}

    def _spatial(self, mode: str = "bilinear"):
        """Reorientation to `AXCODES` and (with `pixdim`) resampling by `mode` onto the model grid."""
        from monai.transforms import Compose, Orientation, Spacing

        steps = [Orientation(axcodes=AXCODES, labels=AXIS_LABELS)]
        if self.pixdim is not None:
            steps.append(Spacing(pixdim=self.pixdim, mode=mode))
        return Compose(steps)

    def crop_box(self, volume: torch.Tensor | np.ndarray) -> tuple[slice, ...] | None:
        """The body box of a CT `volume` `(C, X, Y, Z)` on the model grid BEFORE normalisation (`runtime.crop
        .body_box` over the `ct` channels, `body_threshold_hu`, `crop_margin`), when `crop_foreground` is on;
        None otherwise, and for a model without a `ct` channel (MRI: `region_probabilities` takes the box of
        the non-zero normalised voxels, as it always has)."""
        channels = ct_channels(self.normalization)
        if not self.config.crop_foreground or not channels:
            return None
        raw = torch.as_tensor(volume).as_subclass(torch.Tensor)[channels]
        return body_box(raw, self.config.body_threshold_hu, self.config.crop_margin)

    @torch.inference_mode()
    def region_probabilities(self, image: torch.Tensor, box: tuple[slice, ...] | None = None) -> torch.Tensor:
        """Region probabilities `(R, X, Y, Z)` of a preprocessed image `(C, X, Y, Z)` (model grid).

        The windows run over `box` (one slice per spatial axis, e.g. `crop_box` of the raw CT) when given,
        else, with `crop_foreground`, over the box of the non-zero voxels; every region is absent outside.
        """
        x = torch.as_tensor(image, dtype=torch.float32).as_subclass(torch.Tensor)[None].to(self.device)
        if box is None and self.config.crop_foreground:
            box = foreground_box(x[0], self.config.crop_margin)
        if box is not None:
            crop = x[(slice(None), slice(None), *box)]
            if crop.shape != x.shape:
                out = torch.zeros((len(self.regions), *x.shape[2:]), dtype=torch.float32)
                out[(slice(None), *box)] = self._probabilities(crop)[0].cpu()
                return out
        return self._probabilities(x)[0].cpu()

    def uses_onnxruntime(self) -> bool:
        """Whether the windows should run through onnxruntime (`InferenceConfig.window_runtime`)."""
        from visionpipes.medical.runtime.deployed import OnnxNetwork

        engine = self.config.window_runtime
        if engine == "torch" or isinstance(self.net, (OnnxNetwork, torch.jit.ScriptModule)):
            return False
        if engine == "onnxruntime":
            return True
        if window_precision(self.config.precision, self.device) == "bf16":
            return False  # bf16 windows run in PyTorch
        return self.device.type == "cpu" and math.prod(self.roi_size) >= ONNX_MIN_WINDOW_VOXELS

    def window_network(self) -> torch.nn.Module:
        """The module run on each window batch: the network itself, or (`uses_onnxruntime`) its
        onnxruntime form, built once. With `window_runtime: auto` an export that fails or differs falls back to
        the network with a warning; with `window_runtime: onnxruntime` it raises `UserError`."""
        if self._window_net is None:
            self._window_net = self.net
            if self.uses_onnxruntime():
                from visionpipes.medical.runtime.fast_windows import onnx_window_network

                try:
                    with torch.inference_mode(False):
                        self._window_net = onnx_window_network(self.net, self.num_channels, self.roi_size)
                except Exception as err:  # any exporter failure: the eager network still predicts
                    if self.config.window_runtime == "onnxruntime":
                        raise UserError(
                            f"inference.window_runtime onnxruntime: the network could not be run by onnxruntime "
                            f"with equal outputs ({type(err).__name__}: {err}); use window_runtime: torch."
                        ) from err
                    warnings.warn(
                        f"onnxruntime windows unavailable ({type(err).__name__}: {err}); predicting with "
                        f"PyTorch.",
                        stacklevel=2,
                    )
            self._window_net = with_precision(self._window_net, self.config.precision, self.device)
        return self._window_net

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        net = self.window_network()

        def run(volume: torch.Tensor) -> torch.Tensor:
            logits = sliding_window_inference(
                volume,
                roi_size=self.roi_size,
                sw_batch_size=self.config.sw_batch_size,
                predictor=net,
                overlap=self.config.overlap,
                mode=self.config.blend,
            )
            return torch.sigmoid(logits)

        probs = run(x)
        if self.config.tta_flips:
            for axis in (2, 3, 4):
                probs += torch.flip(run(torch.flip(x, dims=(axis,))), dims=(axis,))
            probs /= 4
        return probs

    def normalise(self, volume: torch.Tensor) -> torch.Tensor:
        """The training's intensity normalisation of a `(C, X, Y, Z)` volume (model grid)."""
        if self.normalization is None or is_nonzero_zscore(self.normalization):
            from monai.transforms import NormalizeIntensity

            return NormalizeIntensity(nonzero=True, channel_wise=True)(volume)
        from visionpipes.medical.planning.normalization import normalize_channels

        values = normalize_channels(np.asarray(volume.detach().cpu()), self.normalization)
        return torch.from_numpy(values)

    def predict_array(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Label map (input grid) of an image `(C, X, Y, Z)` with its voxel-to-world `affine`.

        Reorients (and resamples) and normalises as in training (`normalise`), predicts (with
        `crop_foreground`, over the brain's non-zero box or the CT body's box, `crop_box`), and maps the
        probabilities back onto the input grid before thresholding.

        Raises:
            UserError: if the channel count differs from the model's.
        """
        from monai.data import MetaTensor

        if image.shape[0] != self.num_channels:
            raise UserError(
                f"the scan has {image.shape[0]} channels, but the model expects {self.num_channels}."
            )
        spatial = self._spatial()
        volume = spatial(
            MetaTensor(torch.from_numpy(np.ascontiguousarray(image)), affine=torch.as_tensor(affine))
        )
        box = self.crop_box(volume)  # CT: the body, from the raw Hounsfield units
        normalised = self.normalise(volume)
        if self.previous_stage is not None:
            normalised = torch.cat(
                [torch.as_tensor(normalised).float(), self._previous_stage_channels(image, affine)]
            )
        probs = self.region_probabilities(normalised, box=box)
        probs = MetaTensor(probs, meta=volume.meta, applied_operations=volume.applied_operations)
        probs = spatial.inverse(probs)
        return regions_to_labels(probs.as_tensor().numpy(), self.regions, threshold=self.config.threshold)

    def _previous_stage_channels(self, image: np.ndarray, affine: np.ndarray) -> torch.Tensor:
        """The cascade's extra input: the previous stage's label map of `image` (on the input grid), one-hot
        over `foreground_labels` and brought onto the network's grid by nearest-neighbour resampling."""
        from monai.data import MetaTensor

        from visionpipes.medical.runtime.cascade import one_hot_foreground

        assert self.previous_stage is not None
        onehot = one_hot_foreground(self.previous_stage.predict_array(image, affine), self.foreground_labels)
        prev = self._spatial("nearest")(MetaTensor(torch.from_numpy(onehot), affine=torch.as_tensor(affine)))
        return prev.as_tensor().float()

    def predict_file(
        self,
        input_path: str | os.PathLike,
        output_path: str | os.PathLike,
        *,
        nonfinite: NonFinitePolicy = "error",
    ) -> Path:
        """Predict one NIfTI scan and write its label map with the input's affine and header.

        Args:
            input_path: the scan.
            output_path: the `.nii` / `.nii.gz` label map to write (never the input).
            nonfinite: NaN/inf voxels refuse the scan (`error`) or are set to 0 with a warning (`zero`).

        Raises:
            UserError: if the input is missing, corrupt, has an unusable header, NaN/inf voxels (with
                `error`) or the wrong channel count / dimensions, the output is the input, the output's
                folder does not exist, or the output name is not `.nii` / `.nii.gz`.
        """
        output = Path(output_path)
        check_output_path(output)
        refuse_overwriting_input(input_path, output)
        volume, image = read_image_volume(input_path, self.num_channels)
        volume = finite_volume(volume, input_path, nonfinite)
        labels = self.predict_array(volume, image.affine)
        write_label_map(labels, image, output)
        return output

    def predict_folder(
        self,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        *,
        nonfinite: NonFinitePolicy = "error",
        progress: Callable[[int, int, Path], None] | None = None,
    ) -> FolderPrediction:
        """Predict every `.nii` / `.nii.gz` in `input_dir` into `output_dir` (same file names).

        A scan that cannot be predicted (corrupt, bad header, NaN voxels, wrong channels ...) is recorded
        in the result's `failed` and the others go on; nothing is written for it.

        Raises:
            UserError: if `input_dir` holds no NIfTI file, `output_dir` is not an existing folder, or it is
                `input_dir` itself (the label maps would overwrite the scans).
        """
        input_dir, output_dir = Path(input_dir), Path(output_dir)
        if not output_dir.is_dir():
            raise UserError(f"output folder {output_dir} does not exist.")
        if same_file(input_dir, output_dir):
            raise UserError(
                f"output folder {output_dir} is the input folder {input_dir}; the label maps (same file "
                f"names) would overwrite the scans, so choose another output folder."
            )
        scans = sorted(
            p for p in input_dir.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not is_junk(p.name)
        )
        if not scans:
            raise UserError(f"input folder {input_dir} holds no .nii or .nii.gz scan.")
        result = FolderPrediction()
        for i, scan in enumerate(scans, start=1):
            try:
                result.written.append(self.predict_file(scan, output_dir / scan.name, nonfinite=nonfinite))
            except UserError as err:
                result.failed.append((scan, str(err)))
            except Exception as err:  # one bad scan must not stop a folder of hundreds
                result.failed.append((scan, f"{type(err).__name__}: {err}"))
            if progress:
                progress(i, len(scans), scan)
        return result
