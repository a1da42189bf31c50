"""Typed configuration: every `params.yaml` section and CLI override is a pydantic model that
refuses unknown keys, with one error sentence naming the file, the key and the closest valid key.

This module is the only place that turns pydantic's validation errors into `UserError`; it stays
free of torch and of any field library, so `--help` and config checks are fast.

Example:
    >>> class Optim(ConfigModel):
    ...     lr: float = Field(0.1, gt=0)
    >>> parse_config(Optim, {"lr": 0.01}, source="params.yaml:optim").lr
    0.01
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from visionpipes.core.errors import UserError

__all__ = ["ConfigModel", "Field", "closest", "load_config", "parse_config"]

M = TypeVar("M", bound="ConfigModel")


class ConfigModel(BaseModel):
    """Base of every visionpipes config: unknown keys are errors, values are validated on
    assignment too, and `model_dump()` gives back the mapping that `params.yaml` would hold."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def from_params(cls: type[M], data: Any, *, source: str) -> M:
        """`parse_config(cls, data, source=source)`."""
        return parse_config(cls, data, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready Python values."""
        return self.model_dump(mode="json")


def closest(name: str, choices: Any) -> str | None:
    """The choice closest in spelling to `name` (difflib ratio >= 0.6), or None."""
    found = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested model class reached by following `loc` from `model`: field names, and the
    indices or keys of list, tuple, dict and optional fields (`stages.0.width`)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            current = _item_model(current)
            if isinstance(part, int):
                continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _item_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _item_model(annotation: Any) -> Any:
    """`annotation` itself if it is a model class, else the model class inside a list, tuple,
    dict value or `X | None` annotation (or `annotation` unchanged)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _sentence(model: type[BaseModel], err: dict[str, Any], source: str) -> str:
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        valid = list(parent.model_fields) if parent is not None else []
        guess = closest(str(loc[-1]), valid) if loc else None
        hint = f"; did you mean '{guess}'?" if guess else (f" (valid: {', '.join(valid)})" if valid else "")
        return f"{source}: unknown key '{key}'{hint}"
    if kind == "missing":
        return f"{source}: missing key '{key}'."
    if kind in ("model_type", "dict_type") and not loc:
        return f"{source}: expected a mapping of keys, got {type(err.get('input')).__name__}."
    msg = str(err.get("msg", "invalid value"))
    msg = msg[0].lower() + msg[1:] if msg else msg
    if not loc:  # a rule across fields (a model validator): its sentence alone
        return f"{source}: {msg.removeprefix('value error, ')}."
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{source}: key '{key}' = {shown}: {msg}."


def parse_config(model: type[M], data: Any, *, source: str) -> M:
    """Validate `data` (a mapping from `params.yaml`, the CLI, or a saved model) as `model`.

    Args:
        model: a `ConfigModel` subclass.
        data: the mapping (None counts as empty).
        source: where `data` came from, e.g. `params.yaml:train`; named in every error.

    Returns:
        The validated config.

    Raises:
        UserError: one sentence for the first problem: an unknown key (with the closest valid key),
            a missing key, or a value of the wrong type or out of range.
    """
    if data is None:
        data = {}
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: expected a mapping of keys, got {type(data).__name__}.")
    try:
        return model.model_validate(dict(data))
    except ValidationError as err:
        errors = err.errors()
        # unknown keys first: a misspelt key also shows up as its twin's default, never as an error
        errors.sort(key=lambda e: e.get("type") != "extra_forbidden")
        raise UserError(_sentence(model, errors[0], source)) from None


def load_config(
    model: type[M], params: str | os.PathLike | None, section: str, *, required: bool = False
) -> M:
    """Read one top-level section of a `params.yaml` as `model` (`{}` when `params` is None).

    Raises:
        UserError: if the file is missing or malformed, the section is absent and `required`, or
            the section does not validate (see `parse_config`).
    """
    from visionpipes.core.cli_common import params_section

    data = params_section(params, section, required=required)
    name = Path(params).name if params else "params"
    return parse_config(model, data, source=f"{params or name}:{section}")
