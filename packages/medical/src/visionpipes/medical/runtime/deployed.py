"""A model deployed by `vp-medical export`, loaded for prediction: the folder (through its `model.json`
record, checksums verified), its `model.onnx` run by onnxruntime, or its TorchScript `model.pt`, each
with the description and inference settings the file carries in its metadata.

It loads and wraps; it never exports (see `visionpipes.medical.training.deploy`) and never imports
training code.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from visionpipes.core.artifact import METADATA_KEY, read_record, read_torchscript_metadata
from visionpipes.core.errors import UserError

#: The domain name in `model.json` and in the model files' metadata.
DOMAIN = "medical"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"
#: Model file of each format a deploy folder may hold.
FILES: dict[str, str] = {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE}


class NotDeployedError(UserError):
    """The file is not a model written by `vp-medical export`."""


def model_metadata(description: dict[str, Any], inference: dict[str, Any]) -> dict[str, str]:
    """The metadata a deployed model file carries (`{METADATA_KEY: json}`): enough to predict with the
    file alone (regions, modalities, window, spacing, inference settings)."""
    from visionpipes.core.artifact import FORMAT_VERSION

    text = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "domain": DOMAIN,
            "description": description,
            "inference": inference,
        },
        sort_keys=True,
    )
    return {METADATA_KEY: text}


def _parse_metadata(text: str | None, source: Path, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not text:
        raise UserError(f"{kind} model {source} was not written by `vp-medical export` (no {METADATA_KEY}).")
    try:
        meta = json.loads(text)
        if meta.get("domain", DOMAIN) != DOMAIN:
            raise UserError(f"{kind} model {source} is a {meta['domain']!r} model, not a medical one.")
        return meta["description"], meta.get("inference") or {}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise UserError(f"model {source} carries an unreadable {METADATA_KEY} description.") from None


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


def deployed_model_file(folder: str | os.PathLike) -> Path:
    """The model file a deploy folder's `model.json` names as its runtime, checksums verified.

    Raises:
        UserError: if the folder has no medical `model.json`, or a listed file is missing or changed.
    """
    folder = Path(folder)
    if not (folder / "model.json").is_file():
        raise UserError(f"model folder {folder} has no model.json; is it a `vp-medical export` folder?")
    record = read_record(folder, domain=DOMAIN, verify=True)
    runtime = record.get("runtime")
    entry = record["files"].get(runtime)
    if entry is None:
        raise UserError(f"{folder / 'model.json'} names the runtime {runtime!r} but lists no such file.")
    return folder / entry["file"]


def load_deployed(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The network, description and recorded inference settings of a deployed model: its folder (the
    runtime `model.json` names), a `model.onnx` (run by onnxruntime) or a TorchScript `model.pt`.

    Raises:
        NotDeployedError: if a file is not a TorchScript model written by `vp-medical export`.
        UserError: if the path is missing, unreadable, or an ONNX model / folder not written by it.
    """
    path = Path(path)
    if path.is_dir():
        path = deployed_model_file(path)
    if path.suffix == ".onnx":
        net = OnnxNetwork(path, threads=torch.get_num_threads())
        description, inference = _parse_metadata(net.runner.metadata.get(METADATA_KEY), path, "ONNX")
        return net, description, inference
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated upstream; we use it on purpose
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning
            )
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # torch raises RuntimeError/ValueError/... for files that are not TorchScript
        raise NotDeployedError(f"{path} is not a TorchScript model.") from None
    text = read_torchscript_metadata(path, [METADATA_KEY]).get(METADATA_KEY)
    description, inference = _parse_metadata(text, path, "TorchScript")
    return net.eval(), description, inference
