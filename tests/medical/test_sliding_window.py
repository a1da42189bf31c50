"""The medical `Predictor` runs MONAI's sliding window: on a volume several windows large (one axis
smaller than the window, so it is padded) with a seeded conv net, its region probabilities equal a direct
`monai.inferers.sliding_window_inference` call at the same overlap and blending (and flip averaging), for
the eager network, its TorchScript trace and its ONNX export run by onnxruntime."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from visionpipes.core.export import export_onnx, export_torchscript
from visionpipes.medical.msd.regions import Region
from visionpipes.medical.runtime.deployed import OnnxNetwork
from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

ROI = (16, 16, 16)
SHAPE = (2, 40, 33, 12)  # (C, X, Y, Z): 3-4 windows along X and Y, Z smaller than the window (padded)
REGIONS = [Region("a", frozenset({1})), Region("b", frozenset({1, 2}))]
SETTINGS = [
    InferenceConfig(overlap=0.25, sw_batch_size=3, blend="gaussian"),
    InferenceConfig(overlap=0.5, sw_batch_size=2, blend="constant", tta_flips=True),
]
# Float32 sums of differently ordered windows: the predictor must agree with MONAI to this (probabilities).
ATOL = {"eager": 1e-6, "torchscript": 1e-6, "onnx": 1e-4}


def _net() -> torch.nn.Module:
    """A seeded 3-D conv net whose 5x5x5 receptive field sees the window's zero padding near its edges,
    so a window's output depends on where the window lies (blending and overlap change the result)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(2, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(6, len(REGIONS), 3, padding=1),
    ).eval()


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("forms")
    net = _net()
    example = torch.randn(2, 2, *ROI)
    export_torchscript(net, example, folder / "model.pt")
    export_onnx(
        net, example, folder / "model.onnx", input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "x", 3: "y", 4: "z"}, "logits": {0: "batch", 2: "x", 3: "y", 4: "z"}},
    )  # fmt: skip
    return {
        "eager": net,
        "torchscript": torch.jit.load(str(folder / "model.pt")).eval(),
        "onnx": OnnxNetwork(folder / "model.onnx", threads=1),
    }


def _volume() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(SHAPE, generator=generator)


@torch.inference_mode()
def _monai(net: torch.nn.Module, image: torch.Tensor, config: InferenceConfig) -> torch.Tensor:
    """Sigmoid of MONAI's sliding window at `config`, averaged over the flips along each axis if asked."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(
            sliding_window_inference(
                x,
                roi_size=ROI,
                sw_batch_size=config.sw_batch_size,
                predictor=net,
                overlap=config.overlap,
                mode=config.blend,
            )
        )

    x = image[None]
    probs = [run(x)]
    if config.tta_flips:
        probs += [torch.flip(run(torch.flip(x, dims=(a,))), dims=(a,)) for a in (2, 3, 4)]
    return torch.stack(probs).mean(0)[0]


@pytest.mark.parametrize("config", SETTINGS, ids=["gaussian-0.25", "constant-0.5-flips"])
@pytest.mark.parametrize("form", ["eager", "torchscript", "onnx"])
def test_predictor_equals_monai_sliding_window(forms, form: str, config: InferenceConfig) -> None:
    image = _volume()
    predictor = Predictor(forms[form], regions=REGIONS, modality=["t1", "t2"], roi_size=ROI, config=config)
    got = predictor.region_probabilities(image)
    expected = _monai(_net(), image, config)  # MONAI on the eager net: one reference for every form
    assert got.shape == (len(REGIONS), *SHAPE[1:])
    torch.testing.assert_close(got, expected, atol=ATOL[form], rtol=0)


def test_the_settings_matter_on_this_volume() -> None:
    """The comparison above can fail: other overlap, blending, flips or one whole-volume pass give
    probabilities that differ from each setting's by far more than the tolerance."""
    image, net = _volume(), _net()
    results = [_monai(net, image, config) for config in SETTINGS]
    results.append(_monai(net, image, InferenceConfig(overlap=0.25, blend="constant")))
    results.append(_monai(net, image, InferenceConfig(overlap=0.25, blend="gaussian", tta_flips=True)))
    with torch.inference_mode():
        results.append(torch.sigmoid(net(image[None]))[0])  # no windows at all
    for i, a in enumerate(results):
        for b in results[i + 1 :]:
            assert (a - b).abs().max() > 100 * ATOL["onnx"]


def test_the_predictor_runs_several_padded_windows(forms) -> None:
    """Several windows per axis reach the network (counted there), each padded to the window size."""
    seen: list[tuple[int, ...]] = []

    class Counting(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return forms["eager"](x)

    config = InferenceConfig(overlap=0.25, sw_batch_size=1)
    Predictor(
        Counting(), regions=REGIONS, modality=["t1", "t2"], roi_size=ROI, config=config
    ).region_probabilities(_volume())
    # MONAI's scan: interval = 16 * 0.75 = 12 -> ceil((40 - 16) / 12) + 1 = 3 along X, ceil(17 / 12) + 1 = 3 along Y,
    # Z padded to 16: one window.
    assert len(seen) == 3 * 3 * 1 and set(seen) == {(1, 2, *ROI)}
