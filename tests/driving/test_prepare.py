"""The pipeline's data steps: the synthetic sample or a pointer to a real copy, and the prepared
dataset (YOLO layout, lane masks drawn from polygons when a copy has none, subsets, manifest)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from visionpipes.core.errors import UserError
from visionpipes.driving.bdd100k.masks import read_mask
from visionpipes.driving.prepare import (
    SOURCE_FILE,
    DataConfig,
    PrepareConfig,
    load_manifest,
    obtain_data,
    prepare_dataset,
    resolve_root,
)

SYNTH = {"images": 6, "seed": 2, "val_fraction": 0.34, "cameras": 0}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepare") / "raw"
    summary = obtain_data(DataConfig(synth=SYNTH), out)
    assert summary["source"] == "synthetic" and summary["images"] == {"train": 4, "val": 2}
    return out


def test_prepare_writes_yolo_dataset_and_manifest(raw: Path, tmp_path: Path) -> None:
    dataset = prepare_dataset(raw, tmp_path / "prepared")
    assert dataset.source == "synthetic" and dataset.root == raw.resolve()
    loaded = load_manifest(tmp_path / "prepared" / "dataset.json")
    assert loaded.names == dataset.names and len(loaded.names["train"]) == 4
    assert loaded.data_yaml.is_file() and loaded.det_labels["val"].is_file()
    assert sorted(p.name for p in (tmp_path / "prepared" / "yolo" / "images" / "val").iterdir()) == loaded.names["val"]
    assert loaded.lane_masks["train"] == raw.resolve() / "labels" / "lane" / "masks" / "train"
    # the manifest is relative to its folder: a moved prepared folder still resolves its own files
    shutil.move(tmp_path / "prepared", tmp_path / "moved")
    assert load_manifest(tmp_path / "moved").det_labels["val"].is_file()


def test_limits_take_a_subset(raw: Path, tmp_path: Path) -> None:
    dataset = prepare_dataset(raw, tmp_path / "p", PrepareConfig(limit_train=2, limit_val=1))
    assert len(dataset.names["train"]) == 2 and len(dataset.names["val"]) == 1
    frames = json.loads(dataset.det_labels["train"].read_text())
    assert [f["name"] for f in frames] == dataset.names["train"]
    assert len(list((tmp_path / "p" / "yolo" / "labels" / "train").iterdir())) == 2


def test_real_copy_is_pointed_at_and_masks_drawn_from_polygons(raw: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bdd100k"
    shutil.copytree(raw, copy)
    shutil.rmtree(copy / "labels" / "lane" / "masks")  # only polygons: prepare must draw the masks
    summary = obtain_data(DataConfig(path="bdd100k"), tmp_path / "raw", base_dir=tmp_path)
    assert summary["source"] == "bdd100k" and (tmp_path / "raw" / SOURCE_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [SOURCE_FILE]
    assert resolve_root(tmp_path / "raw") == (copy.resolve(), "bdd100k")
    dataset = prepare_dataset(tmp_path / "raw", tmp_path / "prepared")
    assert dataset.images["train"] == copy.resolve() / "images" / "100k" / "train"
    masks = sorted(dataset.lane_masks["val"].iterdir())
    assert len(masks) == 2 and dataset.lane_masks["val"].is_relative_to(tmp_path / "prepared")
    assert read_mask(masks[0], expected_shape=(720, 1280)).min() < 255
    assert not (copy / "labels" / "lane" / "masks").exists()  # the copy is never written to


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"path": "nowhere"}, "is not a folder"),
        ({"path": "."}, "is not a BDD100K root: it lacks images/100k/train/"),
        ({"synth": {"pictures": 3}}, "params.yaml:data: unknown key 'synth.pictures' (valid: images, seed"),
        ({"synth": {"images": 0}}, "params.yaml:data: key 'synth.images' = 0: input should be greater than or equal to 1"),
    ],
)
def test_bad_data_config_names_the_field(config: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        obtain_data(DataConfig.from_params(config, source="params.yaml:data"), tmp_path / "raw", base_dir=tmp_path)
    assert not (tmp_path / "raw").exists()


def test_bad_raw_folders_and_manifests(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `vp-driving data` first"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / SOURCE_FILE).write_text(json.dumps({"root": str(tmp_path / "gone")}))
    with pytest.raises(UserError, match="no longer exists"):
        prepare_dataset(tmp_path / "raw", tmp_path / "out")
    with pytest.raises(UserError, match="run `vp-driving prepare` first"):
        load_manifest(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a dataset manifest"):
        load_manifest(tmp_path / "bad.json")
    with pytest.raises(UserError, match=r"params\.yaml:prepare: unknown key 'size'"):
        PrepareConfig.from_params({"size": 3}, source="params.yaml:prepare")
    assert not (tmp_path / "out").exists()
