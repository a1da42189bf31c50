"""What every `vp-*` command line shares: one section of an optional `--params` file, and the tail of
`main()` (runtime settings, then the verb under `run_cli`).

It must stay free of heavy imports (torch, ultralytics, faiss): every CLI's `--help` goes through it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from visionpipes.core.errors import UserError, run_cli


def params_section(
    params: str | os.PathLike | None, section: str, *, required: bool = False
) -> dict[str, Any]:
    """A copy of one top-level section of an optional `params.yaml` (the `--params` option's file).

    Args:
        params: the params file, or None when `--params` was not given (then the result is `{}`).
        section: the top-level key to read, e.g. `train`.
        required: if True a file without `section` is an error; if False it gives `{}`.

    Returns:
        The section as a new dict (callers may change it).

    Raises:
        UserError: if the file is missing or not YAML, if the section is not a mapping, or if it is
            absent and `required`.

    Example:
        >>> params_section(None, "train")
        {}
    """
    if not params:
        return {}
    from visionpipes.core.io import load_params

    if required:
        return dict(load_params(params, section))
    value = load_params(params).get(section) or {}
    if not isinstance(value, dict):
        raise UserError(f"params file {params}: section '{section}' must be a mapping.")
    return dict(value)


def run_main(run: Callable[[], int | None], *, threads: int | None = None) -> NoReturn:
    """End a console entry point: apply the runtime settings, run the verb, exit with its code.

    `UserError` from `run` becomes one `error:` line and exit code 2 (see `run_cli`).

    Args:
        run: the verb (parsing included, or already parsed); returns an exit code or None for 0.
        threads: CPU threads for torch and onnxruntime, as `apply_runtime_settings` takes them.

    Raises:
        SystemExit: always, with the exit code.
    """
    from visionpipes.core.settings import apply_runtime_settings

    apply_runtime_settings(threads)
    sys.exit(run_cli(run))
