"""`crop_foreground` on a CT (no zero background): the windows run over the body's box, the voxels above
`body_threshold_hu` in the raw Hounsfield units (air ~-1000, lungs ~-850 inside the body), grown by
`crop_margin`; outside it every region is absent, inside the probabilities equal the uncropped ones.
MRI (non-zero z-score) keeps the box of its non-zero voxels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpipes.medical.msd.regions import Region
from visionpipes.medical.runtime.crop import body_box
from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

REGIONS = [Region("organ", frozenset({1, 2})), Region("tumour", frozenset({2}))]
CT = [{"scheme": "ct", "clip": [-17.0, 201.0], "mean": 99.4, "std": 39.4}]
SHAPE = (44, 36, 14)
# the body: an elliptic cylinder centred at (21.5, 17.5), semi-axes 12 x 8 voxels, in every slice
CENTRE, SEMI = (21.5, 17.5), (12.0, 8.0)


def _ct() -> np.ndarray:
    """Raw HU `(1, X, Y, Z)`: air outside the body, soft tissue (40 +- 40) inside, a lung (-850) within."""
    x, y = np.ogrid[: SHAPE[0], : SHAPE[1]]
    body = ((x - CENTRE[0]) / SEMI[0]) ** 2 + ((y - CENTRE[1]) / SEMI[1]) ** 2 <= 1.0
    rng = np.random.default_rng(0)
    volume = np.full((1, *SHAPE), -1000.0, np.float32)
    volume[0][np.broadcast_to(body[..., None], SHAPE)] = 40.0 + 40.0 * rng.standard_normal(
        int(body.sum()) * SHAPE[2]
    ).astype(np.float32)
    volume[0, 16:22, 14:20, 3:9] = -850.0  # lung parenchyma: below the threshold, inside the box
    volume[0, 1, 1, 1] = -600.0  # not body either (table foam, noise)
    return volume


def _extent() -> tuple[slice, ...]:
    """The body's voxel extent, from the geometry (independent of `body_box`)."""
    x, y = np.ogrid[: SHAPE[0], : SHAPE[1]]
    body = ((x - CENTRE[0]) / SEMI[0]) ** 2 + ((y - CENTRE[1]) / SEMI[1]) ** 2 <= 1.0
    xs, ys = np.nonzero(body.any(1))[0], np.nonzero(body.any(0))[0]
    return (slice(xs[0], xs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(0, SHAPE[2]))


class Pointwise(torch.nn.Module):
    """Logits from each voxel alone (a seeded 1x1x1 conv, biased so that air and tissue are both labelled
    a region): the uncropped and cropped probabilities must agree voxel for voxel inside the box."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.8, -0.6]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([4.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _predictor(crop: bool, margin: int = 2, normalization=CT, **settings) -> Predictor:
    return Predictor(
        Pointwise(),
        regions=REGIONS,
        modality=["CT"],
        roi_size=(16, 16, 8),
        normalization=normalization,
        config=InferenceConfig(crop_foreground=crop, crop_margin=margin, **settings),
    )


def test_body_box_is_the_body_extent_plus_margin() -> None:
    extent = _extent()
    expected = tuple(
        slice(max(0, s.start - 3), min(n, s.stop + 3)) for s, n in zip(extent, SHAPE, strict=True)
    )
    assert body_box(torch.from_numpy(_ct()), -500.0, 3) == expected
    assert expected[0] != slice(0, SHAPE[0]) and expected[1] != slice(0, SHAPE[1])  # smaller than the grid
    # all air: nothing above the threshold, the whole grid
    assert body_box(torch.full((1, *SHAPE), -1000.0), -500.0, 3) == tuple(slice(0, n) for n in SHAPE)
    # a threshold below the lone -600 voxel takes it in
    assert body_box(torch.from_numpy(_ct()), -700.0, 0)[0].start == 1


def test_ct_prediction_is_background_outside_the_body_and_equal_inside() -> None:
    raw = _ct()
    cropped, full = _predictor(True), _predictor(False)
    box = cropped.crop_box(torch.from_numpy(raw))
    assert box == tuple(
        slice(max(0, s.start - 2), min(n, s.stop + 2)) for s, n in zip(_extent(), SHAPE, strict=True)
    )
    outside = np.ones(SHAPE, bool)
    outside[box] = False
    labels_full = full.predict_array(raw, np.eye(4))
    labels_crop = cropped.predict_array(raw, np.eye(4))
    # without the crop the network labels air as a region, so the crop is what makes it background
    assert (labels_full[outside] != 0).mean() > 0.9
    assert not labels_crop[outside].any()
    np.testing.assert_array_equal(labels_crop[box], labels_full[box])
    # the probabilities inside the box, against the uncropped ones (different windows, Gaussian blending)
    normalised = cropped.normalise(torch.from_numpy(raw))
    p_crop = cropped.region_probabilities(normalised, box=box)
    p_full = full.region_probabilities(normalised)
    torch.testing.assert_close(p_crop[(slice(None), *box)], p_full[(slice(None), *box)], atol=1e-5, rtol=0)
    assert float(p_crop[:, torch.from_numpy(outside)].abs().max()) == 0.0


def test_the_box_follows_the_raw_hounsfield_units_not_the_normalised_values() -> None:
    """After the clip to the foreground percentiles air and fat are one value: the box must come from the
    raw scan (the normalised CT has no zero voxel, so the non-zero box would be the whole grid)."""
    raw = _ct()
    raw[0, 2:5, 2:5, :] = -100.0  # fat outside the body's ellipse: body, though clipped like air
    predictor = _predictor(True, margin=0)
    assert predictor.crop_box(torch.from_numpy(raw))[0].start == 2
    assert predictor.crop_box(torch.from_numpy(raw))[1].start == 2
    # a raised threshold leaves the fat out
    assert _predictor(True, margin=0, body_threshold_hu=-50.0).crop_box(torch.from_numpy(raw))[0].start > 2


@pytest.mark.parametrize(
    ("crop", "normalization"),
    [(False, CT), (True, None), (True, [{"scheme": "zscore", "use_nonzero_mask": True}])],
)
def test_no_body_box_without_the_crop_or_a_ct_channel(crop: bool, normalization) -> None:
    """MRI (non-zero z-score) keeps the box of its non-zero normalised voxels (`region_probabilities`), as
    before; without `crop_foreground` nothing is cropped."""
    assert _predictor(crop, normalization=normalization).crop_box(torch.from_numpy(_ct())) is None


def test_body_threshold_is_an_inference_setting() -> None:
    assert InferenceConfig().body_threshold_hu == -500.0
    assert InferenceConfig(body_threshold_hu=-300).to_dict()["body_threshold_hu"] == -300.0


def test_a_deployed_ct_model_records_and_applies_its_body_crop(
    trained, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    """`vp-medical export` records `body_threshold_hu`; `Predictor.load` and `vp-medical predict` crop
    with the recorded threshold (a -450 HU rim outside the body is body at -500, not at the recorded -400)."""
    import json

    import nibabel as nib

    from visionpipes.medical import cli
    from visionpipes.medical.training.deploy import deploy

    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["normalization"] = CT * 4  # the tiny 4-channel model, as if trained on CT
    torch.save(ckpt, tmp_path / "ct.ckpt")
    model = tmp_path / "model"
    deploy(
        tmp_path / "ct.ckpt",
        model,
        inference=InferenceConfig(overlap=0.25, crop_foreground=True, body_threshold_hu=-400.0),
    )
    assert json.loads((model / "model.json").read_text())["inference"]["body_threshold_hu"] == -400.0
    raw = np.repeat(_ct(), 4, axis=0)
    raw[:, 0:2, :, :] = -450.0  # a rim: body at -500, air at -400
    predictor = Predictor.load(model)
    expected = tuple(
        slice(max(0, s.start - 4), min(n, s.stop + 4)) for s, n in zip(_extent(), SHAPE, strict=True)
    )
    assert predictor.crop_box(torch.from_numpy(raw)) == expected
    assert Predictor.load(model, body_threshold_hu=-500.0).crop_box(torch.from_numpy(raw))[0].start == 0
    scan, seg = tmp_path / "ct_scan.nii.gz", tmp_path / "ct_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(raw, 0, -1), np.eye(4)), scan)
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", "--model", str(model), "--input", str(scan), "--output", str(seg)])
    assert info.value.code == 0 and "wrote" in capsys.readouterr().out
    labels = np.asarray(nib.load(seg).dataobj)
    outside = np.ones(SHAPE, bool)
    outside[expected] = False
    assert labels.shape == SHAPE and not labels[outside].any()
