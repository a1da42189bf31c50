"""The shared runtime pieces of core: typed configs with did-you-mean errors, the deploy-folder
record (checksums, versions, metadata), the one image decoder, the checkpoint loader, the device rule."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionpipes.core import device
from visionpipes.core.artifact import (
    ModelCard,
    file_entry,
    read_metrics,
    read_onnx_metadata,
    read_record,
    read_torchscript_metadata,
    set_onnx_metadata,
    set_torchscript_metadata,
    write_record,
)
from visionpipes.core.checkpoint import load_checkpoint, state_dict_of
from visionpipes.core.config import ConfigModel, Field, load_config, parse_config
from visionpipes.core.errors import UserError
from visionpipes.core.image import ImageTooLarge, read_image


class Optim(ConfigModel):
    lr: float = Field(0.1, gt=0)
    epochs: int = Field(3, ge=1)


class Train(ConfigModel):
    optim: Optim = Optim()
    name: str = "x"


def test_config_did_you_mean_names_file_key_and_closest() -> None:
    with pytest.raises(UserError) as err:
        parse_config(Train, {"optim": {"lerning_rate": 1, "lr": 0.2}}, source="params.yaml:train")
    msg = str(err.value)
    assert msg.startswith("params.yaml:train: unknown key 'optim.lerning_rate'")
    # the closest valid key is suggested (and "lr" vs "lerning_rate" is too far: the list is given)
    with pytest.raises(UserError, match=r"unknown key 'optim.epoch'; did you mean 'epochs'\?"):
        parse_config(Train, {"optim": {"epoch": 2}}, source="p")


def test_config_ranges_and_types_are_field_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"p: key 'optim.lr' = -1: input should be greater than 0"):
        parse_config(Train, {"optim": {"lr": -1}}, source="p")
    with pytest.raises(UserError, match="expected a mapping"):
        parse_config(Train, [1, 2], source="p")
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  optim: {lr: 0.5}\n")
    assert load_config(Train, params, "train").optim.lr == 0.5
    assert load_config(Train, None, "train") == Train()


def test_record_round_trip_and_checksum_failure(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"0123")
    write_record(tmp_path, domain="demo", files={"onnx": file_entry(tmp_path, "model.onnx", max_abs_diff=0.0)})
    record = read_record(tmp_path, domain="demo", verify=True)
    assert record["format_version"] == 1 and record["files"]["onnx"]["bytes"] == 4
    with pytest.raises(UserError, match="is a 'demo' model, not a 'retail' one"):
        read_record(tmp_path, domain="retail")
    (tmp_path / "model.onnx").write_bytes(b"0124")
    with pytest.raises(UserError, match=r"onnx file model.onnx does not match its checksum"):
        read_record(tmp_path, verify=True)
    data = json.loads((tmp_path / "model.json").read_text())
    data["format_version"] = 99
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="format_version 99"):
        read_record(tmp_path)
    with pytest.raises(UserError, match=r"has no model.json"):
        read_record(tmp_path / "..")


def test_read_metrics_errors(tmp_path: Path) -> None:
    assert read_metrics(None) == {}
    with pytest.raises(UserError, match="run vp-x evaluate first"):
        read_metrics(tmp_path / "m.json", producer="vp-x evaluate")
    (tmp_path / "m.json").write_text("[1]")
    with pytest.raises(UserError, match="JSON object"):
        read_metrics(tmp_path / "m.json")


def test_model_metadata_round_trip(tmp_path: Path) -> None:
    from visionpipes.core.export import export_onnx, export_torchscript

    net = torch.nn.Conv2d(3, 2, 3)
    x = torch.randn(1, 3, 8, 8)
    export_onnx(net, x, tmp_path / "m.onnx")
    set_onnx_metadata(tmp_path / "m.onnx", {"visionpipes": '{"a": 1}'})
    set_onnx_metadata(tmp_path / "m.onnx", {"other": "2"})
    assert read_onnx_metadata(tmp_path / "m.onnx") == {"visionpipes": '{"a": 1}', "other": "2"}
    export_torchscript(net, x, tmp_path / "m.pt")
    set_torchscript_metadata(tmp_path / "m.pt", {"visionpipes": "{}"})
    assert read_torchscript_metadata(tmp_path / "m.pt", ["visionpipes", "absent"]) == {"visionpipes": "{}"}
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        read_onnx_metadata(tmp_path / "bad.onnx")


def test_model_card_renders_sections(tmp_path: Path) -> None:
    card = ModelCard("Model card: demo", "What it does.")
    card.section("Metrics", "From eval.", bullets=["one"], table=(["metric", "value"], [["Dice", 0.912345], ["HD95", None]]))
    card.section("Params", code=("yaml", "a: 1\n"))
    text = card.write(tmp_path).read_text()
    assert "| Dice | 0.9123 |" in text and "| HD95 | n/a |" in text
    assert "```yaml\na: 1\n```" in text and text.startswith("# Model card: demo\n\nWhat it does.")


def _png(mode: str, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 200).save(buf, fmt)
    return buf.getvalue()


def test_read_image_orders_formats_and_budget(tmp_path: Path) -> None:
    img = Image.new("RGB", (5, 4), (10, 20, 30))
    img.save(tmp_path / "a.png")
    rgb = read_image(tmp_path / "a.png")
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8 and tuple(rgb[0, 0]) == (10, 20, 30)
    assert tuple(read_image(tmp_path / "a.png", order="BGR")[0, 0]) == (30, 20, 10)
    assert read_image(_png("L", (3, 2))).shape == (2, 3, 3)
    with pytest.raises(ImageTooLarge, match="3x2 = 6 pixels, over the limit of 5"):
        read_image(_png("L", (3, 2)), max_pixels=5)
    with pytest.raises(UserError, match=r"uploaded image is not an image of an allowed format \(JPEG, PNG\)"):
        read_image(_png("L", (3, 2), "GIF"), formats={"png", "jpeg"})
    # an allowed signature whose body is not that format is refused by Pillow's own parser for it
    with pytest.raises(UserError, match=r"not a readable image|not an image of an allowed format"):
        read_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, formats={"PNG"})
    webp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(webp, "WEBP")
    assert read_image(webp.getvalue(), formats={"jpeg", "png", "webp"}).shape == (4, 4, 3)
    with pytest.raises(UserError, match=r"b.png is not a readable image"):
        (tmp_path / "b.png").write_bytes(b"\x89PNG garbage")
        read_image(tmp_path / "b.png")
    with pytest.raises(UserError, match="does not exist"):
        read_image(tmp_path / "missing.jpg")


def test_checkpoint_loader(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "c.ckpt")
    data = load_checkpoint(tmp_path / "c.ckpt")
    assert set(state_dict_of(data, path=tmp_path / "c.ckpt")) == {"weight", "bias"}
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(UserError, match=r"lane model .*bad.pt is not a readable PyTorch file"):
        load_checkpoint(tmp_path / "bad.pt", what="lane model")
    with pytest.raises(UserError, match="does not hold a state dict"):
        state_dict_of({"epoch": 1}, path="x")


@pytest.mark.parametrize("cuda", [True, False])
def test_auto_device_follows_cuda_without_the_hardware(monkeypatch: pytest.MonkeyPatch, cuda: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    assert device.select_device("auto").type == ("cuda" if cuda else "cpu")
    assert device.select_device(None).type == ("cuda" if cuda else "cpu")


def test_model_file_round_trip_and_errors(tmp_path: Path) -> None:
    from visionpipes.core.checkpoint import load_model_file, load_state_into, save_model_file

    net = torch.nn.Linear(3, 2)
    save_model_file(tmp_path / "m.pt", Optim(lr=0.5), net.state_dict(), {"note": "x"})
    config, state, extra = load_model_file(tmp_path / "m.pt", Optim, what="demo model")
    assert config.lr == 0.5 and extra == {"note": "x"}
    again = load_state_into(torch.nn.Linear(3, 2), state, path=tmp_path / "m.pt", what="demo model")
    assert torch.equal(again.weight, net.weight) and not again.training
    with pytest.raises(UserError, match=r"m.pt is not a demo model saved by visionpipes \(.*size mismatch"):
        load_state_into(torch.nn.Linear(4, 2), state, path=tmp_path / "m.pt", what="demo model")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no config and state_dict"):
        load_model_file(tmp_path / "other.pt", Optim, what="demo model")
    save_model_file(tmp_path / "bad.pt", Train(), {}, None)
    with pytest.raises(UserError, match=r"demo model .*bad.pt: config: unknown key 'optim'"):
        load_model_file(tmp_path / "bad.pt", Optim, what="demo model")
