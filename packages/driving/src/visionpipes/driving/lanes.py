"""Lane-marking segmentation: a segmentation-models-pytorch network (its encoders, or a core backbone)
with three channel groups — category (8 lane types + background), style and direction — decoded into
the official bit-encoded lane PNG; its training (through `core.training.fit`), prediction at the
original image size, ONNX export, and the onnxruntime twin used by streams.

Weights are never downloaded (`encoder_weights=None`); a local checkpoint is the only way to start
from trained weights. Scoring belongs to `metrics`, file formats to `bdd100k`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionpipes.core.errors import UserError
from visionpipes.core.io import dataclass_from_params
from visionpipes.driving.bdd100k.categories import (
    LANE_BACKGROUND,
    LANE_CATEGORIES,
    LANE_DIRECTION_BIT,
    LANE_STYLE_BIT,
)
from visionpipes.driving.bdd100k.masks import decode_lane_mask, mask_name, write_mask

#: Channel groups of the network output: category (8 lane types, then background), style, direction.
CATEGORY_CHANNELS: int = len(LANE_CATEGORIES) + 1
STYLE_CHANNELS: int = 2
DIRECTION_CHANNELS: int = 2
LANE_CHANNELS: int = CATEGORY_CHANNELS + STYLE_CHANNELS + DIRECTION_CHANNELS
#: The category index of "no lane" in the network's category group.
BACKGROUND_CLASS: int = len(LANE_CATEGORIES)
#: Value of style/direction targets at background pixels (ignored by the loss).
IGNORE_INDEX: int = -100
ARCHITECTURES: tuple[str, ...] = ("Unet", "FPN", "DeepLabV3Plus")
#: Prefix that selects a `visionpipes.core.backbones` preset as the encoder (`core:resnet18`).
CORE_PREFIX = "core:"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass
class LaneModelConfig:
    """The lane network.

    Attributes:
        arch: smp architecture: `Unet`, `FPN` or `DeepLabV3Plus`.
        encoder: an smp encoder name (`resnet18`, `mobilenet_v2`, `tu-<timm name>`), or
            `core:<preset>` for a `visionpipes.core.backbones` preset, or `core:<spec file>` for a
            backbone spec file such as the `best_spec.yaml` of `vp-core search` (Unet and FPN only).
        encoder_spec: the spec of a `core:<spec file>` encoder, filled in when the config is read,
            so that a saved model never needs the file again.
        encoder_depth: encoder stages (3-5; Unet only; 5 for the others).
        decoder_channels: Unet decoder widths, one per encoder stage (None: smp's default).
        width: network input width (multiple of 32).
        height: network input height (multiple of 32).
        roi_top: fraction of the image rows, from the top, that the network never sees and that
            are predicted as background (sky and horizon: the `cut_height` of CULane-style lane
            detectors). The remaining rows are resized to `width` x `height`. 0: the whole image.
        join_gaps: decoding: join two pieces of a predicted lane of the same type that point at
            each other across a gap of at most this many times the longer piece's length (the
            gaps between dashes, which the annotation covers, and lanes hidden behind vehicles;
            see `join_lane_gaps`). 0: off.
        min_area: decoding, after the joins: drop pieces of one lane type smaller than this
            fraction of the image (specks; 0.0002 is 184 pixels at 1280x720). 0: off.
        vote: decoding, last: each connected piece of one lane type takes the style most of its
            pixels have (`vote_lane_style`).
    """

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_spec: dict[str, Any] | None = None
    encoder_depth: int = 5
    decoder_channels: list[int] | None = field(default_factory=lambda: [64, 32, 16, 16, 8])
    width: int = 320
    height: int = 192
    roi_top: float = 0.0
    join_gaps: float = 0.0
    min_area: float = 0.0
    vote: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "lane model config") -> LaneModelConfig:
        """Build from a mapping; unknown keys are an error.

        Raises:
            UserError: on an unknown key or an invalid value.
        """
        config = dataclass_from_params(cls, data, source=source)
        config.check(source)
        if config.encoder.startswith(CORE_PREFIX) and config.encoder_spec is None:
            from visionpipes.core.backbones import inline_spec_file

            try:
                spec = inline_spec_file(config.encoder[len(CORE_PREFIX) :])
            except ValueError as err:
                raise UserError(f"{source}: encoder {config.encoder}: {err}") from None
            config.encoder_spec = spec if isinstance(spec, dict) else None
        return config

    def check(self, source: str = "lane model config") -> None:
        """Raises: UserError when a value is invalid."""
        if self.arch not in ARCHITECTURES:
            raise UserError(f"{source}: arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}.")
        if self.width < 32 or self.height < 32 or self.width % 32 or self.height % 32:
            raise UserError(f"{source}: width and height must be multiples of 32, got {self.width}x{self.height}.")
        if not 0.0 <= self.roi_top < 1.0:
            raise UserError(f"{source}: roi_top must lie in [0, 1), got {self.roi_top}.")
        if not 0.0 <= self.join_gaps <= 20.0:
            raise UserError(f"{source}: join_gaps must lie in [0, 20] (0: off), got {self.join_gaps}.")
        if not 0.0 <= self.min_area < 0.1:
            raise UserError(f"{source}: min_area must lie in [0, 0.1) (a fraction of the image), got {self.min_area}.")
        if self.arch == "Unet" and not 3 <= self.encoder_depth <= 5:
            raise UserError(f"{source}: encoder_depth must lie in 3..5, got {self.encoder_depth}.")
        if self.arch != "Unet" and self.encoder_depth != 5:
            raise UserError(f"{source}: encoder_depth other than 5 is for Unet only.")
        if (
            self.decoder_channels is not None
            and self.arch == "Unet"
            and len(self.decoder_channels) != self.encoder_depth
        ):
            raise UserError(
                f"{source}: decoder_channels needs {self.encoder_depth} widths (one per encoder stage), "
                f"got {len(self.decoder_channels)}."
            )
        if self.encoder.startswith(CORE_PREFIX) and self.arch == "DeepLabV3Plus":
            raise UserError(f"{source}: core backbones have no dilated stride-16 mode; use Unet or FPN.")

    def decoding(self) -> dict[str, Any]:
        """The decoding settings, as keyword arguments of `lane_mask_from_logits`."""
        return {"roi_top": self.roi_top, "join_gaps": self.join_gaps, "min_area": self.min_area, "vote": self.vote}


def _spec_name(spec: str | Mapping[str, Any]) -> str:
    return spec if isinstance(spec, str) else str(spec.get("name", "spec"))


class CoreEncoder(nn.Module):
    """A `visionpipes.core` backbone in the shape smp decoders take: features at strides
    1, 2, 4, ..., 32 with fixed widths.

    The stride-1 feature is the input, the stride-2 one a 3x3/2 conv-norm-act of it, the others the
    backbone's stride-4..32 features, each projected by a 1x1 conv when its width differs from the
    template encoder's (the smp encoder whose decoder widths the model was built with).
    """

    def __init__(self, preset: str | Mapping[str, Any], out_channels: Sequence[int], in_channels: int = 3) -> None:
        super().__init__()
        from visionpipes.core.backbones import build_backbone
        from visionpipes.core.layers import ConvNormAct

        try:
            self.backbone = build_backbone(preset, in_channels=in_channels)
        except ValueError as err:
            raise UserError(f"lane encoder {CORE_PREFIX}{_spec_name(preset)}: {err}") from None
        if list(self.backbone.strides[-4:]) != [4, 8, 16, 32]:
            raise UserError(
                f"lane encoder {CORE_PREFIX}{_spec_name(preset)} returns strides {self.backbone.strides}; "
                "a lane model needs features at strides 4, 8, 16 and 32."
            )
        self._out_channels = list(out_channels)
        self._depth = len(self._out_channels) - 1
        self.stem2 = ConvNormAct(2, in_channels, self._out_channels[1], 3, 2)
        widths = self.backbone.out_channels[-4:]
        self.proj = nn.ModuleList(
            nn.Identity() if c == t else nn.Conv2d(c, t, 1) for c, t in zip(widths, self._out_channels[2:])
        )

    @property
    def out_channels(self) -> list[int]:
        return self._out_channels

    @property
    def output_stride(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)[-4:]
        return [x, self.stem2(x), *(p(f) for p, f in zip(self.proj, feats))]


class LaneNet(nn.Module):
    """RGB in [0, 1] (N, 3, H, W) -> lane logits (N, 13, H, W): 9 category, 2 style, 2 direction.

    The ImageNet normalisation is part of the network, so the exported graph takes plain [0, 1] RGB.
    """

    def __init__(self, config: LaneModelConfig) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        config.check()
        self.config = config
        core = config.encoder.startswith(CORE_PREFIX)
        template = "resnet18" if core else config.encoder
        kwargs: dict[str, Any] = {"encoder_name": template, "encoder_weights": None, "classes": LANE_CHANNELS}
        if config.arch == "Unet":
            kwargs["encoder_depth"] = config.encoder_depth
            if config.decoder_channels is not None:
                kwargs["decoder_channels"] = list(config.decoder_channels)
        if core and config.arch == "Unet" and config.encoder_depth != 5:
            raise UserError("core backbones need encoder_depth 5 (features down to stride 32).")
        arch = getattr(smp, config.arch)
        try:
            self.net = arch(**kwargs)
        except (KeyError, ValueError) as err:
            raise UserError(f"lane model {config.arch}/{config.encoder}: {err}") from None
        if core:
            self.net.encoder = CoreEncoder(
                config.encoder_spec or config.encoder[len(CORE_PREFIX) :], self.net.encoder.out_channels
            )
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_lane_model(config: LaneModelConfig | None = None) -> LaneNet:
    """A freshly initialised `LaneNet` (no weights are downloaded).

    Raises:
        UserError: on an unknown architecture or encoder.
    """
    return LaneNet(config or LaneModelConfig())


# --------------------------------------------------------------------------------------------------
# Targets and decoding
# --------------------------------------------------------------------------------------------------


def lane_targets(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a lane mask into the network's targets: category (0-7, 8 = background), and style and
    direction (0/1, `IGNORE_INDEX` at background pixels), each HxW int64."""
    mask = np.asarray(mask, dtype=np.uint8).astype(np.int64)
    background = ((mask >> 3) & 1).astype(bool)
    category = np.where(background, BACKGROUND_CLASS, mask & 0b111).astype(np.int64)
    style = np.where(background, IGNORE_INDEX, (mask >> LANE_STYLE_BIT) & 1).astype(np.int64)
    direction = np.where(background, IGNORE_INDEX, (mask >> LANE_DIRECTION_BIT) & 1).astype(np.int64)
    return category, style, direction


def roi_top_rows(height: int, roi_top: float) -> int:
    """The number of image rows above the region of interest (`LaneModelConfig.roi_top`)."""
    return round(height * roi_top)


def lane_mask_from_logits(
    logits: np.ndarray,
    size: tuple[int, int] | None = None,
    roi_top: float = 0.0,
    *,
    join_gaps: float = 0.0,
    min_area: float = 0.0,
    vote: bool = False,
) -> np.ndarray:
    """Decode one image's logits (13, h, w) into an official lane mask, resized to `size`.

    A pixel is a lane where the probabilities of the eight lane types together outweigh
    background (`lane_margin` > 0); its type, style and direction are each group's arg-max. The
    margin is resized bilinearly (OpenCV, half-pixel centres), so lane boundaries fall at sub-pixel
    precision of the network's grid; type, style and direction, decided on the network's grid,
    are resized to the nearest pixel (half-pixel centres): 13 channels never have to be resized.

    Args:
        logits: the network output for one image.
        size: (width, height) of the mask; default the logits' own size.
        roi_top: the model's `roi_top`: the logits cover the image below that fraction of its
            rows; the rows above are background in the mask.
        join_gaps, min_area, vote: the model's lane-level decoding (`LaneModelConfig`), applied in
            that order: `join_lane_gaps`, `drop_small_pieces`, `vote_lane_style`.

    Returns:
        An HxW uint8 lane mask (255 where no lane).
    """
    import cv2

    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[0] != LANE_CHANNELS:
        raise ValueError(f"lane logits must be ({LANE_CHANNELS}, h, w), got {logits.shape}.")
    margin = lane_margin(logits[:CATEGORY_CHANNELS])
    value = (
        logits[:BACKGROUND_CLASS].argmax(0)
        | (logits[CATEGORY_CHANNELS : CATEGORY_CHANNELS + 2].argmax(0) << LANE_STYLE_BIT)
        | (logits[CATEGORY_CHANNELS + 2 :].argmax(0) << LANE_DIRECTION_BIT)
    ).astype(np.uint8)
    top = 0
    if size is not None:
        top = roi_top_rows(size[1], roi_top)
        roi_size = (size[0], size[1] - top)
        if (margin.shape[1], margin.shape[0]) != roi_size:
            margin = cv2.resize(margin, roi_size, interpolation=cv2.INTER_LINEAR)
            value = cv2.resize(value, roi_size, interpolation=cv2.INTER_NEAREST_EXACT)
    mask = np.where(margin > 0, value, np.uint8(LANE_BACKGROUND))
    if join_gaps > 0:
        mask = join_lane_gaps(mask, max_gap_ratio=join_gaps)
    if min_area > 0:
        mask = drop_small_pieces(mask, round(min_area * mask.shape[1] * (mask.shape[0] + top)))
    if vote:
        mask = vote_lane_style(mask)
    if top:
        mask = np.concatenate([np.full((top, mask.shape[1]), LANE_BACKGROUND, np.uint8), mask])
    return mask


def lane_margin(category_logits: np.ndarray) -> np.ndarray:
    """(9, h, w) category logits -> (h, w) float32 log-odds of "some lane type" against background.

    Lane or not is decided on this marginal: P(any lane type) > P(background), that is
    logsumexp(lane logits) > background logit. A plain arg-max over the nine classes drops a lane
    whose probability is split between similar types (single vs double, white vs yellow).
    """
    lanes = np.asarray(category_logits[:BACKGROUND_CLASS], dtype=np.float32)
    best = lanes.max(axis=0)
    lane_lse = best + np.log(np.exp(lanes - best).sum(axis=0))
    return (lane_lse - category_logits[BACKGROUND_CLASS]).astype(np.float32)


def join_lane_gaps(
    mask: np.ndarray,
    *,
    max_gap_ratio: float = 3.0,
    min_cos: float = 0.95,
    min_pixels: int = 20,
    max_gap_fraction: float = 0.3,
) -> np.ndarray:
    """Join the pieces of each predicted lane across gaps: a copy of the lane mask with the joins drawn.

    BDD100K annotates a dashed line as one continuous polyline, and a lane as running on behind
    the vehicles that hide it; a segmentation network marks the painted dashes and the visible
    parts. Each connected piece of one lane type gets two ends, each with the direction of the
    piece near that end (principal axis of the pixels within a third of its length, at most 60
    px). Two ends of different pieces of the same type are joined by a straight band when each
    points at the other (cosine >= `min_cos` both ways) and the gap is at most `max_gap_ratio`
    times the longer piece and `max_gap_fraction` of the mask width; the closest pairs are joined
    first, each end at most once. The band is as wide as the thinner piece (pixels / length) and
    carries the first piece's most common mask value (type, style, direction); it only fills
    background pixels.

    Args:
        mask: an HxW uint8 lane mask (official encoding; 255 background).

    Returns:
        The joined mask (the input is not modified).
    """
    import cv2

    mask = np.asarray(mask, dtype=np.uint8)
    bits = decode_lane_mask(mask)
    lane = bits.background == 0
    if not lane.any():
        return mask.copy()
    labels = np.zeros(mask.shape, dtype=np.int32)  # the pieces of all types, numbered from 1
    piece_type: list[int] = []
    for lane_type, n, lab in _pieces_by_type(bits.category, lane):
        inside = lab > 0
        labels[inside] = lab[inside] + len(piece_type)
        piece_type += [lane_type] * (n - 1)
    ys, xs = np.nonzero(labels)
    k = labels[ys, xs] - 1
    pieces = len(piece_type)
    x, y = xs.astype(np.float64), ys.astype(np.float64)

    def axis(sel: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Per-piece pixel count, mean and principal direction (of the selected pixels)."""
        kk, xx, yy = (k, x, y) if sel is None else (k[sel], x[sel], y[sel])
        n = np.bincount(kk, minlength=pieces).astype(np.float64)
        safe = np.maximum(n, 1.0)
        mx, my = np.bincount(kk, xx, pieces) / safe, np.bincount(kk, yy, pieces) / safe
        dx, dy = xx - mx[kk], yy - my[kk]
        sxx, syy = np.bincount(kk, dx * dx, pieces), np.bincount(kk, dy * dy, pieces)
        sxy = np.bincount(kk, dx * dy, pieces)
        angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)
        return n, mx, my, np.cos(angle), np.sin(angle)

    count, mx, my, ux, uy = axis(None)
    t = (x - mx[k]) * ux[k] + (y - my[k]) * uy[k]
    t_min, t_max = np.full(pieces, np.inf), np.full(pieces, -np.inf)
    np.minimum.at(t_min, k, t)
    np.maximum.at(t_max, k, t)
    length = t_max - t_min
    width = count / np.maximum(length, 1.0)
    local = np.clip(length / 3, 3.0, 60.0)
    value = np.bincount(k * 256 + mask[ys, xs], minlength=pieces * 256).reshape(pieces, 256).argmax(1)

    ends, dirs = [], []
    for sign, sel in ((-1.0, t <= (t_min + local)[k]), (1.0, t >= (t_max - local)[k])):
        n, ex, ey, vx, vy = axis(sel)
        few = n < 5
        vx, vy = np.where(few, ux, vx), np.where(few, uy, vy)
        flip = np.where((vx * ux + vy * uy) * sign < 0, -1.0, 1.0)  # point out of the piece
        vx, vy = vx * flip, vy * flip
        reach = np.full(pieces, -np.inf)
        np.maximum.at(reach, k[sel], (x[sel] - ex[k[sel]]) * vx[k[sel]] + (y[sel] - ey[k[sel]]) * vy[k[sel]])
        ends.append(np.stack([ex + vx * reach, ey + vy * reach], 1))
        dirs.append(np.stack([vx, vy], 1))
    end = np.concatenate(ends)  # (2P, 2): the first ends of all pieces, then the second ends
    direction = np.concatenate(dirs)
    owner = np.tile(np.arange(pieces), 2)
    end_type = np.asarray(piece_type)[owner]
    valid = np.flatnonzero(np.tile(count >= min_pixels, 2))
    candidates: list[tuple[float, int, int]] = []
    for lane_type in np.unique(end_type[valid]):  # ends of one type, pairwise
        idx = valid[end_type[valid] == lane_type]
        gap = end[idx][None, :, :] - end[idx][:, None, :]  # gap[i, j] = end j - end i
        dist = np.hypot(gap[..., 0], gap[..., 1])
        longer = np.maximum(length[owner[idx]][:, None], length[owner[idx]][None, :])
        ok = (
            (owner[idx][:, None] < owner[idx][None, :])
            & (dist >= 1.0)
            & (dist <= np.minimum(max_gap_ratio * longer, max_gap_fraction * mask.shape[1]))
            & ((gap * direction[idx][:, None, :]).sum(-1) >= min_cos * dist)
            & ((-gap * direction[idx][None, :, :]).sum(-1) >= min_cos * dist)
        )
        ii, jj = np.nonzero(ok)
        candidates += zip(dist[ii, jj].tolist(), idx[ii].tolist(), idx[jj].tolist())
    out = mask.copy()
    canvas = np.full_like(mask, LANE_BACKGROUND)
    used: set[int] = set()
    for _, i, j in sorted(candidates):
        if i in used or j in used:
            continue
        used.update((i, j))
        a, b = owner[i], owner[j]
        thickness = max(1, round(float(min(width[a], width[b]))))
        p, q = (tuple(round(float(c)) for c in end[e]) for e in (i, j))
        cv2.line(canvas, p, q, int(value[a]), thickness)
    fill = (out == LANE_BACKGROUND) & (canvas != LANE_BACKGROUND)
    out[fill] = canvas[fill]
    return out


def _pieces_by_type(category: np.ndarray, pixels: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """The 8-connected pieces of each lane type among `pixels` (a boolean HxW selection), one type at
    a time: (type, number of labels with 0 for the other pixels, HxW int32 labels)."""
    import cv2

    for lane_type in np.unique(category[pixels]):
        n, labels = cv2.connectedComponents((pixels & (category == lane_type)).astype(np.uint8), connectivity=8)
        yield int(lane_type), n, labels


def drop_small_pieces(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """A copy of a lane mask without the connected pieces of one lane type smaller than `min_pixels`."""
    out = np.array(mask, dtype=np.uint8)
    bits = decode_lane_mask(out)
    for _, n, labels in _pieces_by_type(bits.category, bits.background == 0):
        small = np.flatnonzero(np.bincount(labels.ravel(), minlength=n) < min_pixels)
        small = small[small > 0]
        if len(small):
            out[np.isin(labels, small)] = LANE_BACKGROUND
    return out


def vote_lane_style(mask: np.ndarray) -> np.ndarray:
    """A copy of a lane mask in which each connected piece of one lane type has one style.

    A lane line has one style along its length (BDD100K labels each polyline once), but a pixel
    classifier changes its mind along the way (solid across a dash, dashed along a faded solid
    line). Each 8-connected piece of one type's "parallel" pixels takes the style most of its
    pixels have (crosswalk edges, the "vertical" ones, are left as they are). Types are not
    voted: where lanes of different types meet (a curb and a lane line at the horizon, a stop line
    on a lane), they touch, and one vote would relabel the smaller; on the real BDD100K fixture
    masks such a type vote moved the ground truth itself to F1_pix2 98.5, this style vote leaves
    it at 100.
    """
    out = np.array(mask, dtype=np.uint8)
    bits = decode_lane_mask(out)
    style_bit = np.uint8(1 << LANE_STYLE_BIT)
    for _, n, labels in _pieces_by_type(bits.category, (bits.background == 0) & (bits.direction == 0)):
        ys, xs = np.nonzero(labels)
        piece = labels[ys, xs]
        majority = np.bincount(piece, bits.style[ys, xs].astype(np.float64), n) * 2 > np.bincount(piece, minlength=n)
        out[ys, xs] = np.where(majority[piece], out[ys, xs] | style_bit, out[ys, xs] & ~style_bit)
    return out


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _read_bgr(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise UserError(f"image file {path} does not exist.")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"image file {path} is not a readable image.")
    return image


def to_network_input(images_bgr: Sequence[np.ndarray], size: tuple[int, int], roi_top: float = 0.0) -> np.ndarray:
    """BGR uint8 frames -> (N, 3, H, W) float32 RGB in [0, 1] at the network's `size` (width, height),
    from the rows below `roi_top` of each frame."""
    import cv2

    batch = [
        cv2.resize(img[roi_top_rows(img.shape[0], roi_top) :], size, interpolation=cv2.INTER_AREA)[:, :, ::-1].transpose(
            2, 0, 1
        )
        for img in images_bgr
    ]
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class LaneSample:
    """One training image and its lane mask."""

    image: Path
    mask: Path


def lane_samples(images_dir: str | os.PathLike, masks_dir: str | os.PathLike, limit: int = 0) -> list[LaneSample]:
    """Pair the images of a folder with their lane masks (`<stem>.png`); images without a mask are skipped.

    Raises:
        UserError: if a folder is missing or no image has a mask.
    """
    images, masks = Path(images_dir), Path(masks_dir)
    for folder, what in ((images, "image"), (masks, "lane mask")):
        if not folder.is_dir():
            raise UserError(f"{what} folder {folder} does not exist.")
    pairs = [
        LaneSample(img, masks / mask_name(img.name))
        for img in sorted(images.iterdir())
        if img.suffix.lower() in (".jpg", ".jpeg", ".png") and (masks / mask_name(img.name)).is_file()
    ]
    if not pairs:
        raise UserError(f"no image of {images} has a lane mask in {masks}.")
    return pairs[:limit] if limit > 0 else pairs


class LaneDataset(torch.utils.data.Dataset):
    """Images and lane masks resized to the network size, optionally cached in memory, with training
    augmentation (random horizontal flip — lane types are symmetric — and a random crop of rows).

    Args:
        samples: image/mask pairs.
        size: (width, height) of the network input.
        train: apply augmentation.
        crop_height: rows of each training crop (None: whole image).
        cache: keep the resized arrays in memory after the first read.
        roi_top: the model's `roi_top` (the rows above it are cut before resizing).
    """

    def __init__(
        self,
        samples: Sequence[LaneSample],
        size: tuple[int, int],
        *,
        train: bool = False,
        crop_height: int | None = None,
        cache: bool = True,
        roi_top: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        self.roi_top = roi_top
        self.size = tuple(size)
        self.train = train
        self.crop_height = crop_height if train and crop_height and crop_height < size[1] else None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        if self._cache is not None and index in self._cache:
            return self._cache[index]
        from visionpipes.driving.bdd100k.masks import read_mask

        sample = self.samples[index]
        image = _read_bgr(sample.image)
        mask = read_mask(sample.mask, expected_shape=image.shape[:2], kind="lane")
        top = roi_top_rows(image.shape[0], self.roi_top)
        image, mask = image[top:], mask[top:]
        image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)[:, :, ::-1]
        mask = cv2.resize(mask, self.size, interpolation=cv2.INTER_NEAREST)
        item = (np.ascontiguousarray(image), mask)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self._load(index)
        if self.train:
            rng = np.random.default_rng(torch.randint(0, 2**31 - 1, (1,)).item())
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if self.crop_height:
                top = int(rng.integers(0, self.size[1] - self.crop_height + 1))
                image = image[top : top + self.crop_height]
                mask = mask[top : top + self.crop_height]
        category, style, direction = lane_targets(mask)
        x = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy()).float() / 255.0
        return {
            "image": x,
            "category": torch.from_numpy(category),
            "style": torch.from_numpy(style),
            "direction": torch.from_numpy(direction),
        }


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class LaneTrainConfig:
    """How to train the lane model (the `lanes` section of params.yaml, beside `model` and `trainer`).

    Attributes:
        batch_size: images per batch.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        crop_height: rows of the random training crops at network size (None: whole images).
        dice_weight: weight of the multi-class Dice loss added to the category cross-entropy.
        background_weight: weight of the background class in the category cross-entropy (lane
            pixels weigh 1; below 1 counters the few-percent share of lane pixels).
        attribute_weight: weight of the style and direction cross-entropies (lane pixels only).
        workers: data-loader workers.
        cache: keep resized images in memory.
        limit: use at most this many training images (0: all).
    """

    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    crop_height: int | None = 128
    dice_weight: float = 1.0
    background_weight: float = 1.0
    attribute_weight: float = 0.5
    workers: int = 0
    cache: bool = True
    limit: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "lane training config") -> LaneTrainConfig:
        """Build from a mapping; unknown keys are an error.

        Raises:
            UserError: on an unknown key or a value out of range.
        """
        config = dataclass_from_params(cls, data, source=source)
        if config.batch_size < 1 or config.lr <= 0:
            raise UserError(f"{source}: batch_size must be >= 1 and lr > 0.")
        for name in ("dice_weight", "background_weight", "attribute_weight"):
            if getattr(config, name) < 0:
                raise UserError(f"{source}: {name} must be >= 0, got {getattr(config, name)}.")
        return config


def _time_cosine(step: int, *, warmup: int, total_steps: int, start: float, budget_s: float | None) -> float:
    """LR factor: linear warm-up, then cosine decay over the larger of step and wall-clock progress."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if budget_s:
        progress = max(progress, (time.monotonic() - start) / budget_s)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _max_time_seconds(max_time: str | None) -> float | None:
    """`DD:HH:MM:SS` -> seconds."""
    if not max_time:
        return None
    parts = [float(p) for p in str(max_time).split(":")]
    seconds = 0.0
    for part, unit in zip(reversed(parts), (1, 60, 3600, 86400)):
        seconds += part * unit
    return seconds


def _lightning_module() -> type:
    """The LightningModule class (built lazily so importing this module does not import Lightning)."""
    import lightning

    class LaneModule(lightning.LightningModule):
        """Trains a `LaneNet`: category CE + Dice, style/direction CE on lane pixels."""

        def __init__(
            self, model_config: dict[str, Any], train_config: dict[str, Any], total_steps: int, budget_s: float | None
        ) -> None:
            super().__init__()
            import segmentation_models_pytorch as smp

            self.save_hyperparameters()
            self.model = build_lane_model(LaneModelConfig(**model_config))
            self.train_config = LaneTrainConfig(**train_config)
            self.total_steps = total_steps
            self.budget_s = budget_s
            self.dice = smp.losses.DiceLoss("multiclass", from_logits=True)
            weights = torch.ones(CATEGORY_CHANNELS)
            weights[BACKGROUND_CLASS] = self.train_config.background_weight
            self.register_buffer("class_weights", weights, persistent=False)
            self._start = time.monotonic()
            self._val: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(batch["image"])
            cat = out[:, :CATEGORY_CHANNELS]
            style = out[:, CATEGORY_CHANNELS : CATEGORY_CHANNELS + 2]
            direction = out[:, CATEGORY_CHANNELS + 2 :]
            ce = nn.functional.cross_entropy
            loss = ce(cat, batch["category"], weight=self.class_weights) + self.train_config.dice_weight * self.dice(cat, batch["category"])
            lane = batch["style"] != IGNORE_INDEX
            if lane.any():
                attr = ce(style, batch["style"], ignore_index=IGNORE_INDEX) + ce(
                    direction, batch["direction"], ignore_index=IGNORE_INDEX
                )
                loss = loss + self.train_config.attribute_weight * attr
            return loss, cat

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss, _ = self._losses(batch)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"]))
            return loss

        def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
            loss, cat = self._losses(batch)
            lanes = cat[:, :BACKGROUND_CLASS].float()
            is_lane = lanes.logsumexp(1) > cat[:, BACKGROUND_CLASS].float()  # as `lane_mask_from_logits` decodes
            pred = torch.where(is_lane, lanes.argmax(1), BACKGROUND_CLASS)
            gt = batch["category"]
            # lane pixels whose category is right, for a cheap F1 of "lane of the right type"
            tp = ((pred == gt) & (gt != BACKGROUND_CLASS)).sum()
            n_pred = (pred != BACKGROUND_CLASS).sum()
            n_gt = (gt != BACKGROUND_CLASS).sum()
            self._val.append(torch.stack([tp, n_pred, n_gt]).float())
            self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(batch["image"]))

        def on_validation_epoch_end(self) -> None:
            if not self._val:
                return
            tp, n_pred, n_gt = torch.stack(self._val).sum(0)
            self._val.clear()
            f1 = 2 * tp / (n_pred + n_gt).clamp(min=1)
            self.log("val/lane_f1", f1, prog_bar=True)

        def on_train_start(self) -> None:
            self._start = time.monotonic()

        def configure_optimizers(self) -> dict[str, Any]:
            config = self.train_config
            optimizer = torch.optim.AdamW(self.parameters(), lr=config.lr, weight_decay=config.weight_decay)

            def factor(step: int) -> float:
                return _time_cosine(
                    step,
                    warmup=config.warmup_steps,
                    total_steps=self.total_steps,
                    start=self._start,
                    budget_s=self.budget_s,
                )

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return LaneModule


@dataclass
class LaneRun:
    """What `train_lanes` produced."""

    model_path: Path
    checkpoint: Path | None
    metrics: dict[str, float]
    epochs: int
    seconds: float


def save_lane_model(path: str | os.PathLike, model: LaneNet, extra: Mapping[str, Any] | None = None) -> None:
    """Save a lane model as `{config, state_dict, extra}` (atomically).

    Raises:
        UserError: if the folder does not exist.
    """
    from visionpipes.core.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"config": asdict(model.config), "state_dict": model.state_dict(), "extra": dict(extra or {})}, tmp)


def load_lane_model(path: str | os.PathLike) -> LaneNet:
    """Load a lane model saved by `save_lane_model`, in eval mode.

    Raises:
        UserError: if the file is missing or is not a lane model.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"lane model {path} does not exist.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        model = build_lane_model(LaneModelConfig(**data["config"]))
        model.load_state_dict(data["state_dict"])
    except (KeyError, TypeError, RuntimeError, OSError, EOFError) as err:
        raise UserError(f"{path} is not a lane model saved by visionpipes ({err}).") from None
    return model.eval()


def train_lanes(
    train_samples: Sequence[LaneSample],
    val_samples: Sequence[LaneSample] | None,
    out_dir: str | os.PathLike,
    *,
    model_config: LaneModelConfig | None = None,
    train_config: LaneTrainConfig | None = None,
    trainer_config: Any = None,
) -> LaneRun:
    """Train a lane model with `visionpipes.core.training.fit` (Lightning + DVCLive) into `out_dir`.

    Writes `out_dir/checkpoints/` (Lightning), `out_dir/dvclive/` (metrics and plots) and
    `out_dir/lane_model.pt` (the weights of the best checkpoint, or the last one).

    Args:
        train_samples: training pairs.
        val_samples: validation pairs (None: no validation).
        out_dir: output folder.
        model_config: the network.
        train_config: batch size, LR, augmentation.
        trainer_config: a `core.training.TrainConfig` (epochs, time budget, device, logger).

    Raises:
        UserError: on missing or unreadable images and masks.
    """
    from visionpipes.core.training import TrainConfig, fit, seed_everything

    model_config = model_config or LaneModelConfig()
    model_config.check()
    train_config = train_config or LaneTrainConfig()
    trainer_config = trainer_config or TrainConfig(max_epochs=10)
    if not train_samples:
        raise UserError("no training images with lane masks.")
    if train_config.limit:
        train_samples = list(train_samples)[: train_config.limit]
    seed_everything(trainer_config.seed)
    size = (model_config.width, model_config.height)
    roi = model_config.roi_top
    train_ds = LaneDataset(
        train_samples, size, train=True, crop_height=train_config.crop_height, cache=train_config.cache, roi_top=roi
    )
    loader_kw = {"num_workers": train_config.workers, "persistent_workers": train_config.workers > 0}
    train_dl = torch.utils.data.DataLoader(
        train_ds, batch_size=train_config.batch_size, shuffle=True, drop_last=len(train_ds) > train_config.batch_size, **loader_kw
    )
    val_dl = None
    if val_samples:
        val_ds = LaneDataset(val_samples, size, cache=train_config.cache, roi_top=roi)
        val_dl = torch.utils.data.DataLoader(val_ds, batch_size=train_config.batch_size, **loader_kw)
    steps = max(1, len(train_dl)) * max(1, trainer_config.max_epochs)
    if trainer_config.max_steps and trainer_config.max_steps > 0:
        steps = min(steps, trainer_config.max_steps)
    module = _lightning_module()(
        asdict(model_config), asdict(train_config), steps, _max_time_seconds(trainer_config.max_time)
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = fit(module, train_dl, val_dl, config=trainer_config, out_dir=out)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    model = module.model.cpu().eval()
    save_lane_model(out / "lane_model.pt", model, {"metrics": result.metrics, "epochs": result.epochs})
    return LaneRun(out / "lane_model.pt", checkpoint, result.metrics, result.epochs, result.seconds)


# --------------------------------------------------------------------------------------------------
# Prediction and export
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def predict_lane_logits(model: LaneNet, images_bgr: Sequence[np.ndarray], device: str = "cpu") -> np.ndarray:
    """The network's logits (N, 13, H, W) at its own input size for BGR frames."""
    size = (model.config.width, model.config.height)
    x = torch.from_numpy(to_network_input(images_bgr, size, model.config.roi_top)).to(device)
    return model.to(device).eval()(x).float().cpu().numpy()


def predict_lane_masks(
    model: LaneNet,
    images: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    device: str = "cpu",
) -> list[Path]:
    """Predict the lane mask of each image and write it as `<out_dir>/<stem>.png` at the image's size.

    Raises:
        UserError: if an image is missing or unreadable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in images]
    written = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        frames = [_read_bgr(p) for p in chunk]
        logits = predict_lane_logits(model, frames, device)
        for path, frame, lg in zip(chunk, frames, logits):
            target = out / mask_name(path.name)
            size = (frame.shape[1], frame.shape[0])
            write_mask(target, lane_mask_from_logits(lg, size, **model.config.decoding()))
            written.append(target)
    return written


def export_lane_onnx(model: LaneNet, path: str | os.PathLike, *, atol: float = 1e-4, rtol: float = 1e-4) -> Any:
    """Export a lane model to ONNX with the core parity check (batch axis dynamic).

    The graph takes `images` (N, 3, H, W) RGB in [0, 1] at the model's size and returns `logits`
    (N, 13, H, W); `lane_mask_from_logits` decodes them. The model's `roi_top` and lane-level
    decoding settings (`LaneModelConfig.decoding`) are stored in the file's metadata, so
    `OnnxLaneModel` crops frames as the model was trained and decodes as the eager model does.

    Raises:
        ExportParityError: if onnxruntime disagrees with the eager model (no file is written).
    """
    from visionpipes.core.export import export_onnx

    example = torch.rand(1, 3, model.config.height, model.config.width)
    return export_onnx(
        model.cpu().eval(),
        example,
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        atol=atol,
        rtol=rtol,
        metadata={key: repr(float(value)) for key, value in model.config.decoding().items()},
    )


class OnnxLaneModel:
    """The exported lane model under onnxruntime: BGR frames in, official lane masks out.

    Raises:
        UserError: if the file is missing or not loadable.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        from visionpipes.core.export import OnnxRunner

        self.runner = OnnxRunner(path, threads=threads)
        shape = self.runner.session.get_inputs()[0].shape
        self.size = (int(shape[3]), int(shape[2]))
        self.decoding = {key: self._metadata_number(path, key) for key in LaneModelConfig().decoding()}
        self.decoding["vote"] = bool(self.decoding["vote"])
        self.roi_top = self.decoding["roi_top"]

    def _metadata_number(self, path: str | os.PathLike, key: str) -> float:
        try:
            return float(self.runner.metadata.get(key, 0.0))
        except ValueError:
            raise UserError(f"lane model {path}: metadata {key} is not a number.") from None

    def logits(self, frames_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 13, H, W) logits at the network size."""
        (out,) = self.runner(to_network_input(frames_bgr, self.size, self.roi_top))
        return out

    def __call__(self, frames_bgr: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One lane mask per frame, at the frame's size."""
        frames = list(frames_bgr)
        if not frames:
            return []
        return [
            lane_mask_from_logits(lg, (f.shape[1], f.shape[0]), **self.decoding)
            for lg, f in zip(self.logits(frames), frames)
        ]
