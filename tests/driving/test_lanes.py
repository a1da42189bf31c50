"""The lane model: targets and decoding match the official bit layout, the smp and core encoders build,
training writes a loadable model whose masks come out at the image size, and the ONNX twin agrees."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from visionpipes.core.errors import UserError
from visionpipes.core.training import TrainConfig
from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND
from visionpipes.driving.bdd100k.masks import encode_lane_value, read_mask, write_mask
from visionpipes.driving.lanes.data import IGNORE_INDEX, lane_samples, lane_targets
from visionpipes.driving.lanes.decode import (
    BACKGROUND_CLASS,
    CATEGORY_CHANNELS,
    LANE_CHANNELS,
    drop_small_pieces,
    join_lane_gaps,
    lane_mask_from_logits,
    vote_lane_style,
)
from visionpipes.driving.lanes.model import LaneModelConfig, build_lane_model, load_lane_model
from visionpipes.driving.lanes.runtime import (
    OnnxLaneModel,
    export_lane_onnx,
    predict_lane_logits,
    predict_lane_masks,
)
from visionpipes.driving.lanes.train import LaneTrainConfig, train_lanes
from visionpipes.driving.synth.sample import SynthConfig, write_sample


def _mask() -> np.ndarray:
    mask = np.full((6, 8), LANE_BACKGROUND, dtype=np.uint8)
    mask[1, 1:4] = encode_lane_value(4)  # road curb, solid, parallel
    mask[3, 2:6] = encode_lane_value(6, style=1)  # single white, dashed
    mask[5, 0:8] = encode_lane_value(0, direction=1)  # crosswalk, vertical
    return mask


def _logits_for(mask: np.ndarray) -> np.ndarray:
    """One-hot logits (13, H, W) that decode to `mask`."""
    category, style, direction = lane_targets(mask)
    logits = np.zeros((LANE_CHANNELS, *mask.shape), dtype=np.float32)
    rows, cols = np.indices(mask.shape)
    logits[category, rows, cols] = 10.0
    logits[CATEGORY_CHANNELS + np.clip(style, 0, 1), rows, cols] = 10.0
    logits[CATEGORY_CHANNELS + 2 + np.clip(direction, 0, 1), rows, cols] = 10.0
    return logits


def test_targets_follow_the_bit_layout() -> None:
    category, style, direction = lane_targets(_mask())
    assert category[0, 0] == BACKGROUND_CLASS and style[0, 0] == IGNORE_INDEX and direction[0, 0] == IGNORE_INDEX
    assert (category[1, 1], style[1, 1], direction[1, 1]) == (4, 0, 0)
    assert (category[3, 2], style[3, 2], direction[3, 2]) == (6, 1, 0)
    assert (category[5, 0], style[5, 0], direction[5, 0]) == (0, 0, 1)


def test_decoding_inverts_the_targets_and_resizes() -> None:
    mask = _mask()
    np.testing.assert_array_equal(lane_mask_from_logits(_logits_for(mask)), mask)
    big = lane_mask_from_logits(_logits_for(mask), (32, 24))
    assert big.shape == (24, 32) and big.dtype == np.uint8
    assert set(np.unique(big)) <= set(np.unique(mask))
    assert big[22, 16] == encode_lane_value(0, direction=1)


def test_decoding_puts_the_region_of_interest_below_the_cut_rows() -> None:
    mask = _mask()
    full = lane_mask_from_logits(_logits_for(mask), (32, 24), roi_top=0.25)
    assert full.shape == (24, 32)
    assert (full[:6] == LANE_BACKGROUND).all()  # round(24 * 0.25) rows above the region of interest
    np.testing.assert_array_equal(full[6:], lane_mask_from_logits(_logits_for(mask), (32, 18)))


def test_a_lane_split_between_types_is_still_a_lane() -> None:
    """P(background) 0.4 beats each type (0.35, 0.25) but not the two together: the pixel is a lane
    of the likelier type. Where background outweighs all types together, it stays background."""
    logits = np.full((LANE_CHANNELS, 1, 2), -30.0, dtype=np.float32)
    logits[3, 0, 0], logits[7, 0, 0], logits[BACKGROUND_CLASS, 0, 0] = np.log([0.35, 0.25, 0.4])
    logits[3, 0, 1], logits[7, 0, 1], logits[BACKGROUND_CLASS, 0, 1] = np.log([0.3, 0.15, 0.55])
    logits[CATEGORY_CHANNELS + 1] = 1.0  # dashed
    mask = lane_mask_from_logits(logits)
    assert mask[0, 0] == encode_lane_value(3, style=1)
    assert mask[0, 1] == LANE_BACKGROUND


def _line(mask: np.ndarray, p: tuple[int, int], q: tuple[int, int], value: int, thickness: int = 5) -> None:
    import cv2

    cv2.line(mask, p, q, value, thickness)


def test_joins_close_the_gaps_between_the_dashes_of_one_line_only() -> None:
    dashed_white = encode_lane_value(6, style=1)
    mask = np.full((200, 300), LANE_BACKGROUND, dtype=np.uint8)
    for y0 in (10, 70, 130):  # three dashes of one slanted line, 30-row gaps
        _line(mask, (20 + y0 // 2, y0), (20 + (y0 + 30) // 2, y0 + 30), dashed_white)
    _line(mask, (200, 10), (200, 40), dashed_white)  # another line, parallel: never joined across
    _line(mask, (200, 100), (200, 140), encode_lane_value(2))  # in line with it, but another type
    joined = join_lane_gaps(mask)
    assert joined is not mask and (mask[55, 20 + 55 // 2] == LANE_BACKGROUND)  # the input is untouched
    for y in (50, 55, 60, 110, 115, 120):  # the gaps are filled with the dashes' value
        assert joined[y, 20 + y // 2] == dashed_white
    changed = joined != mask
    assert not changed[:, 150:].any()  # the right-hand pieces stay as they were
    # a gap longer than max_gap_ratio times the pieces is left open
    assert (join_lane_gaps(mask, max_gap_ratio=0.5) == mask).all()


def test_small_pieces_are_dropped_and_each_piece_of_a_lane_gets_one_style() -> None:
    mask = np.full((100, 100), LANE_BACKGROUND, dtype=np.uint8)
    _line(mask, (10, 0), (10, 99), encode_lane_value(6, style=1))  # single white dashed, 100 rows
    _line(mask, (10, 70), (10, 99), encode_lane_value(6))  # its last 30 rows read as solid
    _line(mask, (14, 40), (60, 99), encode_lane_value(4))  # a road curb touching it: another type
    _line(mask, (50, 10), (52, 12), encode_lane_value(3), thickness=2)  # a speck of double yellow
    _line(mask, (0, 20), (99, 20), encode_lane_value(0, direction=1), thickness=3)  # a crosswalk edge
    cleaned = drop_small_pieces(mask, 20)
    assert (cleaned[5:18, 45:58] == LANE_BACKGROUND).all() and (cleaned[mask != cleaned] == LANE_BACKGROUND).all()
    assert (cleaned[:, 10] != LANE_BACKGROUND).all()  # the line is kept whole
    voted = vote_lane_style(cleaned)
    line = voted[:, 10][np.abs(np.arange(100) - 20) > 2]  # the line's pixels off the crosswalk
    assert (line == encode_lane_value(6, style=1)).all()
    assert (voted[cleaned == encode_lane_value(4)] == encode_lane_value(4)).all()  # the curb keeps its type and style
    assert (voted[20, 30:90] == encode_lane_value(0, direction=1)).all()  # crosswalk edges keep their own


def test_lane_level_decoding_keeps_real_ground_truth(bdd_fixtures: Path, tmp_path: Path) -> None:
    """Decoding a perfect prediction must keep it near-perfect: the real BDD100K lane masks, passed
    through the join, speck and style steps, still score F1_pix2 >= 98 against themselves (99.2
    measured: a join bridges an unannotated stretch of curb)."""
    from visionpipes.driving.metrics import evaluate_lanes

    out = tmp_path
    for path in sorted((bdd_fixtures / "lane" / "gts").glob("*.png")):
        mask = read_mask(path, kind="lane")
        decoded = vote_lane_style(drop_small_pieces(join_lane_gaps(mask), round(0.0002 * mask.size)))
        write_mask(out / path.name, decoded)
    assert evaluate_lanes(bdd_fixtures / "lane" / "gts", out).F1_pix2 >= 98.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"arch": "PSPNetX"}, "key 'arch' = 'PSPNetX': input should be 'Unet', 'FPN' or 'DeepLabV3Plus'"),
        ({"width": 100}, "key 'width' = 100: input should be a multiple of 32"),
        ({"decoder_channels": [16, 8]}, "decoder_channels needs 5"),
        ({"colour": 1}, "unknown key 'colour'"),
        ({"encodr": "resnet18"}, "unknown key 'encodr'; did you mean 'encoder'?"),
        ({"roi_top": 1.0}, "key 'roi_top' = 1.0: input should be less than 1"),
        ({"join_gaps": -1}, "key 'join_gaps' = -1: input should be greater than or equal to 0"),
        ({"min_area": 0.5}, "key 'min_area' = 0.5: input should be less than 0.1"),
        ({"arch": "DeepLabV3Plus", "encoder": "core:resnet18", "decoder_channels": None}, "core backbones have no dilated"),
    ],
)
def test_bad_model_config_names_the_field(config: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(f"params.yaml:lanes.model: {message}")):
        LaneModelConfig.from_params(config, source="params.yaml:lanes.model")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dice_weight": -1}, "key 'dice_weight' = -1: input should be greater than or equal to 0"),
        ({"lr": 0}, "key 'lr' = 0: input should be greater than 0"),
        ({"gamma": 2}, "unknown key 'gamma'"),
    ],
)
def test_bad_train_config_names_the_field(config: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(f"params.yaml:lanes.train: {message}")):
        LaneTrainConfig.from_params(config, source="params.yaml:lanes.train")


def test_unknown_encoder_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no_such_encoder"):
        build_lane_model(LaneModelConfig(encoder="no_such_encoder"))


@pytest.mark.parametrize(
    "config",
    [
        LaneModelConfig(width=64, height=32),
        LaneModelConfig(arch="FPN", encoder="core:resnet18", decoder_channels=None, width=64, height=64),
        LaneModelConfig(encoder="core:mobilenet_v2", width=64, height=64),
    ],
    ids=["unet-resnet18", "fpn-core-resnet18", "unet-core-mobilenet_v2"],
)
def test_lane_net_outputs_13_channels_at_input_size(config: LaneModelConfig) -> None:
    net = build_lane_model(config).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, config.height, config.width))
    assert out.shape == (2, LANE_CHANNELS, config.height, config.width)
    assert torch.isfinite(out).all()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lanes") / "bdd"
    write_sample(root, SynthConfig(images=4, seed=3, val_fraction=0.25, cameras=0))
    return root


def test_train_predict_export(sample: Path, tmp_path: Path) -> None:
    train = lane_samples(sample / "images/100k/train", sample / "labels/lane/masks/train")
    val = lane_samples(sample / "images/100k/val", sample / "labels/lane/masks/val")
    config = LaneModelConfig(
        width=64, height=32, decoder_channels=[32, 16, 16, 8, 8], roi_top=0.4, join_gaps=3.0, min_area=0.0002, vote=True
    )
    run = train_lanes(
        train,
        val,
        tmp_path / "run",
        model_config=config,
        train_config=LaneTrainConfig(batch_size=2, warmup_steps=1),
        trainer_config=TrainConfig(max_epochs=1, accelerator="cpu", progress=False, logger="csv"),
    )
    assert run.model_path.is_file() and run.epochs == 1
    model = load_lane_model(run.model_path)
    assert model.config == config
    written = predict_lane_masks(model, [s.image for s in val], tmp_path / "pred")
    assert [p.name for p in written] == [s.mask.name for s in val]
    mask = read_mask(written[0], expected_shape=(720, 1280))
    assert mask.dtype == np.uint8 and (mask[:288] == LANE_BACKGROUND).all()  # above roi_top 0.4

    report = export_lane_onnx(model, tmp_path / "lanes.onnx")
    assert report.path.is_file()
    import cv2

    frames = [cv2.imread(str(s.image)) for s in val]
    onnx_model = OnnxLaneModel(report.path, threads=1)
    assert onnx_model.roi_top == pytest.approx(0.4)  # carried in the ONNX metadata, with the decoding
    assert onnx_model.decoding == pytest.approx(config.decoding())
    np.testing.assert_allclose(onnx_model.logits(frames), predict_lane_logits(model, frames), atol=1e-3, rtol=1e-3)
    onnx_mask = onnx_model(frames)[0]
    assert onnx_mask.shape == (720, 1280)
    assert (onnx_mask == mask).mean() > 0.999


def test_lane_samples_and_model_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        lane_samples(tmp_path / "images", tmp_path / "masks")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="has a lane mask"):
        lane_samples(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(UserError, match="does not exist"):
        load_lane_model(tmp_path / "none.pt")
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": 1}, bogus)
    with pytest.raises(UserError, match="not a lane model"):
        load_lane_model(bogus)


def test_a_searched_core_spec_file_is_an_encoder_and_is_saved_inline(tmp_path: Path) -> None:
    import yaml

    from visionpipes.core.backbones import get_spec
    from visionpipes.driving.lanes.model import save_lane_model

    spec = get_spec("resnet18").to_dict()
    spec.update(name="searched", stem_width=16)
    for stage, width in zip(spec["stages"], (16, 24, 32, 48)):
        stage.update(width=width, depth=1)
    spec_file = tmp_path / "best_spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    config = LaneModelConfig.from_params({"encoder": f"core:{spec_file}", "width": 64, "height": 64}, source="lanes.model")
    assert config.encoder_spec is not None and config.encoder_spec["name"] == "searched"
    net = build_lane_model(config).eval()
    save_lane_model(tmp_path / "lane_model.pt", net)
    spec_file.unlink()  # the saved model carries the architecture itself
    again = load_lane_model(tmp_path / "lane_model.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x))
    with pytest.raises(UserError, match="does not exist"):
        LaneModelConfig.from_params({"encoder": f"core:{spec_file}"}, source="lanes.model")
