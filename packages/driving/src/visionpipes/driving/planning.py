"""`vp-driving plan`: the driving settings that follow from the data and the hardware (issue #13 part 1).

A **fingerprint** of a BDD100K-format folder (the raw folder `vp-driving data` writes, or a real copy):
image count per split; a histogram of image sizes from file headers only (PIL reads the header, not
the pixels) on an evenly spaced sample of at most `sample_images` images per split; boxes per image,
box sizes (side = sqrt(w*h) at the native size, and relative to the image side sqrt(W*H)), the COCO
size classes (small < 32², medium < 96², large) and class frequencies, from the train split's
detection JSON (every box: it is text); and from an evenly spaced sample of at most `sample_masks`
lane masks of the train split: the lane-pixel share, the rows lanes occupy and the lane stroke width
(median horizontal run of lane pixels). Measured on this 2-core machine with a BDD100K-sized folder
(70,000 + 10,000 real 1280x720 JPEGs, a 258 MB det JSON of 70,000 frames and 1.26M boxes, 70,000 lane
masks): `vp-driving plan` takes 65 s and 1.9 GB peak RSS, of which parsing the JSON is 29 s, the box
statistics 6 s, the 200 masks 10 s, listing the folders 3 s and the 2,000 headers 0.3 s.

The **plan** (dotted `params.yaml` keys; `auto` there takes them, an explicit value wins and is
recorded in `Plan.overridden`):

- `det.imgsz`: the size at which three quarters of the boxes (the 25th percentile side) span at least
  8 pixels, YOLO's finest stride (`TARGET_BOX_PX`), a multiple of 32 between 320 and the native long
  side, capped by what the device affords: on CPU 320 px at 2 cores (the demo's measured budget),
  growing with sqrt(cores/2) up to 640; on CUDA the largest size at which the batch still holds
  ultralytics' default of 16 images.
- `det.batch`: on CUDA ultralytics' auto-batch rule (`ultralytics/utils/autobatch.py`): memory is linear
  in the batch, `mem(b) = fixed + b * per_image`, and the batch is the largest that fills 60 % of the
  device's memory, clamped to [1, 1024] and to the number of training images. Ultralytics fits
  `per_image` by profiling on the GPU; a plan made for a GPU that is not here uses a documented
  estimate instead: the activations autograd saves for one 320-px image of yolov8n in a training
  forward pass, measured on this CPU with `torch.autograd.graph.saved_tensors_hooks` (45 MiB in
  fp32), x (imgsz/320)², x the model scale's width x depth relative to `n`, x 0.5 for AMP's fp16, x 2
  for gradients and allocator slack; `fixed` = 1 GiB (CUDA context, weights, AdamW state). On CPU
  ultralytics' auto-batch returns its default; the plan keeps 8 per 2 cores (4 x cores, 8..32).
- `det.workers`, `lanes.train.workers`: ultralytics' `min(cores / GPUs, 8)`; lanes load in-process
  (0) on 2 cores, `min(cores / 2, 8)` above.
- `lanes.model.roi_top`: the row (multiple of 0.05) above which at most 1 % of the sampled lane pixels
  lie; `lanes.model.width`: wide enough that the median lane stroke keeps 2.5 pixels, at least 448 on
  CPU (the demo's) and 640 on CUDA (half of BDD100K's width), at most the native width and on CPU
  448 x sqrt(cores/2); `lanes.model.height`: the ROI's rows at that scale, a multiple of 32.
- `lanes.train.batch_size`: 4 x cores on CPU (8..32); on CUDA the same memory rule as the detector
  with the lane network's measured 58 MiB per 448x160 image (fp32 saved activations, scaled by pixels),
  at most 32 (the learning rate is tuned for small batches).
- `det.time_minutes`, `lanes.trainer.max_time`: epochs x training images / throughput. CPU throughput
  is this machine's measured demo rate per core (detector 5.5 images/s/core at 320 px, lanes 4
  images/s/core at 448x160, scaled by pixels); CUDA rates are estimates for one data-centre GPU
  (detector 800 images/s at 640 px, lanes 400 images/s at 640x224). Epochs: 10 (detector) and 15
  (lanes) on CPU, the demo's; 100 and 40 on CUDA (ultralytics' default; the lane model's
  `max_epochs`), bounded to 24 hours.

Reads files only; never writes into the data folder, never imports torch or ultralytics.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from visionpipes.core.errors import UserError
from visionpipes.core.plan import Plan
from visionpipes.driving.bdd100k.categories import DET_CATEGORIES, LANE_BACKGROUND_BIT, resolve_det_category
from visionpipes.driving.prepare import SPLITS, resolve_root

__all__ = ["PLANNED_KEYS", "fingerprint_bdd100k", "make_plan", "plan_values", "resolve_section"]

#: Planned keys, per params.yaml section (the keys that may be `auto` there).
PLANNED_KEYS: dict[str, tuple[str, ...]] = {
    "det": ("imgsz", "batch", "workers", "time_minutes"),
    "lanes": (
        "model.width",
        "model.height",
        "model.roi_top",
        "train.batch_size",
        "train.workers",
        "trainer.max_time",
    ),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO's size classes, at the native size
#: Pixels the 25th-percentile box side should span at the detector's input: YOLO's finest stride.
TARGET_BOX_PX = 8
#: Saved training activations of yolov8n for one 320-px image, fp32 (MiB), measured on this CPU.
DET_MIB_PER_IMAGE_320 = 45.0
#: Width x depth multipliers of the ultralytics scales, relative to `n` (activations scale with them).
MODEL_SCALE = {"n": 1.0, "s": 2.0, "m": 6.0, "l": 12.0, "x": 15.0}
#: Saved training activations of the lane Unet (resnet18 encoder) for one 448x160 image, fp32 (MiB).
LANE_MIB_PER_IMAGE = 58.0
LANE_REF_PIXELS = 448 * 160
FIXED_GIB = 1.0  # CUDA context, weights and optimizer state
MEMORY_FRACTION = 0.6  # ultralytics' auto-batch default
AMP_FACTOR, SLACK_FACTOR = 0.5, 2.0
#: Throughput (images/s). CPU: measured per core in the demo (2 cores); CUDA: estimates.
CPU_DET_PER_CORE_320, CPU_LANES_PER_CORE = 5.5, 4.0
CUDA_DET_640, CUDA_LANES_640x224 = 800.0, 400.0
EPOCHS = {"cpu": {"det": 10, "lanes": 15}, "cuda": {"det": 100, "lanes": 40}}
MAX_MINUTES = 24 * 60


def _evenly(items: list[Any], n: int) -> list[Any]:
    """At most `n` items spread evenly over `items` (all of them when there are fewer)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _percentiles(values: Any, qs: tuple[int, ...] = (5, 25, 50, 75, 95)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(arr, q)), 4) for q in qs}


def _image_files(folder: Path) -> list[Path]:
    return (
        sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    )


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # reads the header only
            return img.size
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"image {path} is not a readable image ({err}).") from None


def _read_frames(path: Path) -> list[dict[str, Any]]:
    """The frames of a det JSON (Scalabel: a list of frames, or `{"frames": [...]}`)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"detection labels {path} are not readable JSON ({err}).") from None
    if isinstance(data, dict):
        data = data.get("frames")
    if not isinstance(data, list):
        raise UserError(f"detection labels {path} hold no list of frames.")
    return data


def _box_statistics(
    frames: list[dict[str, Any]], image_size: tuple[int, int], source: Path
) -> dict[str, Any]:
    width, height = image_size
    sides, per_image = [], []
    classes: Counter[str] = Counter()
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise UserError(f"detection labels {source}: frame {index} is not a mapping.")
        count = 0
        for label in frame.get("labels") or []:
            box = label.get("box2d") if isinstance(label, dict) else None
            if not isinstance(box, dict):
                continue
            resolved = resolve_det_category(str(label.get("category", "")))
            if resolved is None or resolved[1]:
                classes["(other or ignored)"] += 1
                continue
            try:
                w = float(box["x2"]) - float(box["x1"])
                h = float(box["y2"]) - float(box["y1"])
            except (KeyError, TypeError, ValueError):
                raise UserError(
                    f"detection labels {source}: frame {index} ({frame.get('name')}) has a bad box2d."
                ) from None
            sides.append(math.sqrt(max(w, 0.0) * max(h, 0.0)))
            classes[resolved[0]] += 1
            count += 1
        per_image.append(count)
    side = np.asarray(sides, dtype=np.float64)
    area = side**2
    n = max(len(side), 1)
    return {
        "frames": len(frames),
        "boxes": len(side),
        "boxes_per_image": {
            "mean": round(float(np.mean(per_image)) if per_image else 0.0, 3),
            **_percentiles(per_image),
        },
        "box_side_px": _percentiles(side),
        "box_side_relative": _percentiles(side / math.sqrt(width * height)) if len(side) else {},
        "size_share": {
            "small": round(float((area < SMALL_AREA).sum()) / n, 4),
            "medium": round(float(((area >= SMALL_AREA) & (area < MEDIUM_AREA)).sum()) / n, 4),
            "large": round(float((area >= MEDIUM_AREA).sum()) / n, 4),
        },
        "classes": {name: classes.get(name, 0) for name in DET_CATEGORIES}
        | ({"(other or ignored)": classes["(other or ignored)"]} if classes["(other or ignored)"] else {}),
    }


def _lane_statistics(masks: list[Path]) -> dict[str, Any] | None:
    from PIL import Image, UnidentifiedImageError

    if not masks:
        return None
    bins = 100
    rows = np.zeros(bins, dtype=np.float64)
    lane_pixels = total = 0
    runs: list[np.ndarray] = []
    for path in masks:
        try:
            with Image.open(path) as img:
                mask = np.asarray(img)
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            ImportError,
        ) as err:  # ImportError: ultralytics' Image.open patch (pi-heif)
            raise UserError(f"lane mask {path} is not a readable image ({err}).") from None
        if mask.ndim != 2:
            raise UserError(f"lane mask {path} must be single-channel (got shape {mask.shape}).")
        lane = ((mask >> LANE_BACKGROUND_BIT) & 1) == 0
        lane_pixels += int(lane.sum())
        total += lane.size
        per_row = lane.sum(axis=1).astype(np.float64)
        np.add.at(rows, (np.arange(lane.shape[0]) * bins) // lane.shape[0], per_row)
        diff = np.diff(np.pad(lane, ((0, 0), (1, 1))).astype(np.int8), axis=1)
        starts, ends = np.nonzero(diff == 1)[1], np.nonzero(diff == -1)[1]
        runs.append(ends - starts)
    cumulative = np.cumsum(rows) / max(rows.sum(), 1.0)
    first = int(np.searchsorted(cumulative, 0.01, side="right")) / bins if rows.sum() else 0.0
    run = np.concatenate(runs) if runs else np.zeros(0)
    return {
        "masks": len(masks),
        "lane_pixel_share": round(lane_pixels / max(total, 1), 6),
        "rows_above_hold_1pct": round(first, 2),  # fraction of the height above which 1 % of lane pixels lie
        "stroke_px": round(float(np.median(run)), 2) if run.size else None,
    }


def fingerprint_bdd100k(
    raw_dir: str | os.PathLike, *, sample_images: int = 1000, sample_masks: int = 200
) -> dict[str, Any]:
    """The statistics the plan is made from (see the module docstring for what is sampled).

    Raises:
        UserError: if the folder is not a raw folder / BDD100K root, or a label file, image header or
            mask is unreadable (naming the file).
    """
    if not Path(raw_dir).is_dir():
        raise UserError(f"data folder {raw_dir} does not exist.")
    root, kind = resolve_root(raw_dir)
    images: dict[str, int] = {}
    sizes: Counter[str] = Counter()
    sampled = 0
    for split in SPLITS:
        files = _image_files(root / "images" / "100k" / split)
        images[split] = len(files)
        for path in _evenly(files, sample_images):
            w, h = _header_size(path)
            sizes[f"{w}x{h}"] += 1
            sampled += 1
    if not images["train"]:
        raise UserError(f"{root / 'images' / '100k' / 'train'} holds no .jpg/.png image.")
    native = tuple(int(v) for v in sizes.most_common(1)[0][0].split("x"))
    det_json = root / "labels" / "det_20" / "det_train.json"
    boxes = _box_statistics(_read_frames(det_json), native, det_json)  # type: ignore[arg-type]
    masks = _evenly(_image_files(root / "labels" / "lane" / "masks" / "train"), sample_masks)
    return {
        "source": kind,
        "images": images,
        "image_sizes": dict(sorted(sizes.items())),
        "native_size": list(native),
        "boxes": boxes,
        "lanes": _lane_statistics(masks),
        "sampled": {
            "image_headers": sampled,
            "lane_masks": len(masks),
            "note": f"image sizes from the headers of at most {sample_images} images per split, lane statistics "
            f"from at most {sample_masks} train masks (evenly spaced); box statistics from every train box",
        },
    }


def _ceil32(x: float) -> int:
    return max(32, math.ceil(x / 32.0) * 32)


def _floor32(x: float) -> int:
    return max(32, int(x // 32) * 32)


def _memory_batch(per_image_gib: float, memory_gb: float, limit: int) -> int:
    """Ultralytics' auto-batch rule: the largest batch with `fixed + b * per_image` <= 60 % of memory."""
    b = int((memory_gb * MEMORY_FRACTION - FIXED_GIB) / per_image_gib)
    return max(1, min(b, 1024, limit))


def _model_scale(model: str) -> float:
    stem = Path(model).stem.lower()  # yolov8n, yolo11s, ...
    return MODEL_SCALE.get(stem[-1], MODEL_SCALE["n"]) if stem.startswith("yolo") else MODEL_SCALE["n"]


def _det_gib_per_image(imgsz: int, model: str) -> float:
    return DET_MIB_PER_IMAGE_320 * (imgsz / 320) ** 2 * _model_scale(model) * AMP_FACTOR * SLACK_FACTOR / 1024


def _minutes(epochs: int, images: int, per_second: float) -> float:
    return min(MAX_MINUTES, max(0.5, round(epochs * images / per_second / 60 * 2) / 2))


def plan_values(
    fingerprint: dict[str, Any], hardware: Any, *, model: str = "yolov8n.yaml"
) -> tuple[dict[str, Any], dict[str, str]]:
    """`(values, reasons)` of the driving plan for a fingerprint on `hardware` (`core.hardware.Hardware`)."""
    cuda = hardware.device == "cuda"
    cores = max(1, int(hardware.cpu_cores))
    gpus = max(1, int(getattr(hardware, "gpus", 1) or 1))
    memory = float(hardware.memory_gb)
    train = int(fingerprint["images"]["train"])
    width, height = fingerprint["native_size"]
    long_side = max(width, height)
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}

    # Detector size: 75 % of the boxes span >= TARGET_BOX_PX pixels at the input, within what the device affords.
    p25 = fingerprint["boxes"]["box_side_px"].get("p25") or long_side
    wanted = min(_ceil32(long_side * TARGET_BOX_PX / max(p25, 1e-6)), _ceil32(long_side))
    wanted = max(320, wanted)
    if cuda:
        afford = 320
        for size in range(320, _ceil32(long_side) + 1, 32):
            if _memory_batch(_det_gib_per_image(size, model), memory, 1 << 30) >= 16:
                afford = size
    else:
        afford = min(640, max(320, _floor32(320 * math.sqrt(cores / 2))))
    values["det.imgsz"] = min(wanted, afford)
    small = fingerprint["boxes"]["size_share"]["small"]
    reasons["det.imgsz"] = (
        f"25th-percentile box side {p25:g} px at {long_side} px: {wanted} px makes it >= {TARGET_BOX_PX} px "
        f"({small:.0%} of boxes are small, < 32²); the {'GPU memory' if cuda else f'{cores}-core CPU'} affords {afford}"
    )
    if cuda:
        per = _det_gib_per_image(values["det.imgsz"], model)
        values["det.batch"] = _memory_batch(per, memory, train)
        reasons["det.batch"] = (
            f"ultralytics' auto-batch rule: {FIXED_GIB:g} GiB + b x {per:.3f} GiB <= {MEMORY_FRACTION:.0%} of {memory:g} GB, "
            f"at most {train} training images (estimated memory model, see visionpipes.driving.planning)"
        )
    else:
        values["det.batch"] = max(1, min(max(8, min(32, 4 * cores)), train))
        reasons["det.batch"] = f"CPU: 4 x {cores} cores (8..32); ultralytics' auto-batch applies to CUDA only"
    values["det.workers"] = min(cores // gpus if cuda else cores, 8)
    reasons["det.workers"] = "ultralytics: min(cores / GPUs, 8)"

    # Lanes: ROI from where lanes are, width from the stroke, height from the ROI.
    lanes = fingerprint.get("lanes") or {}
    roi = lanes.get("rows_above_hold_1pct")
    roi_top = 0.4 if roi is None else min(0.6, math.floor(roi * 20 + 1e-9) / 20)
    values["lanes.model.roi_top"] = round(roi_top, 2)
    reasons["lanes.model.roi_top"] = (
        "no lane masks: the default (top 40 % is sky)"
        if roi is None
        else f"at most 1 % of the lane pixels lie above row {roi:g} of the height"
    )
    stroke = lanes.get("stroke_px") or 8.0
    need = _ceil32(width * 2.5 / stroke)
    base = 640 if cuda else 448
    cap = _floor32(width) if cuda else min(_floor32(width), max(448, _floor32(448 * math.sqrt(cores / 2))))
    lane_w = min(max(need, base), cap)
    lane_h = _ceil32((1 - roi_top) * height * lane_w / width)
    values["lanes.model.width"], values["lanes.model.height"] = lane_w, lane_h
    reasons["lanes.model.width"] = (
        f"median lane stroke {stroke:g} px keeps 2.5 px at {need}; at least {base}, at most {cap} on this device"
    )
    reasons["lanes.model.height"] = (
        f"the ROI's {round((1 - roi_top) * height)} rows at the width's scale, a multiple of 32"
    )
    pixels = lane_w * lane_h
    if cuda:
        per = LANE_MIB_PER_IMAGE * pixels / LANE_REF_PIXELS * AMP_FACTOR * SLACK_FACTOR / 1024
        values["lanes.train.batch_size"] = _memory_batch(per, memory, min(32, train))
        reasons["lanes.train.batch_size"] = f"memory rule with {per:.3f} GiB per image, at most 32"
    else:
        values["lanes.train.batch_size"] = max(1, min(max(8, min(32, 4 * cores)), train))
        reasons["lanes.train.batch_size"] = f"CPU: 4 x {cores} cores (8..32)"
    values["lanes.train.workers"] = 0 if cores <= 2 else min(cores // 2, 8)
    reasons["lanes.train.workers"] = "in-process loading on 2 cores, else min(cores / 2, 8)"

    # Time budgets: epochs x images / throughput.
    kind = "cuda" if cuda else "cpu"
    if cuda:
        det_rate = CUDA_DET_640 * (640 / values["det.imgsz"]) ** 2 * gpus
        lane_rate = CUDA_LANES_640x224 * (640 * 224) / pixels * gpus
    else:
        det_rate = CPU_DET_PER_CORE_320 * cores * (320 / values["det.imgsz"]) ** 2
        lane_rate = CPU_LANES_PER_CORE * cores * LANE_REF_PIXELS / pixels
    values["det.time_minutes"] = _minutes(EPOCHS[kind]["det"], train, det_rate)
    lane_minutes = _minutes(EPOCHS[kind]["lanes"], train, lane_rate)
    seconds = round(lane_minutes * 60)
    values["lanes.trainer.max_time"] = (
        f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    )
    reasons["det.time_minutes"] = f"{EPOCHS[kind]['det']} epochs x {train} images at ~{det_rate:.0f} images/s"
    reasons["lanes.trainer.max_time"] = (
        f"{EPOCHS[kind]['lanes']} epochs x {train} images at ~{lane_rate:.0f} images/s"
    )
    return values, reasons


def make_plan(
    raw_dir: str | os.PathLike,
    hardware: Any,
    *,
    params: dict[str, Any] | None = None,
    sample_images: int = 1000,
    sample_masks: int = 200,
) -> Plan:
    """Fingerprint `raw_dir` and plan for `hardware`; `params` (the whole params.yaml) records the
    planned keys it sets explicitly and gives the detector model (`det.model`)."""
    fingerprint = fingerprint_bdd100k(raw_dir, sample_images=sample_images, sample_masks=sample_masks)
    model = str(((params or {}).get("det") or {}).get("model") or "yolov8n.yaml")
    values, reasons = plan_values(fingerprint, hardware, model=model)
    return Plan.make(
        "driving", values, hardware=hardware, fingerprint=fingerprint, reasons=reasons, params=params
    )


def resolve_section(
    section: dict[str, Any], plan_path: str | os.PathLike | None, name: str, *, source: str
) -> tuple[dict[str, Any], Plan | None]:
    """The params section `name` (`det` or `lanes`) with its `auto` planned keys taken from the plan
    file (`core.plan.resolve_auto`), and the plan (None without `plan_path`).

    Raises:
        UserError: if a planned key is `auto` and no plan is given, or the plan file is bad.
    """
    from visionpipes.core.plan import read_plan, resolve_auto

    plan = read_plan(plan_path, domain="driving") if plan_path else None
    resolved, _ = resolve_auto(section, plan, prefix=name, keys=PLANNED_KEYS[name], source=source)
    return resolved, plan
