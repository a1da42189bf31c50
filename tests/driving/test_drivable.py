"""Drivable area end to end: the official mask PNGs read and written (`bdd100k.drivable`), the polygon
JSON rasterised, the masks recorded by `prepare`, and the official IoU of predicted masks
(`drivable_eval.evaluate_drivable`, `vp-driving evaluate --drivable-pred`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpipes.core.errors import UserError
from visionpipes.driving import cli
from visionpipes.driving.bdd100k.drivable import (
    DRIVABLE_COLORS,
    drivable_colormap,
    drivable_masks_from_polygons,
    read_drivable_mask,
    write_drivable_mask,
)
from visionpipes.driving.drivable_eval import evaluate_drivable
from visionpipes.driving.metrics import drivable_histogram, drivable_scores
from visionpipes.driving.prepare import DataConfig, PrepareConfig, load_manifest, obtain_data, prepare_dataset

H, W = 720, 1280  # BDD100K; `prepare` draws masks from polygons at this size


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drivable") / "raw"
    obtain_data(DataConfig(synth={"images": 4, "seed": 5, "val_fraction": 0.5, "cameras": 0}), out)
    return out


@pytest.fixture(scope="module")
def prepared(raw: Path) -> Path:
    out = raw.parent / "prepared"
    prepare_dataset(raw, out)
    return out / "dataset.json"


def _toolkit_iou(gts: list[np.ndarray], preds: list[np.ndarray]) -> dict[str, float]:
    """IoU per class as `bdd100k/eval/seg.py` defines it, spelled out: ground-truth background pixels are
    not counted; over the remaining pixels IoU_k = |gt=k & pred=k| / |gt=k | pred=k|, in percent."""
    gt = np.concatenate([g.ravel() for g in gts]).astype(np.int64)
    pred = np.concatenate([p.ravel() for p in preds]).astype(np.int64)
    keep = gt != 2
    gt, pred = gt[keep], pred[keep]
    out = {}
    for k, name in enumerate(("direct", "alternative")):
        union = ((gt == k) | (pred == k)).sum()
        out[name] = 100.0 * ((gt == k) & (pred == k)).sum() / union if union else 0.0
    return out


# ------------------------------------------------------------------------------------- reader/writer


def test_write_read_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, size=(37, 53))  # int64: the writer takes any integer array in {0, 1, 2}
    path = tmp_path / "new" / "folder" / "abc.png"  # folders are created
    write_drivable_mask(path, mask)
    with Image.open(path) as img:  # the official format: one 8-bit channel
        assert img.mode == "L" and img.size == (53, 37)
        assert np.array_equal(np.asarray(img), mask)
    back = read_drivable_mask(path, expected_shape=(37, 53))
    assert back.dtype == np.uint8 and np.array_equal(back, mask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["abc.png"]  # no temporary file left behind
    # a palette PNG whose indices are the values reads the same
    img = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
    img.save(tmp_path / "palette.png")
    assert np.array_equal(read_drivable_mask(tmp_path / "palette.png"), mask)


def test_colormap_uses_the_toolkit_colours() -> None:
    mask = np.array([[0, 1], [2, 0]], np.uint8)
    rgb = drivable_colormap(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (
        tuple(rgb[0, 0]) == (219, 94, 86)
        and tuple(rgb[0, 1]) == (86, 211, 219)
        and tuple(rgb[1, 0]) == (0, 0, 0)
    )
    assert DRIVABLE_COLORS[2] == (0, 0, 0)


def test_bad_mask_files_name_the_file(tmp_path: Path) -> None:
    # as in `vp-driving`: ultralytics is imported, and its patch of PIL's Image.open tries to install
    # pi-heif for a file PIL cannot identify (a ModuleNotFoundError offline, not our error)
    import ultralytics.utils.patches  # noqa: F401

    good = np.zeros((4, 6), np.uint8)
    (tmp_path / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "rgb.png")  # a colormap, not a mask
    Image.fromarray(np.zeros((4, 6), np.uint16)).save(tmp_path / "deep.png")  # 16-bit
    Image.fromarray(np.full((4, 6), 255, np.uint8)).save(tmp_path / "ignore.png")
    Image.fromarray(good).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("not a png")
    cases = [
        ("rgb.png", {}, r"rgb\.png must be a one-channel 8-bit PNG, got mode RGB .*labels/drivable/masks"),
        ("deep.png", {}, r"deep\.png must be a one-channel 8-bit PNG, got mode I;16"),
        (
            "ignore.png",
            {},
            r"ignore\.png holds value\(s\) 255; a BDD100K drivable mask holds only 0 \(direct\)",
        ),
        ("small.png", {"expected_shape": (720, 1280)}, r"small\.png is 6x4, expected 1280x720"),
        ("text.png", {}, r"text\.png is not a PNG file"),
        ("truncated.png", {}, r"truncated\.png is not a readable image"),
        ("missing.png", {}, r"missing\.png does not exist"),
    ]
    for name, kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            read_drivable_mask(tmp_path / name, **kwargs)
    for mask, message in [
        (np.full((4, 6), 3), r"out\.png holds value\(s\) 3"),
        (np.full((4, 6), -1), r"out\.png holds value\(s\) -1"),
        (np.zeros((4, 6), np.float32), r"out\.png must be a 2-D integer array, got dtype float32"),
        (
            np.zeros((4, 6, 3), np.uint8),
            r"out\.png must be a 2-D integer array, got dtype uint8 and shape \(4, 6, 3\)",
        ),
    ]:
        with pytest.raises(UserError, match=message):
            write_drivable_mask(tmp_path / "out.png", mask)
    assert not (tmp_path / "out.png").exists()


# ------------------------------------------------------------------------------------------ polygons


def test_polygons_rasterise_to_the_sample_masks(raw: Path) -> None:
    """The official JSON of the sample rasterises to its official masks (the same rasteriser: exact)."""
    for split in ("train", "val"):
        json_path = raw / "labels" / "drivable" / "polygons" / f"drivable_{split}.json"
        masks = drivable_masks_from_polygons(json_path, H, W)
        names = [frame["name"] for frame in json.loads(json_path.read_text())]
        assert sorted(masks) == sorted(names) and len(masks) == 2
        for name, mask in masks.items():
            shipped = read_drivable_mask(
                raw / "labels" / "drivable" / "masks" / split / f"{Path(name).stem}.png"
            )
            assert mask.shape == (H, W) and mask.dtype == np.uint8
            assert np.array_equal(mask, shipped)
            assert (mask == 0).sum() > 1000  # every scene has its ego lane
        one = drivable_masks_from_polygons(json_path, H, W, names=[names[1]])
        assert list(one) == [names[1]] and np.array_equal(one[names[1]], masks[names[1]])


def test_polygon_categories_and_order(tmp_path: Path) -> None:
    """The category spellings of BDD100K (toolkit, Scalabel `area/*`, legacy `drivable area` + areaType),
    later labels over earlier ones, other categories ignored; checked away from the polygon edges."""

    def rect(x1: int, y1: int, x2: int, y2: int) -> dict:
        return {"vertices": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], "types": "LLLL", "closed": True}

    frames = [
        {
            "name": "a.jpg",
            "labels": [
                {"id": "0", "category": "area/alternative", "poly2d": [rect(0, 0, 40, 20)]},
                {"id": "1", "category": "area/drivable", "poly2d": [rect(20, 5, 60, 15)]},
                {"id": "2", "category": "car", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}},
                {"id": "3", "category": "lane/single white", "poly2d": [rect(50, 20, 70, 30)]},
            ],
        },
        {
            "name": "b.jpg",
            "labels": [
                {
                    "id": "0",
                    "category": "drivable area",
                    "attributes": {"areaType": "alternative"},
                    "poly2d": [rect(10, 10, 30, 30)],
                },
                {"id": "1", "category": "direct", "poly2d": [rect(60, 10, 70, 30)]},
            ],
        },
        {"name": "c.jpg", "labels": None},
    ]
    path = tmp_path / "drivable_val.json"
    path.write_text(json.dumps(frames))
    masks = drivable_masks_from_polygons(path, 40, 80)
    expected_a = np.full((40, 80), 2)
    expected_a[0:21, 0:41] = 1
    expected_a[5:16, 20:61] = 0
    expected_b = np.full((40, 80), 2)
    expected_b[10:31, 10:31] = 1
    expected_b[10:31, 60:71] = 0
    for name, expected in (("a.jpg", expected_a), ("b.jpg", expected_b)):
        from scipy.ndimage import binary_dilation

        edges = np.zeros(expected.shape, bool)
        edges[:, 1:] |= expected[:, 1:] != expected[:, :-1]
        edges[1:, :] |= expected[1:, :] != expected[:-1, :]
        away = ~binary_dilation(edges, iterations=2)
        assert np.array_equal(masks[name][away], expected[away]), name
    assert (masks["c.jpg"] == 2).all()
    frames.append({"name": "a.jpg", "labels": []})
    path.write_text(json.dumps(frames))
    with pytest.raises(UserError, match=r"drivable_val\.json: frame 'a\.jpg' appears more than once"):
        drivable_masks_from_polygons(path, 40, 80)
    with pytest.raises(UserError, match="does not exist"):
        drivable_masks_from_polygons(tmp_path / "nope.json", 40, 80)


# --------------------------------------------------------------------------------------------- prepare


def test_prepare_records_the_drivable_masks(raw: Path, prepared: Path, tmp_path: Path) -> None:
    data = json.loads(prepared.read_text())
    assert set(data["drivable_masks"]) == {"train", "val"}
    dataset = load_manifest(prepared)
    for split in ("train", "val"):  # the sample's own masks, read in place
        assert dataset.drivable_masks[split] == raw.resolve() / "labels" / "drivable" / "masks" / split
        for name in dataset.names[split]:
            assert (dataset.drivable_masks[split] / f"{Path(name).stem}.png").is_file()
    # a manifest written before drivable masks existed still loads (no drivable masks)
    del data["drivable_masks"]
    (tmp_path / "dataset.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path / "dataset.json").drivable_masks == {}


def test_prepare_draws_masks_from_polygons_or_records_none(raw: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bdd100k"
    shutil.copytree(raw, copy, ignore=shutil.ignore_patterns("videos"))
    shutil.rmtree(
        copy / "labels" / "drivable" / "masks"
    )  # only the polygon JSON: prepare draws the kept images
    obtain_data(DataConfig(path=str(copy)), tmp_path / "raw")
    dataset = prepare_dataset(tmp_path / "raw", tmp_path / "prepared", PrepareConfig(limit_train=1))
    drawn = sorted(p.name for p in dataset.drivable_masks["train"].iterdir())
    assert drawn == [f"{Path(dataset.names['train'][0]).stem}.png"]  # only the kept image
    assert dataset.drivable_masks["train"].is_relative_to(tmp_path / "prepared")
    assert np.array_equal(
        read_drivable_mask(dataset.drivable_masks["train"] / drawn[0]),
        read_drivable_mask(raw / "labels" / "drivable" / "masks" / "train" / drawn[0]),
    )
    assert not (copy / "labels" / "drivable" / "masks").exists()  # the copy is never written to
    shutil.rmtree(copy / "labels" / "drivable")  # no drivable labels at all: none recorded
    dataset = prepare_dataset(tmp_path / "raw", tmp_path / "prepared")
    assert dataset.drivable_masks == {}
    assert "drivable_masks" not in json.loads((tmp_path / "prepared" / "dataset.json").read_text())
    with pytest.raises(UserError, match=r"no drivable masks for split 'val'.*labels/drivable/masks/val/"):
        evaluate_drivable(tmp_path / "prepared" / "dataset.json", tmp_path)


# ------------------------------------------------------------------------------------------ evaluation


def _gt(prepared: Path, split: str = "val") -> dict[str, np.ndarray]:
    dataset = load_manifest(prepared)
    return {
        name: read_drivable_mask(dataset.drivable_masks[split] / f"{Path(name).stem}.png")
        for name in dataset.names[split]
    }


def test_perfect_and_background_predictions(prepared: Path, tmp_path: Path) -> None:
    gts = _gt(prepared)
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    for name, gt in gts.items():
        write_drivable_mask(perfect / f"{Path(name).stem}.png", gt)
        write_drivable_mask(empty / f"{Path(name).stem}.png", np.full_like(gt, 2))
    result = evaluate_drivable(prepared, perfect)
    assert result.scores.IoU == {"direct": 100.0, "alternative": 100.0} and result.scores.mIoU == 100.0
    assert result.scores.pAcc == 100.0 and result.scores.images == 2 and result.missing_predictions == 0
    background = evaluate_drivable(prepared, empty).scores
    assert background.IoU["direct"] == 0.0 and background.IoU["alternative"] == 0.0 and background.mIoU == 0.0
    # the same numbers as a direct call of the official metric functions
    hist = sum(drivable_histogram(gt, np.full_like(gt, 2)) for gt in gts.values())
    ids = set().union(*(set(np.unique(g).tolist()) for g in gts.values())) - {2}
    assert background == drivable_scores(hist, ids, len(gts))


def test_imperfect_predictions_match_the_toolkit_formula(prepared: Path, tmp_path: Path) -> None:
    """Predictions shifted and with the classes swapped in part: the IoU equals the toolkit's
    formula computed here from the arrays, and a missing file counts as all background."""
    gts = _gt(prepared)
    names = sorted(gts)
    preds = {}
    for k, name in enumerate(names):
        pred = np.roll(gts[name], 25 * (k + 1), axis=1)  # a lane-width-ish shift to the right
        pred[: H // 2 + 60 * k][pred[: H // 2 + 60 * k] == 0] = (
            1  # direct called alternative in the upper part
        )
        preds[name] = pred
    folder = tmp_path / "pred"
    write_drivable_mask(folder / f"{Path(names[0]).stem}.png", preds[names[0]])  # names[1]: missing
    (folder / "not-in-the-split.png").write_bytes(b"ignored")  # extra files are not read
    result = evaluate_drivable(prepared, folder)
    assert result.missing_predictions == 1
    scored = [preds[names[0]], np.full((H, W), 2, np.uint8)]
    expected = _toolkit_iou([gts[n] for n in names], scored)
    assert result.scores.IoU == pytest.approx(expected, abs=1e-9)
    assert 0 < expected["direct"] < 100 and 0 < expected["alternative"] < 100
    assert result.scores.mIoU == pytest.approx(np.mean(list(expected.values())), abs=1e-9)

    # a predict function gives the same numbers, and writes official masks when asked
    seen: list[Path] = []

    def predict(image: Path) -> np.ndarray:
        seen.append(image)
        return preds[image.name]

    called = evaluate_drivable(prepared, predict, out_dir=tmp_path / "written")
    assert sorted(p.name for p in seen) == names and all(p.is_file() for p in seen)
    assert called.missing_predictions == 0
    assert called.scores.IoU == pytest.approx(
        _toolkit_iou([gts[n] for n in names], [preds[n] for n in names])
    )
    assert evaluate_drivable(prepared, tmp_path / "written").scores == called.scores


def test_bad_predictions_name_the_fault(prepared: Path, tmp_path: Path) -> None:
    name = sorted(_gt(prepared))[0]
    with pytest.raises(UserError, match=r"prediction folder .*nowhere does not exist"):
        evaluate_drivable(prepared, tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    write_drivable_mask(tmp_path / "other" / "zzz.png", np.zeros((H, W), np.uint8))
    with pytest.raises(UserError, match=r"holds no mask named after a val image \(expected e\.g\. .*\.png\)"):
        evaluate_drivable(prepared, tmp_path / "other")
    write_drivable_mask(tmp_path / "small" / f"{Path(name).stem}.png", np.zeros((360, 640), np.uint8))
    with pytest.raises(UserError, match=r"drivable mask .*small/.*\.png is 640x360, expected 1280x720"):
        evaluate_drivable(prepared, tmp_path / "small")
    with pytest.raises(UserError, match=r"the predicted drivable mask of .*\.jpg holds value\(s\) 7"):
        evaluate_drivable(prepared, lambda image: np.full((H, W), 7, np.uint8))
    with pytest.raises(UserError, match=r"the predicted drivable mask of .*\.jpg has shape \(720, 640\)"):
        evaluate_drivable(prepared, lambda image: np.zeros((H, W // 2), np.uint8))
    with pytest.raises(UserError, match=r"no split 'test'"):
        evaluate_drivable(prepared, tmp_path / "other", split="test")


def test_evaluate_cli_writes_drivable_into_metrics_json(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, gt in _gt(prepared).items():
        write_drivable_mask(tmp_path / "pred" / f"{Path(name).stem}.png", gt)
    args = ["evaluate", "--dataset", str(prepared), "--drivable-pred", str(tmp_path / "pred"),
            "--metrics", str(tmp_path / "eval" / "metrics.json"), "--plots", str(tmp_path / "eval" / "plots"),
            "--predictions", str(tmp_path / "eval" / "predictions")]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("\n{") :])["drivable"]["mIoU"] == 100.0  # after the progress line
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["images"] == 2
    assert metrics["drivable"]["IoU"] == {"direct": 100.0, "alternative": 100.0}
    assert metrics["drivable"]["mIoU"] == 100.0 and metrics["drivable"]["images"] == 2
    assert "det" not in metrics and "lanes" not in metrics
    args[args.index("--drivable-pred") + 1] = str(tmp_path / "missing")
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error: drivable prediction folder" in err and "Traceback" not in err
