"""The deploy-folder layout shared by every domain: a versioned `model.json` record with sha256
checksums of the model files, ONNX/TorchScript metadata, the Markdown model card and the metrics
file that the card quotes.

A deploy folder holds:
    model.json      `{"format_version", "domain", "files": {name: {file, bytes, sha256, ...}}, ...}`
    MODEL_CARD.md   rendered by `ModelCard`
    <model files>   ONNX / TorchScript, each listed in `files` with its checksum
Runtime code (predictors, streams, servers) reads a deploy folder through `read_record`; nothing here
imports torch at module level or any training code.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "model.onnx").write_bytes(b"onnx")
    >>> record = write_record(folder, domain="demo", files={"onnx": file_entry(folder, "model.onnx")})
    >>> read_record(folder, domain="demo")["files"]["onnx"]["bytes"]
    4
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path

__all__ = [
    "CARD_FILE",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "RECORD_FILE",
    "ModelCard",
    "file_entry",
    "file_version",
    "read_metrics",
    "read_onnx_metadata",
    "read_record",
    "read_torchscript_metadata",
    "set_onnx_metadata",
    "set_torchscript_metadata",
    "sha256_file",
    "verify_files",
    "write_record",
]

#: Version of the `model.json` layout; a runtime refuses a record newer than it knows.
FORMAT_VERSION = 1
RECORD_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"
#: The key under which a model file's own metadata (ONNX `metadata_props`, TorchScript extra file)
#: carries the JSON a runtime needs to run it without the deploy folder.
METADATA_KEY = "visionpipes"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_version(path: str | os.PathLike) -> str:
    """A model version derived from a file's bytes: `sha256:<first 16 hex digits>`."""
    return f"sha256:{sha256_file(path)[:16]}"


def file_entry(folder: str | os.PathLike, name: str, **extra: Any) -> dict[str, Any]:
    """The `files` entry of `model.json` for `folder/name`: its name, byte count and sha256, plus
    `extra` (e.g. `max_abs_diff` of its parity check)."""
    path = Path(folder) / name
    if not path.is_file():
        raise UserError(f"model file {path} does not exist.")
    return {"file": name, "bytes": path.stat().st_size, "sha256": sha256_file(path), **extra}


def write_record(
    folder: str | os.PathLike, *, domain: str, files: Mapping[str, Mapping[str, Any]], **fields: Any
) -> dict[str, Any]:
    """Write `folder/model.json` (atomically) and return it.

    Args:
        folder: the deploy folder (or the temporary folder that becomes it).
        domain: `medical`, `driving`, `retail`, ... (checked by `read_record`).
        files: `{role: file_entry(...)}` of every model file the folder holds.
        **fields: the domain's own keys (configuration, parity, training, ...), JSON-serialisable.
    """
    record = {"format_version": FORMAT_VERSION, "domain": domain, "files": dict(files), **fields}
    with atomic_path(Path(folder) / RECORD_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def read_record(
    folder: str | os.PathLike, *, domain: str | None = None, verify: bool = False
) -> dict[str, Any]:
    """Read and check `folder/model.json`.

    Args:
        folder: a deploy folder.
        domain: if given, the record must be of this domain.
        verify: also check every listed file's size and sha256 (`verify_files`).

    Raises:
        UserError: if the folder or record is missing or malformed, of another domain, newer than
            this code, or (with `verify`) a listed file is missing or changed.
    """
    folder = Path(folder)
    path = folder / RECORD_FILE
    if not folder.is_dir():
        raise UserError(f"deploy folder {folder} does not exist.")
    if not path.is_file():
        raise UserError(f"{folder} is not a deploy folder: it has no {RECORD_FILE}.")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise UserError(f"{path} is not a visionpipes model record (no 'files' mapping).")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has format_version {version!r}; this visionpipes reads up to {FORMAT_VERSION}: upgrade it."
        )
    if domain is not None and record.get("domain") != domain:
        raise UserError(f"{path} is a {record.get('domain')!r} model, not a {domain!r} one.")
    if verify:
        verify_files(folder, record)
    return record


def verify_files(folder: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Check that every file the record lists exists with its recorded size and sha256.

    Raises:
        UserError: naming the first file that is missing or changed.
    """
    folder = Path(folder)
    for role, entry in record.get("files", {}).items():
        path = folder / entry["file"]
        if not path.is_file():
            raise UserError(f"deploy folder {folder}: {role} file {entry['file']} is missing.")
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise UserError(f"deploy folder {folder}: {role} file {entry['file']} does not match its checksum.")


def read_metrics(path: str | os.PathLike | None, *, producer: str = "the evaluation stage") -> dict[str, Any]:
    """Read a metrics JSON file (`{}` when `path` is None).

    Args:
        path: the file, or None.
        producer: what writes it, named in the error (e.g. `vp-driving evaluate`).

    Raises:
        UserError: if the file is missing or not a JSON object.
    """
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"metrics file {p} does not exist; run {producer} first.")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"metrics file {p} is not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise UserError(f"metrics file {p} must hold a JSON object.")
    return data


def set_onnx_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Add (or replace) key/value strings in an ONNX file's `metadata_props`, in place, atomically."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({str(k): str(v) for k, v in metadata.items()})
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """An ONNX file's `metadata_props` as a dict.

    Raises:
        UserError: if the file is not a readable ONNX model.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a file that is not ONNX
        raise UserError(f"{path} is not a readable ONNX model ({err}).") from None
    return {p.key: p.value for p in model.metadata_props}


def set_torchscript_metadata(path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Store key/value strings as extra files of a TorchScript archive, in place, atomically."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
        with atomic_path(path) as tmp:
            torch.jit.save(module, str(tmp), _extra_files={str(k): str(v) for k, v in metadata.items()})


def read_torchscript_metadata(path: str | os.PathLike, keys: Iterable[str]) -> dict[str, str]:
    """The extra files `keys` of a TorchScript archive (missing ones are absent from the result)."""
    import zipfile

    names = list(keys)
    out: dict[str, str] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                parts = member.split("/")
                if len(parts) >= 3 and parts[-2] == "extra" and parts[-1] in names:
                    out[parts[-1]] = archive.read(member).decode()
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path} is not a readable TorchScript archive ({err}).") from None
    return out


class ModelCard:
    """A Markdown model card built section by section; `render()` gives the text.

    Example:
        >>> card = ModelCard("Model card: demo", "One line on what it does.")
        >>> card.section("Metrics", table=(["metric", "value"], [["Dice", "0.91"]]))
        >>> print(card.render().splitlines()[0])
        # Model card: demo
    """

    def __init__(self, title: str, summary: str = "") -> None:
        self.lines: list[str] = [f"# {title}", ""]
        if summary:
            self.lines += [summary, ""]

    def section(
        self,
        heading: str,
        *paragraphs: str,
        bullets: Sequence[str] = (),
        table: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None,
        code: tuple[str, str] | None = None,
    ) -> None:
        """Append `## heading` with paragraphs, then bullets, then a table `(header, rows)`, then a
        fenced code block `(language, text)`; each part optional."""
        self.lines += [f"## {heading}", ""]
        for text in paragraphs:
            self.lines += [text, ""]
        if bullets:
            self.lines += [f"- {b}" for b in bullets] + [""]
        if table is not None:
            header, rows = table
            self.lines.append("| " + " | ".join(str(h) for h in header) + " |")
            self.lines.append("| " + " | ".join("---" for _ in header) + " |")
            self.lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            self.lines.append("")
        if code is not None:
            lang, text = code
            self.lines += [f"```{lang}", text.rstrip("\n"), "```", ""]

    def render(self) -> str:
        """The card's Markdown text, ending in one newline."""
        return "\n".join(self.lines).rstrip("\n") + "\n"

    def write(self, folder: str | os.PathLike) -> Path:
        """Write the card as `folder/MODEL_CARD.md` (atomically); return its path."""
        path = Path(folder) / CARD_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(self.render())
        return path


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
