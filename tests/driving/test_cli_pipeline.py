"""The pipeline verbs of `vp-driving`: `--help` on each, and bad input answered with one sentence."""

from __future__ import annotations

import pytest

from visionpipes.driving import cli

VERBS = ("data", "prepare", "train-det", "train-lanes", "predict", "evaluate", "export", "deploy")


def _main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return int(exc.value.code or 0)


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_pipeline_verbs(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main([verb, "--help"]) == 0
    assert "usage: vp-driving " + verb in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "--out", "{tmp}/raw", "--path", "{tmp}/nope"], "is not a folder"),
        (["data", "--out", "{tmp}/raw", "--params", "{tmp}/params.yaml"], "params.yaml:data: unknown key 'colour'"),
        (["prepare", "--raw", "{tmp}/raw", "--out", "{tmp}/p"], "run `vp-driving data` first"),
        (["train-det", "--dataset", "{tmp}/d.json", "--out", "{tmp}/m"], "run `vp-driving prepare` first"),
        (["train-det", "--dataset", "{tmp}/d.json", "--out", "{tmp}/m", "--imgsz", "100"], "multiple of 32"),
        (["train-lanes", "--dataset", "{tmp}/d.json", "--out", "{tmp}/m", "--params", "{tmp}/params.yaml"], "params.yaml:lanes: key 'model.arch' = 'Nope'"),
        (["predict", "{tmp}", "--out", "{tmp}/o"], "needs a detector"),
        (["predict", "{tmp}/none.jpg", "--out", "{tmp}/o", "--lanes", "x.pt"], "does not exist"),
        (["predict", "{tmp}", "--out", "{tmp}/o", "--det", "{tmp}/w.pt"], "never downloaded"),
        (
            ["evaluate", "--dataset", "{tmp}/d.json", "--metrics", "{tmp}/m.json", "--plots", "{tmp}/p",
             "--predictions", "{tmp}/q"],
            "run `vp-driving prepare` first",
        ),
        (["export", "--out", "{tmp}/o"], "needs a detector"),
        (["deploy", "--out", "{tmp}/o", "--lanes", "{tmp}/l.pt", "--metrics", "{tmp}/m.json"], "metrics file"),
        (["deploy", "--out", "{tmp}/o", "--lanes", "{tmp}/l.pt"], "lane model"),
    ],
)
def test_bad_input_is_one_sentence(
    tmp_path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "params.yaml").write_text(
        "data:\n  colour: red\nlanes:\n  model:\n    arch: Nope\n"
    )
    (tmp_path / "a.jpg").write_bytes(b"")
    assert _main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "raw").exists()
