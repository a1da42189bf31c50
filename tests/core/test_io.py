"""Atomic writes and params.yaml sections: nothing half-written, files get the usual permissions,
one sentence for a bad params file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path, load_params, write_json


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(UserError, match=r"output folder .* does not exist"):
        write_json(tmp_path / "missing" / "x.json", {})


def test_atomic_files_get_the_permissions_open_would_give(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"a": 1})
    (tmp_path / "b.txt").write_text("plain")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode)


def test_atomic_directory_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "deploy"
    target.mkdir()
    (target / "old.txt").write_text("x")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_load_params_sections_and_errors(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  lr: 0.1\nlist: [1]\n")
    assert load_params(params, "train") == {"lr": 0.1}
    assert load_params(params)["list"] == [1]
    with pytest.raises(UserError, match="has no section 'eval'"):
        load_params(params, "eval")
    with pytest.raises(UserError, match="has no section 'list'"):
        load_params(params, "list")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_params(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="does not exist"):
        load_params(tmp_path / "none.yaml")
