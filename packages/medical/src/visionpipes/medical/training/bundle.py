"""Export a trained region model as a MONAI Bundle that `python -m monai.bundle run` loads and runs:
`configs/metadata.json` (MONAI's bundle metadata, filled from our model description and metrics),
`configs/inference.json` (MONAI transforms, sliding-window inferer, network, evaluator), `models/model.pt`
(the network's state dict) and `docs/README.md`. The folder appears whole or not at all.

It exports and describes; it never trains or scores. The one non-stock step, decoding region channels into
labels, is `visionpipes.medical.runtime.bundle_transforms.RegionsToLabelsd` (visionpipes-medical must be
installed where the bundle runs; `required_packages_version` says so).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipes.core.artifact import read_metrics
from visionpipes.core.config import parse_config
from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.medical.runtime.checkpoint import network_from_checkpoint
from visionpipes.medical.runtime.networks import ModelConfig, network_spec
from visionpipes.medical.runtime.predictor import AXCODES, InferenceConfig, is_nonzero_zscore

#: Bundle version written into metadata.json (the bundle format of this exporter, not the model's).
BUNDLE_VERSION = "0.1.0"
DECODER = "visionpipes.medical.runtime.bundle_transforms.RegionsToLabelsd"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def inference_config(description: Mapping[str, Any], inference: InferenceConfig) -> dict[str, Any]:
    """`configs/inference.json`: the predictor's preprocessing, windows and decoding as MONAI components.

    Raises:
        UserError: if the settings use flip test-time augmentation, which the bundle does not express.
    """
    if inference.tta_flips:
        raise UserError(
            "the MONAI bundle does not express flip test-time augmentation (tta_flips); export it with --no-tta."
        )
    model = parse_config(ModelConfig, description["model"], source="model description")
    pre: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, "dtype": "$np.float32"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": AXCODES},
    ]
    if description.get("pixdim"):
        pre.append(
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": list(description["pixdim"]),
                "mode": "bilinear",
            }
        )
    pre.append({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True})
    # as Predictor.region_probabilities: the box of non-zero normalised voxels (MRI; CT models, whose crop
    # is the body's box in raw HU, are refused by `export_bundle`)
    if inference.crop_foreground:
        pre.append(
            {
                "_target_": "CropForegroundd",
                "keys": "image",
                "source_key": "image",
                "select_fn": "$lambda x: x != 0",
                "margin": inference.crop_margin,
                "allow_smaller": True,
            }
        )
    pre.append({"_target_": "EnsureTyped", "keys": "image", "device": "@device", "track_meta": True})
    regions = [[name, sorted(int(v) for v in values)] for name, values in description["regions"]]
    return {
        "imports": ["$import glob", "$import os", "$import numpy as np"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*'))))",
        "output_dir": "$@bundle_root + '/eval'",
        "network_def": network_spec(model, len(description["modality"]), len(description["regions"])),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(description["roi_size"]),
            "sw_batch_size": inference.sw_batch_size,
            "overlap": inference.overlap,
            "mode": inference.blend,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": DECODER, "keys": "pred", "regions": regions, "threshold": inference.threshold},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$np.uint8",
                    "resample": False,
                    "separate_folder": False,
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "@ckpt_path",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def bundle_metadata(
    description: Mapping[str, Any],
    inference: InferenceConfig,
    metrics: Mapping[str, Any] | None = None,
    task_name: str | None = None,
) -> dict[str, Any]:
    """`configs/metadata.json` with the keys MONAI's bundle specification requires (version, changelog,
    monai/pytorch/numpy versions, required_packages_version, task, description, authors, copyright,
    network_data_format) and the optional ones we know (label_classes, pred_classes, eval_metrics, ...)."""
    import monai

    regions = [(name, sorted(int(v) for v in values)) for name, values in description["regions"]]
    labels = {str(k): v for k, v in (description.get("labels") or {}).items()}
    modality = list(description["modality"])
    roi = list(description["roi_size"])
    spacing = f"resampled to {list(description['pixdim'])} mm" if description.get("pixdim") else "as stored"
    task = f"{task_name or 'MSD task'} region segmentation ({', '.join(name for name, _ in regions)})"
    eval_metrics = {
        f"{name}_dice": values["dice"]
        for name, values in (metrics or {}).items()
        if isinstance(values, Mapping) and values.get("dice") is not None
    }
    return {
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "exported by `vp-medical export --format bundle`"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            "nibabel": _package_version("nibabel"),
            "pytorch-ignite": _package_version("pytorch-ignite"),
            "visionpipes-medical": _package_version("visionpipes-medical"),
        },
        "optional_packages_version": {},
        "name": f"visionpipes {description['model']['name']} {task_name or ''}".strip(),
        "task": task,
        "description": (
            f"3-D {description['model']['name']} predicting {len(regions)} overlapping regions as sigmoid "
            f"channels from {len(modality)} channels ({', '.join(modality)}), reoriented to {AXCODES}, voxel "
            f"spacing {spacing}, non-zero voxels z-scored per channel (NormalizeIntensityd nonzero, "
            f"channel_wise); sliding windows {roi} (overlap {inference.overlap}, {inference.blend} blending"
            f"{', cropped to the non-zero box' if inference.crop_foreground else ''}); regions thresholded at "
            f"{inference.threshold} and decoded into the task's label map by {DECODER}."
        ),
        "authors": "visionpipes",
        "copyright": "Copyright (c) visionpipes contributors",
        "license": "Apache-2.0",
        "intended_use": "Research use only; not a medical device.",
        "data_type": "nibabel",
        "image_classes": f"{len(modality)} channels: "
        + ", ".join(f"{i}: {m}" for i, m in enumerate(modality)),
        "label_classes": ", ".join(f"{k}: {v}" for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))),
        "pred_classes": ", ".join(f"{name} = labels {values}" for name, values in regions),
        "eval_metrics": eval_metrics,
        "references": [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR" if len(modality) > 1 else "unknown",
                    "num_channels": len(modality),
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): m for i, m in enumerate(modality)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(regions),
                    "spatial_shape": roi,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {str(i): name for i, (name, _) in enumerate(regions)},
                }
            },
        },
        "visionpipes": {"description": dict(description), "inference": inference.to_dict()},
    }


def export_bundle(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    inference: InferenceConfig | None = None,
    metrics: str | os.PathLike | None = None,
    task_name: str | None = None,
) -> Path:
    """Write a MONAI Bundle of a `vp-medical train` checkpoint to `out_dir` (replaced only on success).

    Run it with `python -m monai.bundle run --config_file OUT/configs/inference.json --meta_file
    OUT/configs/metadata.json --bundle_root OUT --dataset_dir SCANS --output_dir SEGS`.

    Raises:
        UserError: if the checkpoint or metrics file is unusable, the settings use TTA, or the model was
            trained with another normalisation than the non-zero z-score (CT), or is a 3d_cascade_fullres
            model (two networks).
    """
    inference = inference or InferenceConfig()
    net, description = network_from_checkpoint(checkpoint)
    if description.get("previous_stage"):
        raise UserError(
            f"model checkpoint {checkpoint} is a 3d_cascade_fullres model (nnU-Net's low-resolution cascade: "
            "a 3d_lowres network whose label map feeds the full-resolution one), which a MONAI Bundle's single "
            "network and inference.json cannot express; deploy it with `vp-medical export` (ONNX/TorchScript) "
            "instead."
        )
    normalization = description.get("normalization")
    if normalization and not is_nonzero_zscore(normalization):
        raise UserError(
            f"model checkpoint {checkpoint} normalises its input as {[e.get('scheme') for e in normalization]} "
            "(e.g. CT's clip + dataset z-score), which the bundle's stock NormalizeIntensityd cannot express, "
            "nor its crop to the body's box in raw Hounsfield units (inference.crop_foreground, "
            "body_threshold_hu); deploy it with `vp-medical export` (ONNX/TorchScript) instead."
        )
    config = inference_config(description, inference)
    metrics_data = read_metrics(metrics, producer="`vp-medical evaluate`") if metrics is not None else None
    metadata = bundle_metadata(description, inference, metrics_data, task_name)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "docs").mkdir()
        (tmp / "configs" / "inference.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        torch.save(net.state_dict(), tmp / "models" / "model.pt")
        (tmp / "docs" / "README.md").write_text(
            f"# {metadata['name']}\n\n{metadata['description']}\n\n"
            "```\npython -m monai.bundle run --config_file configs/inference.json --meta_file "
            "configs/metadata.json --bundle_root . --dataset_dir SCANS --output_dir SEGS\n```\n\n"
            f"Needs {', '.join(metadata['required_packages_version'])} (the region decoder is {DECODER}).\n"
        )
    return out
