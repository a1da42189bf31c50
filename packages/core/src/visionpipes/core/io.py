"""File helpers shared by the domains: atomic writes and params.yaml (and its sections as config
dataclasses). Images are read by `visionpipes.core.image`.

Writers never leave a half-written file: they write beside the target, fsync, and rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from visionpipes.core.errors import UserError

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`.

    On an exception the temporary path is removed and `target` is left as it was.

    Raises:
        UserError: if the folder that would hold `target` does not exist.
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"output folder {parent} does not exist (for {target}).")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    if is_dir:
        tmp.unlink()
        tmp.mkdir()
    try:
        yield tmp
        if not is_dir:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if is_dir and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_params(path: str | os.PathLike, section: str | None = None) -> dict[str, Any]:
    """Read a `params.yaml` (or one top-level section of it).

    Raises:
        UserError: if the file is missing, not YAML, or lacks `section`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"params file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"params file {path} must hold a mapping at the top level.")
    if section is None:
        return data
    if section not in data or not isinstance(data[section], dict):
        raise UserError(f"params file {path} has no section '{section}'.")
    return data[section]


def check_known_keys(
    data: Any, known: Collection[str], *, source: str, what: str = "keys", hint: str | None = None
) -> Mapping[str, Any]:
    """Refuse a params mapping that is not a mapping or holds a key outside `known`.

    The message reads `<source>: unknown <what> a, b (known: x, y, z).`; `hint` replaces the text in
    the parentheses, and an empty `hint` drops them.

    Args:
        data: the mapping read from `params.yaml` (or any config mapping).
        known: the keys it may hold.
        source: where `data` came from (a file and section, e.g. `params.yaml:train`), named in errors.
        what: what the keys are called in the message (`keys`, `training keys`, ...).
        hint: text for the parentheses after the unknown keys; None lists `known`, "" shows nothing.

    Returns:
        `data`, unchanged.

    Raises:
        UserError: if `data` is not a mapping, or has a key not in `known`.

    Example:
        >>> check_known_keys({"lr": 0.1}, {"lr", "epochs"}, source="params.yaml:train")
        {'lr': 0.1}
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: expected a mapping of {what}, got {type(data).__name__}.")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        if hint is None:
            hint = f"known: {', '.join(sorted(known))}"
        detail = f" ({hint})" if hint else ""
        raise UserError(f"{source}: unknown {what} {', '.join(unknown)}{detail}.")
    return data


def dataclass_from_params(
    cls: type[T], data: Any, *, source: str, what: str = "keys", hint: str | None = None
) -> T:
    """Build the config dataclass `cls` from a params mapping, refusing unknown and missing keys.

    Values are passed as they are (no type conversion); range checks are the caller's.

    Args:
        cls: a dataclass type.
        data: the mapping read from `params.yaml`; its keys are field names of `cls`.
        source: where `data` came from (a file and section), named in errors.
        what: what the keys are called in errors (`keys`, `training keys`, ...).
        hint: see `check_known_keys`.

    Returns:
        `cls(**data)`.

    Raises:
        UserError: if `data` is not a mapping, has a key that is not a field of `cls`, or lacks a
            field that has no default.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Optim:
        ...     lr: float = 0.1
        >>> dataclass_from_params(Optim, {"lr": 0.01}, source="params.yaml:optim")
        Optim(lr=0.01)
    """
    names = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    check_known_keys(data, names, source=source, what=what, hint=hint)
    required = [
        f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING  # type: ignore[arg-type]
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise UserError(f"{source}: missing {what} {', '.join(missing)}.")
    return cls(**dict(data))
