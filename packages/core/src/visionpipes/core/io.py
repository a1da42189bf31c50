"""File helpers shared by the domains: atomic writes and params.yaml sections. Configs are validated by
`visionpipes.core.config`, images read by `visionpipes.core.image`.

Writers never leave a half-written file: they write beside the target, fsync, and rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from visionpipes.core.errors import UserError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = _read_umask()


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
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp made it 0600; give what open() would
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
