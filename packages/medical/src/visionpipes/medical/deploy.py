"""Deployment of a trained region model: TorchScript and ONNX files proven equal to the eager network by
the core export parity check, each carrying the model's description and inference settings, plus a
Markdown model card (metrics, params, data fingerprint). The folder appears whole or not at all.

It exports, describes and loads back what it exported; it neither trains nor scores (the card quotes the
metrics file `vp-medical evaluate` wrote).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, dataclass_from_params, write_json
from visionpipes.medical.infer import InferenceConfig, NotDeployedError, network_from_checkpoint

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
RECORD_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"
#: Key of the description in the ONNX metadata and name of the TorchScript extra file.
METADATA_KEY = "visionpipes.medical"
FORMAT_VERSION = 1
FORMATS = ("onnx", "torchscript")
_FILES = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE}


@dataclass
class DeployConfig:
    """`params.yaml`'s `deploy:` section.

    Attributes:
        formats: files to write, `onnx` and/or `torchscript`.
        runtime: which of them `vp-medical predict --model DEPLOY_DIR` runs.
        opset: ONNX opset.
        atol, rtol: parity tolerance (see `visionpipes.core.export`).
    """

    formats: Sequence[str] = field(default_factory=lambda: list(FORMATS))
    runtime: str = "onnx"
    opset: int = 17
    atol: float = 1e-4
    rtol: float = 1e-4

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "deploy settings") -> DeployConfig:
        """Build from a mapping.

        Raises:
            UserError: on an unknown key, format or runtime, naming `source`.
        """
        config = dataclass_from_params(cls, data, source=source)
        config.formats = list(config.formats)
        bad = [f for f in config.formats if f not in FORMATS] or ([] if config.formats else ["(none)"])
        if bad:
            raise UserError(f"{source}: formats must be a non-empty list of onnx, torchscript; got {bad}.")
        if config.runtime not in config.formats:
            raise UserError(
                f"{source}: runtime '{config.runtime}' must be one of the formats {config.formats}."
            )
        return config


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


class OnnxNetwork(torch.nn.Module):
    """An ONNX model run by onnxruntime behind the `nn.Module` call that MONAI's inferers expect
    (`(B, C, *spatial)` tensor in, logits tensor out; no gradients)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        from visionpipes.core.export import OnnxRunner

        self.runner = OnnxRunner(path, threads=threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.runner(x.detach().cpu().numpy())[0]
        return torch.from_numpy(out).to(x.device)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _add_onnx_metadata(path: Path, metadata: str) -> None:
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence torch's deprecation notice for TorchScript, which we use on purpose (see core export)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning
        )
        yield


def _add_torchscript_metadata(path: Path, metadata: str) -> None:
    with _quiet_torchscript():
        module = torch.jit.load(str(path), map_location="cpu")
        torch.jit.save(module, str(path), _extra_files={METADATA_KEY: metadata})


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    rows = ["| region | Dice | HD95 (mm) | cases |", "| --- | ---: | ---: | ---: |"]
    for name, values in metrics.items():
        if isinstance(values, Mapping) and "dice" in values:
            rows.append(
                f"| {name} | {cell(values.get('dice'))} | {cell(values.get('hd95'))} | {cell(values.get('n_dice', ''))} |"
            )
    return rows


def model_card(
    record: Mapping[str, Any], metrics: Mapping[str, Any] | None, params: Mapping[str, Any] | None
) -> str:
    """The Markdown model card of a deployed model (from its `model.json` record)."""
    import yaml

    d = record["description"]
    data = record.get("data") or {}
    fp = data.get("fingerprint") or {}
    regions = ", ".join(f"{name} = labels {{{', '.join(map(str, labels))}}}" for name, labels in d["regions"])
    labels = ", ".join(f"{k} {v}" for k, v in sorted(d["labels"].items(), key=lambda kv: int(kv[0])))
    lines = [
        f"# Model card: {d['model']['name']} region segmentation ({data.get('name') or 'MSD task'})",
        "",
        "3-D segmentation of an MSD task into overlapping regions (sigmoid channels), turned back into the "
        "task's label map. Written by `vp-medical export`.",
        "",
        "## Model",
        f"- Network: `{d['model']['name']}`, channels {list(d['model']['channels'])}, "
        f"{record['parameters']:,} parameters.",
        f"- Input: {len(d['modality'])} channels ({', '.join(d['modality'])}), channels first, reoriented to "
        f"RAS{', resampled to ' + str(d['pixdim']) + ' mm' if d.get('pixdim') else ''}, non-zero voxels "
        "z-scored per channel.",
        f"- Output: logits of {regions}; label map {labels}.",
        f"- Sliding window {list(d['roi_size'])} voxels; inference settings: "
        + ", ".join(f"{k}={v}" for k, v in record["inference"].items())
        + ".",
        "",
        "## Files",
        "| file | format | sha256 | parity vs eager (max abs diff) |",
        "| --- | --- | --- | ---: |",
    ]
    for fmt, info in record["files"].items():
        lines.append(f"| `{info['file']}` | {fmt} | `{info['sha256'][:16]}…` | {info['max_abs_diff']:.2e} |")
    lines += [
        "",
        f"`vp-medical predict --model <this folder> --input SCAN.nii.gz --output SEG.nii.gz` runs "
        f"`{_FILES[record['runtime']]}`; the files can also be given directly.",
        "",
        "## Evaluation",
    ]
    if metrics:
        lines += [
            "From `vp-medical evaluate` with the inference settings above:",
            "",
            *_metrics_table(metrics),
        ]
    else:
        lines.append("No metrics file was given to `vp-medical export`.")
    lines += ["", "## Training"]
    training = record.get("training") or {}
    if training:
        lines.append(
            f"- {training.get('epochs')} epochs, {training.get('seconds_per_epoch')} s/epoch; "
            f"split: {len((training.get('split') or {}).get('train', []))} training, "
            f"{len((training.get('split') or {}).get('val', []))} held-out cases."
        )
    lines.append(f"- Checkpoint: `{record['checkpoint']}` (sha256 `{record['checkpoint_sha256'][:16]}…`).")
    if params:
        lines += [
            "",
            "Parameters (`params.yaml`):",
            "",
            "```yaml",
            yaml.safe_dump(dict(params), sort_keys=False, default_flow_style=None, width=100).strip(),
            "```",
        ]
    lines += ["", "## Data"]
    if data:
        lines += [
            f"- Task: {data.get('name')} from `{data.get('task_dir')}`"
            + (" — **synthetic sample**, not clinical data." if data.get("synthetic") else "."),
            f"- Fingerprint: sha256 `{fp.get('sha256')}` over dataset.json and {fp.get('files')} listed files "
            f"({fp.get('bytes', 0):,} bytes; file {'contents' if fp.get('mode') == 'content' else 'sizes'}).",
        ]
    else:
        lines.append("- No task folder was given to `vp-medical export`: no fingerprint.")
    lines += [
        "",
        "## Limitations",
        "- Research use only; not a medical device. Quality on scanners, protocols or tumour types unlike the "
        "training data is unknown.",
    ]
    if data.get("synthetic"):
        lines.append(
            "- Trained on generated volumes: the metrics above say nothing about real MRI. Point "
            "`data.path` in params.yaml at a real MSD copy and rerun the pipeline."
        )
    return "\n".join(lines) + "\n"


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
    carries the description (regions, modalities, window, spacing) and `inference` settings, so that
    `Predictor.load` needs nothing else. `out_dir` is replaced only when everything succeeded.

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
    from visionpipes.medical.data import dataset_fingerprint, read_task_pointer, resolve_task_dir
    from visionpipes.medical.msd import load_task

    config = config or DeployConfig()
    inference = inference or InferenceConfig()
    inference.check()
    checkpoint = Path(checkpoint)
    net, description = network_from_checkpoint(checkpoint)
    metrics_data = None
    if metrics is not None:
        metrics = Path(metrics)
        if not metrics.is_file():
            raise UserError(f"metrics file {metrics} does not exist.")
        try:
            metrics_data = json.loads(metrics.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"metrics file {metrics} is not JSON ({err}).") from None
    data = None
    if task_dir is not None:
        pointer = read_task_pointer(task_dir)
        folder = resolve_task_dir(task_dir)
        task = load_task(folder)
        data = {
            "name": task.name,
            "task_dir": pointer["task_dir"] if pointer else str(folder),
            "synthetic": bool(pointer and pointer.get("synthetic")),
            "fingerprint": (pointer or {}).get("fingerprint")
            or dataset_fingerprint(folder, fingerprint_mode),
        }
    training = None
    summary = checkpoint.parent.parent / "train.json"
    if summary.is_file():
        t = json.loads(summary.read_text())
        training = {k: t.get(k) for k in ("epochs", "seconds_per_epoch", "split", "metrics")}

    metadata = json.dumps(
        {"format_version": FORMAT_VERSION, "description": description, "inference": asdict(inference)},
        sort_keys=True,
    )
    example = torch.randn(
        1, len(description["modality"]), *description["roi_size"], generator=torch.Generator().manual_seed(0)
    )
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    with atomic_path(out, is_dir=True) as tmp:
        reports = {}
        for fmt in config.formats:
            path = tmp / _FILES[fmt]
            if fmt == "onnx":
                reports[fmt] = export_onnx(
                    net, example, path, input_names=["image"], output_names=["logits"],
                    dynamic_axes={"image": axes, "logits": axes}, opset=config.opset, atol=config.atol,
                    rtol=config.rtol,
                )  # fmt: skip
                _add_onnx_metadata(path, metadata)
            else:
                reports[fmt] = export_torchscript(net, example, path, atol=config.atol, rtol=config.rtol)
                _add_torchscript_metadata(path, metadata)
            files[fmt] = out / _FILES[fmt]
        record = {
            "format_version": FORMAT_VERSION,
            "runtime": config.runtime,
            "description": description,
            "inference": asdict(inference),
            "parameters": count_parameters(net),
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": _sha256(checkpoint),
            "files": {
                fmt: {
                    "file": _FILES[fmt],
                    "sha256": _sha256(tmp / _FILES[fmt]),
                    "bytes": (tmp / _FILES[fmt]).stat().st_size,
                    "max_abs_diff": r.max_abs_diff,
                    "max_rel_diff": r.max_rel_diff,
                    "exporter": r.exporter,
                    "opset": r.opset,
                }
                for fmt, r in reports.items()
            },
            "data": data,
            "training": training,
            "metrics": metrics_data,
        }
        write_json(tmp / RECORD_FILE, record)
        with atomic_path(tmp / CARD_FILE) as card:
            card.write_text(model_card(record, metrics_data, params))
    return DeployResult(out_dir=out, files=files, record=record)


def _parse_metadata(text: str, source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        meta = json.loads(text)
        return meta["description"], meta.get("inference") or {}
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"model {source} carries an unreadable {METADATA_KEY} description.") from None


def load_deployed(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The network, description and recorded inference settings of a deployed model: its folder (the
    runtime `model.json` names), a `model.onnx` (run by onnxruntime) or a TorchScript `model.pt`.

    Raises:
        NotDeployedError: if a file is not a TorchScript model written by `vp-medical export`.
        UserError: if the path is missing, unreadable, or an ONNX model / folder not written by it.
    """
    path = Path(path)
    if path.is_dir():
        record_path = path / RECORD_FILE
        if not record_path.is_file():
            raise UserError(f"model folder {path} has no {RECORD_FILE}; is it a `vp-medical export` folder?")
        try:
            runtime = json.loads(record_path.read_text())["runtime"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{record_path} is not a `vp-medical export` record.") from None
        path = path / _FILES.get(runtime, ONNX_FILE)
        if not path.is_file():
            raise UserError(
                f"model folder {path.parent} lacks {path.name}, the runtime its {RECORD_FILE} names."
            )
    if path.suffix == ".onnx":
        net = OnnxNetwork(path, threads=torch.get_num_threads())
        text = net.runner.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise UserError(f"ONNX model {path} was not written by `vp-medical export` (no {METADATA_KEY}).")
        description, inference = _parse_metadata(text, path)
        return net, description, inference
    extra = {METADATA_KEY: ""}
    try:
        with _quiet_torchscript():
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception:  # torch raises RuntimeError/ValueError/... for files that are not TorchScript
        raise NotDeployedError(f"{path} is not a TorchScript model.") from None
    if not extra[METADATA_KEY]:
        raise UserError(
            f"TorchScript model {path} was not written by `vp-medical export` (no {METADATA_KEY})."
        )
    description, inference = _parse_metadata(extra[METADATA_KEY], path)
    return net.eval(), description, inference
