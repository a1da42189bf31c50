"""BDD100K formats: reading the official files, writing them back, lane bits, converters, bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, LANE_BACKGROUND, resolve_det_category
from visionpipes.driving.bdd100k.detection import detections_to_frame
from visionpipes.driving.bdd100k.labels import (
    BDD100KWarning,
    Box2D,
    Frame,
    Label,
    Poly2D,
    frame_to_legacy,
    load_frames,
    parse_frames,
    save_frames,
    save_legacy,
)
from visionpipes.driving.bdd100k.masks import (
    LaneAttributes,
    decode_lane_mask,
    drivable_polygons_to_masks,
    encode_lane_mask,
    encode_lane_value,
    lane_attributes,
    lane_label,
    lane_polygons_to_masks,
    poly2d_points,
    rasterize_drivable,
    rasterize_lanes,
    read_mask,
    write_mask,
)
from visionpipes.driving.bdd100k.yolo import YoloSplit, det_to_yolo
from visionpipes.driving.metrics import frames_to_coco

# ---------------------------------------------------------------------------------------- real files


def test_example_annotation_polygons(bdd_fixtures: Path) -> None:
    frames = load_frames(bdd_fixtures / "labels" / "example_annotation.json")
    assert len(frames) == 1
    frame = frames[0]
    assert frame.name == "b1c81faa-3df17267-0000001.jpg"
    assert frame.video_name == "b1c81faa-3df17267" and frame.frame_index == 0
    assert [label.id for label in frame.labels] == ["a", "b", "a", "c"]
    assert all(label.box2d is None for label in frame.labels)
    poly = frame.labels[1].poly2d[0]
    assert poly.closed and len(poly.vertices) == len(poly.types) == 18 and "C" in poly.types
    assert frame.labels[3].attributes == {"crowd": False, "occluded": True, "truncated": False}
    assert len(frame.labels[3].poly2d) == 5
    # Bezier runs are sampled: more points than vertices, and the polygon is closed
    pts = poly2d_points(poly)
    assert len(pts) > len(poly.vertices) and np.allclose(pts[0], pts[-1])


def test_example_ignore_annotation(bdd_fixtures: Path) -> None:
    frames = load_frames(bdd_fixtures / "labels" / "example_ignore_annotation.json")
    assert [f.name for f in frames] == ["00091078-875c1f73-0000166.jpg", "00091078-875c1f73-0000167.jpg"]
    assert frames[1].labels is None
    other, person = frames[0].labels
    assert (other.category, other.id) == ("other person", "00109430")
    assert resolve_det_category(other.category) == ("pedestrian", True)
    assert resolve_det_category(person.category) == ("pedestrian", False)
    assert person.box2d == Box2D(68.051474568342, 301.7665840944419, 108.7226195720182, 426.2931350128905)

    coco = frames_to_coco(frames)
    assert [im["id"] for im in coco["images"]] == [1, 2]
    anns = coco["annotations"]
    assert [a["category_id"] for a in anns] == [1, 1]
    assert [a["iscrowd"] for a in anns] == [1, 0]  # the ignored class is an ignore region
    _, _, w, h = anns[1]["bbox"]
    assert w == pytest.approx(108.7226195720182 - 68.051474568342 + 1)
    assert anns[1]["area"] == pytest.approx(w * h)


def test_det_json_round_trip(bdd_fixtures: Path, tmp_path: Path) -> None:
    frames = load_frames(bdd_fixtures / "det" / "gt.json")
    assert len(frames) == 202
    save_frames(tmp_path / "again.json", frames)
    assert load_frames(tmp_path / "again.json") == frames
    raw = json.loads((bdd_fixtures / "det" / "gt.json").read_text())
    assert json.loads((tmp_path / "again.json").read_text())[0]["labels"][0] == raw[0]["labels"][0]


def test_legacy_round_trip(tmp_path: Path) -> None:
    frame = Frame(
        name="a.jpg",
        attributes={"weather": "clear", "scene": "city street", "timeofday": "daytime"},
        labels=[
            Label("1", "car", {"occluded": False}, box2d=Box2D(1, 2, 30, 40)),
            Label(
                "2", "lane", {"laneTypes": "single white"}, poly2d=[Poly2D([(0, 0), (5, 5), (9, 9)], "LCL")]
            ),
        ],
        timestamp=10000,
    )
    save_legacy(tmp_path / "a.json", frame)
    raw = json.loads((tmp_path / "a.json").read_text())
    assert raw["frames"][0]["objects"][1]["poly2d"] == [[0, 0, "L"], [5, 5, "C"], [9, 9, "L"]]
    (back,) = load_frames(tmp_path / "a.json")
    assert back == frame
    # a list of legacy images reads the same
    assert parse_frames([frame_to_legacy(frame)] * 2)[1] == frame


def test_predictions_to_det_json(tmp_path: Path) -> None:
    frame = detections_to_frame(
        "x.jpg", [[10, 20, 50, 80], [0, 0, 5, 5]], [0.9, 0.25], [2, 9], video_name="v"
    )
    save_frames(tmp_path / "pred.json", [frame])
    raw = json.loads((tmp_path / "pred.json").read_text())
    assert raw[0]["videoName"] == "v"
    assert raw[0]["labels"][0] == {
        "id": "0",
        "category": "car",
        "box2d": {"x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 80.0},
        "score": 0.9,
    }
    assert raw[0]["labels"][1]["category"] == "traffic sign"
    with pytest.raises(ValueError, match="class ids"):
        detections_to_frame("x.jpg", [[0, 0, 1, 1]], [0.5], [10])


# ---------------------------------------------------------------------------------------- lane masks


def test_lane_bits_round_trip_on_real_masks(bdd_fixtures: Path) -> None:
    seen = set()
    for path in sorted((bdd_fixtures / "lane").glob("*/*.png")):
        mask = read_mask(path, expected_shape=(720, 1280))
        bits = decode_lane_mask(mask)
        assert np.array_equal(encode_lane_mask(bits), mask)
        assert np.all(bits.background[mask == LANE_BACKGROUND] == 1)
        assert np.all(bits.background[mask != LANE_BACKGROUND] == 0)
        seen |= set(np.unique(bits.category[bits.background == 0]).tolist())
    assert seen == {0, 3, 4, 6, 7}  # crosswalk, double yellow, road curb, single white, single yellow


def test_lane_value_bits() -> None:
    assert encode_lane_value(6, style=1, direction=1) == 6 | 16 | 32
    bits = decode_lane_mask(np.array([[54, 255, 7]], dtype=np.uint8))
    assert bits.category.tolist() == [[6, 7, 7]]
    assert bits.style.tolist() == [[1, 1, 0]]
    assert bits.direction.tolist() == [[1, 1, 0]]
    assert bits.background.tolist() == [[0, 1, 0]]
    with pytest.raises(ValueError):
        encode_lane_value(8)


def test_lane_attributes_forms() -> None:
    assert lane_attributes(Label("1", "road curb", {"laneStyle": "dashed"})) == LaneAttributes(4, 1, 0)
    legacy = Label("2", "lane", {"laneTypes": "double yellow", "laneDirection": "vertical"})
    assert lane_attributes(legacy) == LaneAttributes(3, 0, 1)
    assert lane_attributes(Label("3", "lane/crosswalk")) == LaneAttributes(0, 0, 0)
    assert lane_attributes(Label("4", "car")) is None


def test_rasterize_lanes_thickness_and_bits() -> None:
    attrs = LaneAttributes(category=6, style=1, direction=0)
    lane = lane_label("1", [(100, 700), (600, 300)], attrs)
    thin = rasterize_lanes([lane], (1280, 720), thickness=1)
    thick = rasterize_lanes([lane], (1280, 720), thickness=7)
    assert set(np.unique(thin).tolist()) == {attrs.value, LANE_BACKGROUND}
    assert (thick != LANE_BACKGROUND).sum() > 4 * (thin != LANE_BACKGROUND).sum()
    assert thin[500, 350] == attrs.value  # on the line (x = 100 + (700 - y) * 500 / 400)


def test_rasterize_bezier_follows_curve() -> None:
    # a cubic from (100, 600) to (700, 600) with controls at y = 200 bulges up to y = 300
    lane = lane_label("1", [(100, 600), (100, 200), (700, 200), (700, 600)], LaneAttributes(5), types="LCCL")
    mask = rasterize_lanes([lane], (800, 720), thickness=3)
    rows = np.flatnonzero((mask != LANE_BACKGROUND).any(axis=1))
    assert 295 <= rows.min() <= 305  # the curve's apex, not the control points' y = 200
    assert mask[300, 400] == 5


def test_lane_polygons_to_masks(tmp_path: Path) -> None:
    frames = [
        Frame("a.jpg", [lane_label("1", [(0, 700), (640, 360)], LaneAttributes(7, 0, 0))]),
        Frame("b.jpg", [lane_label("2", [(100, 500), (1200, 500)], LaneAttributes(0, 0, 1))]),
        Frame("c.jpg", None),
    ]
    save_frames(tmp_path / "lane_val.json", frames)
    assert lane_polygons_to_masks(tmp_path / "lane_val.json", tmp_path / "masks", thickness=4) == 3
    b = read_mask(tmp_path / "masks" / "b.png", expected_shape=(720, 1280))
    assert b[500, 600] == encode_lane_value(0, 0, 1)
    assert np.all(read_mask(tmp_path / "masks" / "c.png") == LANE_BACKGROUND)


def test_drivable_masks(tmp_path: Path) -> None:
    square = [Poly2D([(10, 10), (50, 10), (50, 50), (10, 50)], "LLLL", True)]
    labels = [
        Label("1", "direct", poly2d=square),
        Label("2", "alternative", poly2d=[Poly2D([(60, 10), (90, 10), (90, 40)], "LLL", True)]),
    ]
    mask = rasterize_drivable(labels, (100, 60))
    assert mask[30, 30] == 0 and mask[15, 85] == 1 and mask[55, 5] == 2
    save_frames(tmp_path / "drivable.json", [Frame("a.jpg", labels)])
    assert drivable_polygons_to_masks(tmp_path / "drivable.json", tmp_path / "m", image_size=(100, 60)) == 1
    assert np.array_equal(read_mask(tmp_path / "m" / "a.png"), mask)


# ---------------------------------------------------------------------------------------- YOLO layout


def _write_images(folder: Path, names: list[str], size: tuple[int, int] = (1280, 720)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cv2.imwrite(str(folder / name), np.zeros((size[1], size[0], 3), dtype=np.uint8))


def test_det_to_yolo_layout(tmp_path: Path) -> None:
    frames = [
        Frame(
            "a.jpg",
            [
                Label("1", "car", box2d=Box2D(0, 0, 640, 360)),
                Label("2", "trailer", box2d=Box2D(10, 10, 20, 20)),  # ignore region: not a YOLO object
                Label("3", "bike", box2d=Box2D(640, 360, 1280, 720)),
            ],
        ),
        Frame("b.jpg", None),
    ]
    save_frames(tmp_path / "det_train.json", frames)
    _write_images(tmp_path / "img", ["a.jpg", "b.jpg"])
    out = tmp_path / "yolo"
    ds = det_to_yolo([YoloSplit("train", tmp_path / "det_train.json", tmp_path / "img")], out)
    assert ds.images == {"train": 2} and ds.boxes == {"train": 2}
    lines = (out / "labels" / "train" / "a.txt").read_text().splitlines()
    assert lines == [
        "2 0.250000 0.250000 0.500000 0.500000",
        f"{DET_CATEGORIES.index('bicycle')} 0.750000 0.750000 0.500000 0.500000",
    ]
    assert (out / "labels" / "train" / "b.txt").read_text() == ""
    assert (out / "images" / "train" / "a.jpg").is_symlink()
    import yaml

    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["train"] == data["val"] == "images/train" and data["names"][9] == "traffic sign"
    # ultralytics itself finds the labels of these images
    from visionpipes.core.settings import apply_runtime_settings
    from visionpipes.driving.ultralytics_env import apply_ultralytics_env

    apply_runtime_settings(threads=1)
    apply_ultralytics_env()
    from ultralytics.data.utils import img2label_paths

    assert img2label_paths([str(out / "images" / "train" / "a.jpg")]) == [
        str(out / "labels" / "train" / "a.txt")
    ]
    # converting again replaces the dataset; a folder of other files is refused
    det_to_yolo([YoloSplit("val", tmp_path / "det_train.json", tmp_path / "img")], out, copy_images=True)
    assert not (out / "images" / "train").exists() and not (out / "images" / "val" / "a.jpg").is_symlink()
    with pytest.raises(UserError, match="refusing"):
        det_to_yolo([YoloSplit("val", tmp_path / "det_train.json", tmp_path / "img")], tmp_path / "img")


def test_det_to_yolo_missing_image(tmp_path: Path) -> None:
    save_frames(tmp_path / "det.json", [Frame("gone.jpg", [Label("1", "car", box2d=Box2D(0, 0, 5, 5))])])
    (tmp_path / "img").mkdir()
    with pytest.raises(UserError, match=r"gone\.jpg.*does not exist"):
        det_to_yolo([YoloSplit("train", tmp_path / "det.json", tmp_path / "img")], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_unknown_category_skipped_and_counted(tmp_path: Path) -> None:
    frames = [
        Frame(
            "a.jpg",
            [
                Label("1", "car", box2d=Box2D(0, 0, 10, 10)),
                Label("2", "spaceship", box2d=Box2D(0, 0, 10, 10)),
                Label("3", "spaceship", box2d=Box2D(0, 0, 10, 10)),
                Label("4", "lane", poly2d=[Poly2D([(0, 0), (1, 1)], "LL")]),  # not a box: not counted
            ],
        )
    ]
    with pytest.warns(BDD100KWarning, match=r"skipped 2 box label\(s\).*'spaceship' x2"):
        coco = frames_to_coco(frames, source="det.json")
    assert len(coco["annotations"]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames_to_coco([Frame("b.jpg", [Label("1", "van", box2d=Box2D(0, 0, 1, 1))])])


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"name": "a.jpg", "labels": []}, "is not a list of frames"),
        (42, "is not a list of frames"),
        ([{"labels": []}], "frame #0 must be an object with a string 'name'"),
        ([{"name": "a.jpg", "labels": {"x": 1}}], "'labels' must be a list"),
        ([{"name": "a.jpg", "labels": [{"id": "7", "category": "car", "box2d": {"x1": 1}}]}], "label id '7'"),
    ],
)
def test_not_a_list_of_frames(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "det.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError, match=match):
        load_frames(path)


def test_unreadable_label_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_frames(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(UserError, match="not valid JSON"):
        load_frames(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("box", "match"),
    [
        ({"x1": 50, "y1": 10, "x2": 40, "y2": 20}, r"x2 \(40\) < x1 \(50\)"),
        ({"x1": 10, "y1": 30, "x2": 40, "y2": 20}, r"y2 \(20\) < y1 \(30\)"),
        ({"x1": 10, "y1": 10, "x2": 1400, "y2": 20}, "outside the 1280x720 image"),
        ({"x1": -30, "y1": 10, "x2": 40, "y2": 20}, "outside the 1280x720 image"),
    ],
)
def test_bad_box_names_frame_and_label(tmp_path: Path, box: dict, match: str) -> None:
    path = tmp_path / "det.json"
    path.write_text(
        json.dumps([{"name": "f.jpg", "labels": [{"id": "l9", "category": "car", "box2d": box}]}])
    )
    with pytest.raises(UserError, match=match) as err:
        load_frames(path)
    assert "frame 'f.jpg'" in str(err.value) and "label id 'l9'" in str(err.value)


def test_bad_poly2d_types(tmp_path: Path) -> None:
    path = tmp_path / "lanes.json"
    poly = {"vertices": [[0, 0], [1, 1]], "types": "L", "closed": False}
    path.write_text(
        json.dumps([{"name": "f.jpg", "labels": [{"id": "3", "category": "lane", "poly2d": [poly]}]}])
    )
    with pytest.raises(UserError, match="one per vertex"):
        load_frames(path)


def test_mask_of_wrong_size_or_dtype(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((720, 1280, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((720, 1280), dtype=np.uint16)).save(tmp_path / "deep.png")
    write_mask(tmp_path / "small.png", np.zeros((360, 640), dtype=np.uint8))
    with pytest.raises(UserError, match="single-channel uint8"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="single-channel uint8"):
        read_mask(tmp_path / "deep.png")
    with pytest.raises(UserError, match="is 640x360, expected 1280x720"):
        read_mask(tmp_path / "small.png", expected_shape=(720, 1280))
    with pytest.raises(UserError, match="2-D uint8"):
        write_mask(tmp_path / "f.png", np.zeros((4, 4), dtype=np.float32))
    assert not (tmp_path / "f.png").exists()
