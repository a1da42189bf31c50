"""`vp-driving synth`: a complete sample in the official layout, readable by the format's own readers."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest

from visionpipes.core.errors import UserError
from visionpipes.driving import cli
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, LANE_CATEGORIES
from visionpipes.driving.bdd100k.labels import load_frames
from visionpipes.driving.bdd100k.masks import (
    decode_lane_mask,
    drivable_polygons_to_masks,
    lane_attributes,
    lane_polygons_to_masks,
    read_mask,
)
from visionpipes.driving.bdd100k.yolo import YoloSplit, det_to_yolo
from visionpipes.driving.metrics import evaluate_drivable, evaluate_lanes
from visionpipes.driving.synth.sample import SynthConfig, write_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bdd"
    config = SynthConfig(images=5, seed=7, cameras=2, video_frames=6, video_size=(192, 108))
    summary = write_sample(out, config)
    assert summary["images"] == {"train": 4, "val": 1}
    return out


def test_layout(sample: Path) -> None:
    for split, count in (("train", 4), ("val", 1)):
        images = sorted((sample / "images" / "100k" / split).glob("*.jpg"))
        assert len(images) == count
        stems = [p.stem for p in images]
        for folder in ("lane", "drivable"):
            assert (
                sorted(p.stem for p in (sample / "labels" / folder / "masks" / split).glob("*.png")) == stems
            )
        assert cv2.imread(str(images[0])).shape == (720, 1280, 3)
        det = load_frames(sample / "labels" / "det_20" / f"det_{split}.json")  # boxes checked inside 1280x720
        assert sorted(Path(f.name).stem for f in det) == stems
        assert all(f.attributes["timeofday"] for f in det)
    summary = json.loads((sample / "synth.json").read_text())
    assert summary["config"]["seed"] == 7


def test_masks_match_polygons_through_the_converter(sample: Path, tmp_path: Path) -> None:
    """The shipped masks are what the polygon JSON converts to (the official `to_mask` route)."""
    lanes = sample / "labels" / "lane"
    drivable = sample / "labels" / "drivable"
    lane_polygons_to_masks(lanes / "polygons" / "lane_train.json", tmp_path / "lane", thickness=8)
    drivable_polygons_to_masks(drivable / "polygons" / "drivable_train.json", tmp_path / "drivable")
    assert evaluate_lanes(lanes / "masks" / "train", tmp_path / "lane").F1_pix1 == 100.0
    assert evaluate_drivable(drivable / "masks" / "train", tmp_path / "drivable").mIoU == 100.0
    for path in (lanes / "masks" / "train").glob("*.png"):
        mask = read_mask(path, expected_shape=(720, 1280))
        bits = decode_lane_mask(mask)
        assert (bits.background == 0).sum() > 1000  # every scene has its two curbs at least
        assert np.array_equal(mask, read_mask(tmp_path / "lane" / path.name))


# Independent geometry: the label JSON read with `json`, curves evaluated with Bernstein polynomials
# (the package uses de Casteljau), lanes checked by distance to their centre line (the package draws
# thick cv2 polylines), areas filled by matplotlib's point-in-polygon test (the package: cv2.fillPoly).
# The lane byte is spelled out from BDD100K's documentation, not from the package's encoder.
_BDD_LANE_TYPES = (
    "crosswalk", "double other", "double white", "double yellow",
    "road curb", "single other", "single white", "single yellow",
)  # fmt: skip


def _documented_lane_byte(attributes: dict) -> int:
    """Bits 0-2 category, bit 3 background (clear), bit 4 dashed, bit 5 vertical (BDD100K docs)."""
    category = _BDD_LANE_TYPES.index(attributes["laneTypes"])
    return (
        category
        | (attributes["laneStyle"] == "dashed") << 4
        | (attributes["laneDirection"] == "vertical") << 5
    )


def _dense_centre_line(vertices: list, types: str, step: float = 0.25) -> np.ndarray:
    """Points every <= `step` px along a poly2d: `L` vertices joined by segments, an `L C C L` run a cubic."""
    from math import comb

    pts = np.asarray(vertices, dtype=np.float64)
    pieces, i = [], 0
    while i < len(pts) - 1:
        j = i + 1
        while types[j] == "C":
            j += 1
        control = pts[i : j + 1]
        degree = len(control) - 1
        t = np.linspace(0.0, 1.0, 4 * int(np.hypot(*np.diff(control, axis=0).T).sum() / step) + 2)[:, None]
        bernstein = np.stack(
            [comb(degree, k) * t[:, 0] ** k * (1 - t[:, 0]) ** (degree - k) for k in range(degree + 1)], 1
        )
        curve = bernstein @ control
        assert np.hypot(*np.diff(curve, axis=0).T).max() <= step
        pieces.append(curve)
        i = j
    return np.concatenate(pieces)


def test_lane_masks_follow_the_labelled_centre_lines(sample: Path) -> None:
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree

    half_width = 8 / 2  # SynthConfig.lane_thickness of the fixture
    frames = json.loads((sample / "labels" / "lane" / "polygons" / "lane_train.json").read_text())
    assert frames
    for frame in frames:
        mask = cv2.imread(
            str(sample / "labels" / "lane" / "masks" / "train" / (Path(frame["name"]).stem + ".png")),
            cv2.IMREAD_UNCHANGED,
        )
        assert mask.shape == (720, 1280) and mask.dtype == np.uint8
        lines = [(_dense_centre_line(p["vertices"], p["types"]), _documented_lane_byte(lab["attributes"]))
                 for lab in frame["labels"] for p in lab["poly2d"]]  # fmt: skip
        assert len(lines) >= 2
        centre = np.ones(mask.shape, bool)  # False on the pixels a centre line passes through
        for points, _ in lines:
            xy = np.round(points).astype(int)
            keep = (xy[:, 0] >= 0) & (xy[:, 0] < 1280) & (xy[:, 1] >= 0) & (xy[:, 1] < 720)
            centre[xy[keep, 1], xy[keep, 0]] = False
        distance = distance_transform_edt(centre)
        foreground = (mask & 0b1000) == 0
        assert foreground[distance <= half_width - 1.5].all(), "a pixel on a lane's centre line is background"
        assert (distance[foreground] <= half_width + 1.5).all(), (
            "a lane pixel lies far from every labelled lane"
        )
        # Each lane's byte on its own centre line, away from the lanes drawn after it (they overwrite).
        checked = 0
        for index, (points, byte) in enumerate(lines):
            inside = points[
                (points[:, 0] >= 0) & (points[:, 0] <= 1279) & (points[:, 1] >= 0) & (points[:, 1] <= 719)
            ]
            later = [p for p, _ in lines[index + 1 :]]
            if later:
                near, _ = cKDTree(np.concatenate(later)).query(inside)
                inside = inside[near > 2 * half_width + 2]
            xy = np.round(inside[::20]).astype(int)
            assert (mask[xy[:, 1], xy[:, 0]] == byte).all(), (
                f"lane {index} of {frame['name']} has the wrong byte"
            )
            checked += len(xy)
        assert checked > 200


def test_drivable_masks_fill_the_labelled_areas(sample: Path) -> None:
    from matplotlib.path import Path as Polygon
    from scipy.ndimage import distance_transform_edt

    frames = json.loads((sample / "labels" / "drivable" / "polygons" / "drivable_train.json").read_text())
    ys, xs = np.mgrid[0:720, 0:1280]
    pixels = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    for frame in frames:
        mask = cv2.imread(
            str(sample / "labels" / "drivable" / "masks" / "train" / (Path(frame["name"]).stem + ".png")),
            cv2.IMREAD_UNCHANGED,
        )
        expected = np.full(mask.shape, 2, np.uint8)  # BDD100K drivable: 0 direct, 1 alternative, 2 background
        edges = np.ones(mask.shape, bool)
        for label in frame["labels"]:
            value = {"direct": 0, "alternative": 1}[label["category"]]
            for poly in label["poly2d"]:
                assert set(poly["types"]) == {"L"} and poly["closed"]
                vertices = np.asarray(poly["vertices"], np.float64)
                expected[Polygon(vertices).contains_points(pixels).reshape(mask.shape)] = value
                ring = np.concatenate([vertices, vertices[:1]])
                for a, b in pairwise(ring):
                    t = np.linspace(0, 1, int(np.hypot(*(b - a)) * 4) + 2)[:, None]
                    xy = np.round(a + t * (b - a)).astype(int)
                    ok = (xy[:, 0] >= 0) & (xy[:, 0] < 1280) & (xy[:, 1] >= 0) & (xy[:, 1] < 720)
                    edges[xy[ok, 1], xy[ok, 0]] = False
        assert (expected != 2).sum() > 10_000
        differ = mask != expected
        # Only pixels on a polygon's boundary may go either way (cv2 and matplotlib round edges differently).
        assert (distance_transform_edt(edges)[differ] <= 1.5).all()
        assert differ.sum() < 0.02 * (expected != 2).sum()


def _x_at_rows(points: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x of a lane line (dense points, y monotonic along it) at the given rows; held for one row past
    its ends (a filled polygon's last row rounds either way), NaN further out."""
    order = np.argsort(points[:, 1])
    y, x = points[order, 1], points[order, 0]
    out = np.interp(rows, y, x)
    out[(rows < y[0] - 1) | (rows > y[-1] + 1)] = np.nan
    return out


def test_drivable_areas_lie_between_the_labelled_lane_lines(sample: Path) -> None:
    """Independent geometry: the lane lines of the lane JSON (Bernstein curves, as above) and the boxes
    of the det JSON. The ego lane (the one under the image centre at the bottom row) is direct, whole
    and only between its two lines, up to the vehicle ahead; the lanes beside it are alternative; the
    sky and every other lane are background. Pixels within 2 px of a line may go either way."""
    from scipy.ndimage import distance_transform_edt

    lane_frames = json.loads((sample / "labels" / "lane" / "polygons" / "lane_train.json").read_text())
    det = {f.name: f for f in load_frames(sample / "labels" / "det_20" / "det_train.json")}
    rows = np.arange(720, dtype=np.float64)
    cols = np.arange(1280)[None, :]
    vehicles_checked = 0
    for frame in lane_frames:
        mask = cv2.imread(
            str(sample / "labels" / "drivable" / "masks" / "train" / (Path(frame["name"]).stem + ".png")),
            cv2.IMREAD_UNCHANGED,
        )
        assert mask.shape == (720, 1280) and set(np.unique(mask)) <= {0, 1, 2}
        assert (mask[: int(0.40 * 720)] == 2).all(), "the sky (above the lowest horizon) is drivable"
        assert mask[719, 640] == 0, "the road under the camera is not direct"
        dense = [
            _dense_centre_line(p["vertices"], p["types"])
            for lab in frame["labels"]
            if lab["attributes"]["laneDirection"] == "parallel"  # not the crosswalk edges
            for p in lab["poly2d"]
        ]
        off_line = np.ones(mask.shape, bool)
        for points in dense:
            xy = np.round(points).astype(int)
            keep = (xy[:, 0] >= 0) & (xy[:, 0] < 1280) & (xy[:, 1] >= 0) & (xy[:, 1] < 720)
            off_line[xy[keep, 1], xy[keep, 0]] = False
        clear = distance_transform_edt(off_line) > 2.0  # pixels more than 2 px from every line
        lines = sorted((_x_at_rows(points, rows)[:, None] for points in dense), key=lambda x: x[719, 0])
        ego = next(k for k in range(len(lines) - 1) if lines[k][719] < 640 < lines[k + 1][719])

        def lane(k: int, lines: list[np.ndarray] = lines) -> np.ndarray:
            """Pixels between line k and line k + 1 (none for a lane the road does not have)."""
            if k < 0 or k + 1 >= len(lines):
                return np.zeros((720, 1280), bool)
            with np.errstate(invalid="ignore"):
                return (cols >= lines[k]) & (cols <= lines[k + 1])

        direct = mask == 0
        assert not (direct & ~lane(ego) & clear).any(), "a direct pixel outside the ego lane"
        beside = lane(ego - 1) | lane(ego + 1)
        assert not ((mask == 1) & ~beside & clear).any(), "an alternative pixel outside the lanes beside"
        direct_rows = np.flatnonzero(direct.any(1))
        top = direct_rows.min()
        assert np.array_equal(direct_rows, np.arange(top, 720)), "the direct area has a gap between rows"
        inner = lane(ego) & clear
        assert direct[top + 2 :][inner[top + 2 :]].all(), "a hole in the ego lane's direct area"
        for label in det[frame["name"]].labels:  # an area ends at the vehicle ahead in its lane
            if label.category not in ("car", "truck") or label.attributes["truncated"]:
                continue
            cx, y2 = round((label.box2d.x1 + label.box2d.x2) / 2), round(label.box2d.y2)
            for k, value in ((ego, 0), (ego - 1, 1), (ego + 1, 1)):
                if (lane(k) & clear)[y2, cx]:
                    beyond = mask[: y2 - 2][(lane(k) & clear)[: y2 - 2]]
                    assert not (beyond == value).any(), (
                        f"the drivable area of lane {k} runs on past the {label.category} in it"
                    )
                    vehicles_checked += 1
    assert vehicles_checked >= 2


def test_videos(sample: Path) -> None:
    for cam in range(2):
        cap = cv2.VideoCapture(str(sample / "videos" / f"cam{cam}.mp4"))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        cap.release()
        assert len(frames) == 6 and frames[0].shape == (108, 192, 3)
        assert not np.array_equal(frames[0], frames[-1])  # the scene moves
    assert not (sample / "videos" / "cam2.mp4").exists()


def test_sample_converts_to_yolo(sample: Path, tmp_path: Path) -> None:
    splits = [
        YoloSplit(s, sample / "labels" / "det_20" / f"det_{s}.json", sample / "images" / "100k" / s)
        for s in ("train", "val")
    ]
    ds = det_to_yolo(splits, tmp_path / "yolo")
    assert ds.images == {"train": 4, "val": 1} and ds.boxes["train"] > 0


def test_classes_and_lane_kinds_all_appear(tmp_path: Path) -> None:
    config = SynthConfig(images=40, seed=1, cameras=0, image_size=(320, 180), lane_thickness=2)
    write_sample(tmp_path / "s", config)
    det = Counter()
    lanes: set[tuple[int, int, int]] = set()
    for split in ("train", "val"):
        for frame in load_frames(
            tmp_path / "s" / "labels" / "det_20" / f"det_{split}.json", image_size=(320, 180)
        ):
            det.update(label.category for label in frame.labels)
        for frame in load_frames(tmp_path / "s" / "labels" / "lane" / "polygons" / f"lane_{split}.json"):
            for label in frame.labels:
                a = lane_attributes(label)
                lanes.add((a.category, a.style, a.direction))
    expected = {
        "car",
        "truck",
        "pedestrian",
        "rider",
        "bicycle",
        "motorcycle",
        "traffic light",
        "traffic sign",
    }
    assert set(det) == expected and set(det) <= set(DET_CATEGORIES)
    assert {c for c, _, _ in lanes} == set(range(len(LANE_CATEGORIES)))
    assert {s for _, s, _ in lanes} == {0, 1} and {d for _, _, d in lanes} == {0, 1}


def test_same_seed_same_labels(tmp_path: Path) -> None:
    config = SynthConfig(images=3, seed=11, cameras=0, image_size=(256, 144))
    write_sample(tmp_path / "a", config)
    write_sample(tmp_path / "b", config)
    for rel in (
        "labels/det_20/det_train.json",
        "labels/lane/polygons/lane_val.json",
        "labels/drivable/polygons/drivable_train.json",
    ):
        assert (tmp_path / "a" / rel).read_text() == (tmp_path / "b" / rel).read_text()
    write_sample(tmp_path / "a", SynthConfig(images=2, seed=12, cameras=0, image_size=(256, 144)))  # replaced
    assert len(list((tmp_path / "a" / "images" / "100k" / "train").glob("*.jpg"))) == 1


def test_bad_synth_requests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="refusing to overwrite"):
        write_sample(tmp_path / "mine", SynthConfig(images=1, cameras=0))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as exc:
        cli.main(["synth", str(tmp_path / "x"), "--images", "0"])
    assert exc.value.code == 2 and "vp-driving synth: key 'images' = 0" in capsys.readouterr().err


def test_synth_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "synth",
                str(tmp_path / "s"),
                "--images",
                "2",
                "--seed",
                "3",
                "--cameras",
                "1",
                "--video-frames",
                "2",
            ]
        )
    assert exc.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == {"train": 1, "val": 1} and summary["videos"] == ["videos/cam0.mp4"]
    assert (tmp_path / "s" / "videos" / "cam0.mp4").stat().st_size > 0
