"""Deployment of a trained region model: TorchScript and ONNX files proven equal to the eager network by
the core export parity check, each carrying the model's description and inference settings, plus the
versioned `model.json` record (checksums) and the Markdown model card of `visionpipes.core.artifact`.
The folder appears whole or not at all.

It exports and describes; it neither trains nor scores (the card quotes the metrics file that
`vp-medical evaluate` wrote). Loading a deployed model back is runtime (`runtime.deployed`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import model_validator

from visionpipes.core.artifact import (
    ModelCard,
    file_entry,
    read_metrics,
    set_torchscript_metadata,
    sha256_file,
    write_record,
)
from visionpipes.core.config import ConfigModel, Field
from visionpipes.core.io import atomic_path
from visionpipes.medical.msd.regions import Region, region_convention
from visionpipes.medical.runtime.checkpoint import load_training_checkpoint, network_from_checkpoint
from visionpipes.medical.runtime.deployed import DOMAIN, FILES, model_metadata
from visionpipes.medical.runtime.predictor import InferenceConfig

Format = Literal["onnx", "torchscript"]


class DeployConfig(ConfigModel):
    """`params.yaml`'s `deploy:` section.

    Attributes:
        formats: files to write, `onnx` and/or `torchscript`.
        runtime: which of them `vp-medical predict --model DEPLOY_DIR` runs.
        opset: ONNX opset.
        atol, rtol: parity tolerance (see `visionpipes.core.export`).
    """

    formats: list[Format] = Field(default_factory=lambda: ["onnx", "torchscript"], min_length=1)
    runtime: Format = "onnx"
    opset: int = Field(17, ge=7)
    atol: float = Field(1e-4, ge=0.0)
    rtol: float = Field(1e-4, ge=0.0)

    @model_validator(mode="after")
    def _runtime_is_written(self) -> DeployConfig:
        if self.runtime not in self.formats:
            raise ValueError(f"runtime '{self.runtime}' must be one of the formats {list(self.formats)}")
        return self


@dataclass(frozen=True)
class DeployResult:
    """What `deploy` wrote.

    Attributes:
        out_dir: the deployed folder.
        files: `{format: path}` of the model files.
        record: the content of `model.json`.
    """

    out_dir: Path
    files: dict[str, Path]
    record: dict[str, Any]


def _metrics_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    return [
        [name, values.get("dice"), values.get("hd95"), values.get("n_dice", "")]
        for name, values in metrics.items()
        if isinstance(values, Mapping) and "dice" in values
    ]


def _normalization_text(entries: Any) -> str:
    """One phrase per channel group: how the deployed model normalises its input."""
    if not entries:
        return "non-zero voxels z-scored per channel"
    parts = []
    for e in entries:
        name = e.get("modality") or "channel"
        if e.get("scheme") == "ct":
            lo, hi = e["clip"]
            parts.append(
                f"{name}: clipped to [{lo:.1f}, {hi:.1f}], then (x - {e['mean']:.2f}) / {e['std']:.2f}"
            )
        elif e.get("scheme") == "zscore":
            over = "its non-zero voxels" if e.get("use_nonzero_mask") else "the whole image"
            parts.append(f"{name}: z-scored over {over}")
        else:
            parts.append(f"{name}: as stored")
    return "; ".join(parts)


def _configuration(description: Mapping[str, Any], plan: Mapping[str, Any] | None) -> str:
    """nnU-Net's configuration name of a deployed model (`train.configuration` as resolved)."""
    if description.get("previous_stage"):
        return "3d_cascade_fullres"
    return str((plan or {}).get("configuration") or "3d_fullres")


def _cascade_text(cascade: Mapping[str, Any], configuration: str | None) -> str:
    if not cascade.get("enabled"):
        return "no."
    where = f"planned at {cascade.get('lowres_spacing')} mm"
    if configuration == "3d_cascade_fullres":
        return (
            f"{where}, trained: the 3d_lowres network (patch {cascade.get('lowres_patch_size')}) predicts "
            "first, its label map is appended as one-hot channels to the 3d_cascade_fullres input."
        )
    if configuration == "3d_lowres":
        return f"{where}; this model is the 3d_lowres stage alone."
    return f"{where} (not trained: train.configuration {configuration or '3d_fullres'})."


def _cascade_bullets(description: Mapping[str, Any]) -> list[str]:
    """The Model section's lines on nnU-Net's cascade (a 3d_cascade_fullres model only)."""
    prev = description.get("previous_stage")
    if not prev:
        return []
    low = prev["description"]
    labels = prev["foreground_labels"]
    return [
        f"Configuration: 3d_cascade_fullres (nnU-Net's low-resolution cascade). The 3d_lowres network "
        f"(`{low['model']['name']}`, channels {list(low['model']['channels'])}, window {list(low['roi_size'])} "
        f"at {low.get('pixdim')} mm, files `lowres_model.*`) predicts first; its label map, brought back "
        f"to the scan's grid, is appended as {len(labels)} one-hot channels (labels {labels}) to the "
        f"full-resolution network's input ({len(description['modality']) + len(labels)} channels in all).",
        "The MONAI Bundle export cannot express the two-stage cascade (`export --format bundle` refuses it): "
        "use this folder (ONNX/TorchScript) with `vp-medical predict`.",
    ]


def _plan_bullets(plan: Mapping[str, Any]) -> list[str]:
    hw = plan.get("hardware") or {}
    sources = plan.get("sources") or {}
    from_plan = sorted(k for k, v in sources.items() if v == "plan")
    from_params = sorted(k for k, v in sources.items() if v == "params")
    cascade = plan.get("cascade") or {}
    return [
        f"Made by `vp-medical plan` for {hw.get('device')} ({hw.get('memory_gb')} GB, {hw.get('cpu_cores')} "
        f"cores; budget {(plan.get('memory') or {}).get('budget_gb')} GB): spacing {plan.get('spacing')} mm, "
        f"patch {plan.get('patch_size')}, batch {plan.get('batch_size')}, strides {plan.get('strides')}.",
        f"Values from the plan (`auto`): {', '.join(f'`{k}`' for k in from_plan) or 'none'}; set explicitly "
        f"in params.yaml: {', '.join(f'`{k}`' for k in from_params) or 'none'}.",
        "Low-resolution cascade: " + _cascade_text(cascade, plan.get("configuration")),
        f"Fingerprint sha256 `{str(plan.get('fingerprint_sha256'))[:16]}…`"
        + (f", plan file `{plan['path']}`." if plan.get("path") else "."),
    ]


def model_card(
    record: Mapping[str, Any], metrics: Mapping[str, Any] | None, params: Mapping[str, Any] | None
) -> ModelCard:
    """The model card of a deployed model (from its `model.json` record)."""
    import yaml

    d = record["description"]
    data = record.get("data") or {}
    fp = data.get("fingerprint") or {}
    regions = ", ".join(f"{name} = labels {{{', '.join(map(str, labels))}}}" for name, labels in d["regions"])
    labels = ", ".join(f"{k} {v}" for k, v in sorted(d["labels"].items(), key=lambda kv: int(kv[0])))
    card = ModelCard(
        f"Model card: {d['model']['name']} region segmentation ({data.get('name') or 'MSD task'})",
        "3-D segmentation of an MSD task into overlapping regions (sigmoid channels), turned back into the "
        "task's label map. Written by `vp-medical export`.",
    )
    resampled = f", resampled to {d['pixdim']} mm" if d.get("pixdim") else ""
    card.section(
        "Model",
        bullets=[
            f"Network: `{d['model']['name']}`, channels {list(d['model']['channels'])}, "
            f"{record['parameters']:,} parameters.",
            f"Input: {len(d['modality'])} channels ({', '.join(d['modality'])}), channels first, reoriented to "
            f"RAS{resampled}; normalisation: {_normalization_text(d.get('normalization'))}.",
            f"Output: logits of {regions}; label map {labels}.",
            "Regions reported (metrics below): "
            + region_convention([Region(n, frozenset(int(v) for v in vs)) for n, vs in d["regions"]]),
            f"Sliding window {list(d['roi_size'])} voxels; inference settings: "
            + ", ".join(f"{k}={v}" for k, v in record["inference"].items())
            + ".",
            *_cascade_bullets(d),
        ],
    )
    card.section(
        "Files",
        f"`vp-medical predict --model <this folder> --input SCAN.nii.gz --output SEG.nii.gz` runs "
        f"`{FILES[record['runtime']]}`; the files can also be given directly.",
        table=(
            ["file", "format", "sha256", "parity vs eager (max abs diff)"],
            [
                [f"`{info['file']}`", fmt, f"`{info['sha256'][:16]}…`", f"{info['max_abs_diff']:.2e}"]
                for fmt, info in record["files"].items()
            ],
        ),
    )
    if metrics:
        card.section(
            "Evaluation",
            "From `vp-medical evaluate` with the inference settings above:",
            table=(["region", "Dice", "HD95 (mm)", "cases"], _metrics_rows(metrics)),
        )
    else:
        card.section("Evaluation", "No metrics file was given to `vp-medical export`.")
    if record.get("plan"):
        card.section("Plan", bullets=_plan_bullets(record["plan"]))
    training = record.get("training") or {}
    split = training.get("split") or {}
    bullets = []
    if training:
        bullets.append(
            f"{training.get('epochs')} epochs, {training.get('seconds_per_epoch')} s/epoch; "
            f"split: {len(split.get('train', []))} training, {len(split.get('val', []))} held-out cases."
        )
    bullets.append(f"Checkpoint: `{record['checkpoint']}` (sha256 `{record['checkpoint_sha256'][:16]}…`).")
    card.section("Training", bullets=bullets)
    if params:
        text = yaml.safe_dump(dict(params), sort_keys=False, default_flow_style=None, width=100)
        card.section("Parameters", "From `params.yaml`:", code=("yaml", text))
    if data:
        card.section(
            "Data",
            bullets=[
                f"Task: {data.get('name')} from `{data.get('task_dir')}`"
                + (" — **synthetic sample**, not clinical data." if data.get("synthetic") else "."),
                f"Fingerprint: sha256 `{fp.get('sha256')}` over dataset.json and {fp.get('files')} listed "
                f"files ({fp.get('bytes', 0):,} bytes; file "
                f"{'contents' if fp.get('mode') == 'content' else 'sizes'}).",
            ],
        )
    else:
        card.section("Data", bullets=["No task folder was given to `vp-medical export`: no fingerprint."])
    limitations = [
        "Research use only; not a medical device. Quality on scanners, protocols or tumour types unlike the "
        "training data is unknown."
    ]
    if data.get("synthetic"):
        limitations.append(
            "Trained on generated volumes: the metrics above say nothing about real MRI. Point "
            "`data.path` in params.yaml at a real MSD copy and rerun the pipeline."
        )
    card.section("Limitations", bullets=limitations)
    return card


def _data_record(task_dir: str | os.PathLike, fingerprint_mode: str) -> dict[str, Any]:
    """Name, folder, synthetic flag and fingerprint of the training data (a task folder or `task.json`)."""
    from visionpipes.medical.data_stage import dataset_fingerprint, read_task_pointer, resolve_task_dir
    from visionpipes.medical.msd.dataset_json import load_task

    pointer = read_task_pointer(task_dir)
    folder = resolve_task_dir(task_dir)
    task = load_task(folder)
    return {
        "name": task.name,
        "task_dir": pointer["task_dir"] if pointer else str(folder),
        "synthetic": bool(pointer and pointer.get("synthetic")),
        "fingerprint": (pointer or {}).get("fingerprint") or dataset_fingerprint(folder, fingerprint_mode),
    }


def deploy(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    config: DeployConfig | None = None,
    inference: InferenceConfig | None = None,
    task_dir: str | os.PathLike | None = None,
    metrics: str | os.PathLike | None = None,
    params: Mapping[str, Any] | None = None,
    fingerprint_mode: str = "content",
) -> DeployResult:
    """Export a `vp-medical train` checkpoint to `out_dir`: the model files, `model.json` and `MODEL_CARD.md`.

    Each file is checked against the eager network on a window-sized input (core parity check) and
    carries the description (regions, modalities, window, spacing, normalisation) and `inference`
    settings, so that `Predictor.load` needs nothing else. The plan the checkpoint was trained with
    (`vp-medical train --plan`) goes into `model.json` (`plan`) and the card's Plan section. `out_dir` is replaced only when everything succeeded.

    Args:
        checkpoint: the trained checkpoint.
        out_dir: the folder to write.
        config: formats, runtime and tolerances.
        inference: settings `predict` uses by default (those the metrics were measured with).
        task_dir: the training data (a task folder or the data stage's `task.json`), fingerprinted.
        metrics: `metrics.json` written by `vp-medical evaluate`, quoted in the card.
        params: the parameters to quote in the card.
        fingerprint_mode: `content` or `size` when the fingerprint must be computed here.

    Returns:
        A `DeployResult`.

    Raises:
        UserError: if an input is missing or unreadable.
        visionpipes.core.export.ExportParityError: if an export differs from the eager network.
    """
    from visionpipes.core.export import export_onnx, export_torchscript
    from visionpipes.core.profile import count_parameters

    config = config or DeployConfig()
    inference = inference or InferenceConfig()
    checkpoint = Path(checkpoint)
    net, description = network_from_checkpoint(checkpoint)
    stages = [("", net, description)]
    if description.get("previous_stage"):  # 3d_cascade_fullres: the low-resolution network too
        from visionpipes.medical.runtime.cascade import LOWRES_PREFIX
        from visionpipes.medical.runtime.checkpoint import lowres_network_from_checkpoint

        lowres_net, lowres_description = lowres_network_from_checkpoint(checkpoint)
        stages.append((LOWRES_PREFIX, lowres_net, lowres_description))
    plan = load_training_checkpoint(checkpoint)["hyper_parameters"].get("plan")
    metrics_data = read_metrics(metrics, producer="`vp-medical evaluate`") if metrics is not None else None
    data = _data_record(task_dir, fingerprint_mode) if task_dir is not None else None
    training = None
    summary = checkpoint.parent.parent / "train.json"
    if summary.is_file():
        t = json.loads(summary.read_text())
        training = {k: t.get(k) for k in ("epochs", "seconds_per_epoch", "split", "metrics")}

    from visionpipes.medical.runtime.checkpoint import cascade_input_channels

    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, is_dir=True) as tmp:
        files = {}
        for prefix, stage_net, stage_description in stages:
            metadata = model_metadata(stage_description, inference.to_dict())
            example = torch.randn(
                1, cascade_input_channels(stage_description), *stage_description["roi_size"],
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            reports = {}
            for fmt in config.formats:
                path = tmp / f"{prefix}{FILES[fmt]}"
                if fmt == "onnx":
                    reports[fmt] = export_onnx(
                        stage_net, example, path, input_names=["image"], output_names=["logits"],
                        dynamic_axes={"image": axes, "logits": axes}, opset=config.opset, atol=config.atol,
                        rtol=config.rtol, metadata=metadata,
                    )  # fmt: skip
                else:
                    reports[fmt] = export_torchscript(
                        stage_net, example, path, atol=config.atol, rtol=config.rtol
                    )
                    set_torchscript_metadata(path, metadata)
            parity = {
                fmt: {"max_abs_diff": r.max_abs_diff, "max_rel_diff": r.max_rel_diff, "exporter": r.exporter,
                      "opset": r.opset}
                for fmt, r in reports.items()
            }  # fmt: skip
            files.update(
                {f"{prefix}{fmt}": file_entry(tmp, f"{prefix}{FILES[fmt]}", **parity[fmt]) for fmt in reports}
            )
        record = write_record(
            tmp,
            domain=DOMAIN,
            files=files,
            runtime=config.runtime,
            description=description,
            inference=inference.to_dict(),
            parameters=count_parameters(net),
            configuration=_configuration(description, plan),
            checkpoint=str(checkpoint),
            checkpoint_sha256=sha256_file(checkpoint),
            data=data,
            training=training,
            metrics=metrics_data,
            plan=plan,
        )
        model_card(record, metrics_data, params).write(tmp)
    return DeployResult(
        out_dir=out, files={role: out / info["file"] for role, info in files.items()}, record=record
    )
