"""The pieces every `vp-*` CLI shares: reading a section of `--params`, and the `main()` tail."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionpipes.core.cli_common import params_section, run_main
from visionpipes.core.errors import UserError


def test_params_section_without_file_with_and_without_the_section(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 2\nbad: [1, 2]\n")
    assert params_section(None, "train") == {}
    section = params_section(params, "train")
    assert section == {"epochs": 2}
    section["epochs"] = 5  # a copy: the next read is unchanged
    assert params_section(str(params), "train", required=True) == {"epochs": 2}
    assert params_section(params, "eval") == {}
    with pytest.raises(UserError, match=r"has no section 'eval'"):
        params_section(params, "eval", required=True)
    with pytest.raises(UserError, match=rf"^params file {params}: section 'bad' must be a mapping\.$"):
        params_section(params, "bad")
    with pytest.raises(UserError, match="does not exist"):
        params_section(tmp_path / "missing.yaml", "train")


def test_run_main_exits_with_the_verb_code_and_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        run_main(lambda: 3)
    assert done.value.code == 3

    def bad() -> None:
        raise UserError("params.yaml: unknown keys x.")

    with pytest.raises(SystemExit) as done:
        run_main(bad)
    assert done.value.code == 2
    assert capsys.readouterr().err == "error: params.yaml: unknown keys x.\n"
