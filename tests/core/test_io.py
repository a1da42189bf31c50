"""params.yaml sections as config dataclasses: unknown, missing and malformed keys are one clear UserError."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from visionpipes.core.errors import UserError
from visionpipes.core.io import check_known_keys, dataclass_from_params, load_params


@dataclass
class Optim:
    lr: float = 0.1
    epochs: int = 3
    milestones: list[int] = field(default_factory=list)


@dataclass
class Named:
    name: str
    size: int = 1


def test_valid_section_builds_the_dataclass(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("optim:\n  lr: 0.01\n  milestones: [2, 4]\n")
    config = dataclass_from_params(Optim, load_params(params, "optim"), source=f"{params}:optim")
    assert config == Optim(lr=0.01, epochs=3, milestones=[2, 4])
    assert dataclass_from_params(Optim, {}, source="s") == Optim()


def test_unknown_key_names_source_key_and_known_keys() -> None:
    with pytest.raises(UserError) as err:
        dataclass_from_params(Optim, {"lr": 0.1, "epoch": 2, "colour": 1}, source="params.yaml:optim")
    assert str(err.value) == "params.yaml:optim: unknown keys colour, epoch (known: epochs, lr, milestones)."


def test_wording_of_the_message_is_the_caller_s() -> None:
    with pytest.raises(UserError, match=r"^p: unknown training keys epoch \(known: epochs, lr, milestones\)\.$"):
        dataclass_from_params(Optim, {"epoch": 2}, source="p", what="training keys")
    with pytest.raises(UserError, match=r"^p: unknown model keys epoch\.$"):
        dataclass_from_params(Optim, {"epoch": 2}, source="p", what="model keys", hint="")
    with pytest.raises(UserError, match=r"^p: unknown keys x \(in search\.proxy\)\.$"):
        check_known_keys({"x": 1}, {"y"}, source="p", hint="in search.proxy")


@pytest.mark.parametrize("data", [None, [1, 2], "lr: 0.1", 3])
def test_not_a_mapping_is_a_user_error(data: object) -> None:
    with pytest.raises(UserError, match=rf"^params.yaml:optim: expected a mapping of keys, got {type(data).__name__}\.$"):
        dataclass_from_params(Optim, data, source="params.yaml:optim")


def test_missing_required_field_and_non_string_keys() -> None:
    with pytest.raises(UserError, match=r"^p: missing keys name\.$"):
        dataclass_from_params(Named, {"size": 2}, source="p")
    assert dataclass_from_params(Named, {"name": "a"}, source="p") == Named("a", 1)
    with pytest.raises(UserError, match=r"unknown keys 1, b"):  # YAML allows int keys; sorting must not crash
        check_known_keys({1: "x", "b": 2}, {"a"}, source="p")
    assert check_known_keys({"a": 1}, {"a"}, source="p") == {"a": 1}
