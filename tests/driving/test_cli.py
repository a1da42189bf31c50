"""`vp-driving`: exit codes, JSON output, one-line errors, and no heavy import at start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from visionpipes.driving import cli
from visionpipes.driving.bdd100k.labels import Box2D, Frame, Label, save_frames
from visionpipes.driving.bdd100k.masks import LaneAttributes, lane_label, read_mask


def _main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return int(exc.value.code or 0)


def test_eval_det_prints_the_12_numbers(
    bdd_fixtures: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    det = bdd_fixtures / "det"
    code = _main(
        [
            "eval-det",
            "--gt",
            str(det / "gt.json"),
            "--pred",
            str(det / "pred.json"),
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == [
        "AP",
        "AP_50",
        "AP_75",
        "AP_small",
        "AP_medium",
        "AP_large",
        "AR_max_1",
        "AR_max_10",
        "AR_max_100",
        "AR_small",
        "AR_medium",
        "AR_large",
    ]
    assert result["AP_50"] == pytest.approx(0.553239004090397)
    assert json.loads((tmp_path / "m.json").read_text()) == result


def test_eval_lanes_prints_scores(bdd_fixtures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lane = bdd_fixtures / "lane"
    assert _main(["eval-lanes", "--gt", str(lane / "gts"), "--pred", str(lane / "res")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["F1_pix2"] == pytest.approx(92.22807981, abs=1e-6)
    assert set(result["sub_tasks"]) == {"direction", "style", "category"}
    assert result["classes"]["category"]["road curb"]["F1_pix1"] == pytest.approx(71.02916505, abs=1e-6)


def test_eval_drivable_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from visionpipes.driving.bdd100k.masks import write_mask

    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
        write_mask(tmp_path / folder / "a.png", np.zeros((8, 8), dtype=np.uint8))
    assert _main(["eval-drivable", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 0
    assert json.loads(capsys.readouterr().out)["mIoU"] == 100.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval-det", "--gt", "{tmp}/nope.json", "--pred", "{tmp}/nope.json"], "does not exist"),
        (["eval-det", "--gt", "{tmp}/obj.json", "--pred", "{tmp}/obj.json"], "is not a list of frames"),
        (["eval-lanes", "--gt", "{tmp}", "--pred", "{tmp}"], "holds no .png masks"),
        (["eval-lanes", "--gt", "{tmp}", "--pred", "{tmp}/nope"], "prediction folder"),
        (["convert", "yolo", "--out", "{tmp}/y"], "needs --root"),
        (
            ["convert", "lanes", "--polygons", "{tmp}/obj.json", "--out", "{tmp}/m", "--thickness", "0"],
            "thickness",
        ),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "obj.json").write_text('{"name": "a.jpg"}')
    code = _main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_category_warning_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = [
        Frame(
            "a.jpg", [Label("1", "car", box2d=Box2D(0, 0, 9, 9)), Label("2", "ufo", box2d=Box2D(0, 0, 9, 9))]
        )
    ]
    save_frames(tmp_path / "gt.json", frames)
    frames[0].labels[0].score = 0.5
    save_frames(tmp_path / "pred.json", frames[:1])
    assert _main(["eval-det", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "skipped 1 box label(s) of unknown categories ('ufo' x1)" in err


def test_convert_lanes_and_yolo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_frames(
        tmp_path / "lane_val.json", [Frame("a.jpg", [lane_label("1", [(0, 0), (90, 50)], LaneAttributes(2))])]
    )
    argv = [
        "convert",
        "lanes",
        "--polygons",
        str(tmp_path / "lane_val.json"),
        "--out",
        str(tmp_path / "masks"),
        "--width",
        "100",
        "--height",
        "60",
        "--thickness",
        "2",
    ]
    assert _main(argv) == 0
    assert json.loads(capsys.readouterr().out)["masks"] == 1
    assert read_mask(tmp_path / "masks" / "a.png", expected_shape=(60, 100))[0, 0] == 2

    root = tmp_path / "bdd"
    (root / "labels" / "det_20").mkdir(parents=True)
    (root / "images" / "100k" / "val").mkdir(parents=True)
    (root / "images" / "100k" / "val" / "a.jpg").write_bytes(b"\xff\xd8")
    save_frames(
        root / "labels" / "det_20" / "det_val.json",
        [Frame("a.jpg", [Label("1", "bus", box2d=Box2D(0, 0, 99, 59))])],
    )
    assert (
        _main(
            [
                "convert",
                "yolo",
                "--root",
                str(root),
                "--splits",
                "val",
                "--out",
                str(tmp_path / "yolo"),
                "--width",
                "100",
                "--height",
                "60",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["boxes"] == {"val": 1}
    assert (tmp_path / "yolo" / "labels" / "val" / "a.txt").read_text().startswith("4 ")


def test_help_of_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--help"],
        ["eval-det", "--help"],
        ["eval-lanes", "--help"],
        ["eval-drivable", "--help"],
        ["convert", "--help"],
        ["convert", "yolo", "--help"],
        ["convert", "lanes", "--help"],
        ["synth", "--help"],
    ):
        assert _main(argv) == 0
    assert "eval-det" in capsys.readouterr().out


def test_cli_module_imports_no_torch_or_ultralytics() -> None:
    code = (
        "import sys, visionpipes.driving.cli; print(any(m in sys.modules for m in ('torch', 'ultralytics')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_console_script_exit_code(tmp_path: Path, console_script) -> None:
    exe = console_script("vp-driving")
    (tmp_path / "x.json").write_text("[1, 2]")
    bad = subprocess.run(
        [str(exe), "eval-det", "--gt", str(tmp_path / "x.json"), "--pred", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and "frame #0" in bad.stderr and "Traceback" not in bad.stderr
