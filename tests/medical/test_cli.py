"""`vp-medical` command line: every verb has --help; the console script is installed and runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from visionpipes.medical import cli


@pytest.mark.parametrize("argv", [["--help"], *[[verb, "--help"] for verb in cli.VERBS]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.run(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vp-medical")
    if argv == ["--help"]:
        assert all(verb in out for verb in cli.VERBS)


def test_unknown_verb_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.run(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script(tmp_path: Path, console_script) -> None:
    script = console_script("vp-medical")
    done = subprocess.run([str(script), "validate", str(tmp_path / "absent")], capture_output=True, text=True)
    assert done.returncode == 2
    assert (
        done.stderr.strip() == f"error: task folder {tmp_path / 'absent'} does not exist or is not a folder."
    )
    assert "Traceback" not in done.stderr
