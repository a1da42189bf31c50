"""What each lane decoding step buys: the official BDD100K lane F-scores of one trained lane model,
decoded with the plain arg-max over the nine category classes (the decoding before lane-level
decoding existed), then with each step of `lane_mask_from_logits` added in turn, on the same images
of one or more splits; and the decoding time per image of each.

    python benchmarks/lane_decoding.py --model data/driving/models/lanes/lane_model.pt \
        --dataset data/driving/prepared/dataset.json --splits train val \
        --out benchmarks/results/lane_decoding.json

The decoding settings were chosen on training images; val is the held-out check. Compare rows of
one run (the same model and images), not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def argmax_mask(logits: np.ndarray, size: tuple[int, int], roi_top: float) -> np.ndarray:
    """The pixel arg-max decoding: all 13 channels resized bilinearly, then the arg-max of each group."""
    import cv2

    from visionpipes.driving.bdd100k.categories import LANE_BACKGROUND, LANE_DIRECTION_BIT, LANE_STYLE_BIT
    from visionpipes.driving.lanes.decode import BACKGROUND_CLASS, CATEGORY_CHANNELS, roi_top_rows

    top = roi_top_rows(size[1], roi_top)
    hwc = cv2.resize(np.ascontiguousarray(logits.transpose(1, 2, 0)), (size[0], size[1] - top))
    category = hwc[:, :, :CATEGORY_CHANNELS].argmax(2)
    style = hwc[:, :, CATEGORY_CHANNELS : CATEGORY_CHANNELS + 2].argmax(2)
    direction = hwc[:, :, CATEGORY_CHANNELS + 2 :].argmax(2)
    mask = (category | (style << LANE_STYLE_BIT) | (direction << LANE_DIRECTION_BIT)).astype(np.uint8)
    mask[category == BACKGROUND_CLASS] = LANE_BACKGROUND
    return np.concatenate([np.full((top, size[0]), LANE_BACKGROUND, np.uint8), mask])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained lane model (lane_model.pt)")
    parser.add_argument("--dataset", required=True, help="dataset.json from `vp-driving prepare`")
    parser.add_argument("--splits", nargs="+", default=["val"], help="splits to score (default val)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per split (0: all)")
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args()

    import cv2

    from visionpipes.core.io import write_json
    from visionpipes.core.settings import apply_runtime_settings
    from visionpipes.driving.bdd100k.masks import write_mask
    from visionpipes.driving.lanes.decode import lane_mask_from_logits
    from visionpipes.driving.lanes.model import load_lane_model
    from visionpipes.driving.lanes.runtime import predict_lane_logits
    from visionpipes.driving.metrics import evaluate_lanes

    apply_runtime_settings()
    net = load_lane_model(args.model)
    shipped = net.config.decoding()
    steps: dict[str, Any] = {"argmax (before)": None}
    off = {**shipped, "join_gaps": 0.0, "min_area": 0.0, "vote": False}
    steps["+ lane/background on the marginal"] = off
    steps["+ join_gaps"] = {**off, "join_gaps": shipped["join_gaps"]}
    steps["+ min_area"] = {**off, "join_gaps": shipped["join_gaps"], "min_area": shipped["min_area"]}
    steps["+ vote (as shipped)"] = shipped
    dataset = json.loads(Path(args.dataset).read_text())
    root = Path(args.dataset).parent
    result: dict[str, Any] = {"model": args.model, "decoding": shipped, "splits": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.splits:
            images = sorted((root / dataset["images"][split]).glob("*.jpg"))
            if args.limit:
                images = images[: args.limit]
            gt_all = root / dataset["lane_masks"][split]
            gt = Path(tmp) / split / "gt"
            gt.mkdir(parents=True)
            for image in images:  # the ground truth of exactly these images
                (gt / f"{image.stem}.png").symlink_to((gt_all / f"{image.stem}.png").resolve())
            logits, sizes = [], []
            for i in range(0, len(images), 8):
                frames = [cv2.imread(str(p)) for p in images[i : i + 8]]
                logits += list(predict_lane_logits(net, frames))
                sizes += [(f.shape[1], f.shape[0]) for f in frames]
            rows = {}
            for k, (name, settings) in enumerate(steps.items()):
                pred = Path(tmp) / split / f"step{k}"
                pred.mkdir()
                times = []
                for image, lg, size in zip(images, logits, sizes):
                    start = time.perf_counter()
                    if settings is None:
                        mask = argmax_mask(lg, size, shipped["roi_top"])
                    else:
                        mask = lane_mask_from_logits(lg, size, **settings)
                    times.append(time.perf_counter() - start)
                    write_mask(pred / f"{image.stem}.png", mask)
                scores = evaluate_lanes(gt, pred)
                rows[name] = {
                    "F1_pix1": round(scores.F1_pix1, 2),
                    "F1_pix2": round(scores.F1_pix2, 2),
                    "F1_pix5": round(scores.F1_pix5, 2),
                    "sub_tasks_F1_pix2": {t: round(v["F1_pix2"], 1) for t, v in scores.sub_tasks.items()},
                    "decode_ms_per_image": round(1000 * statistics.median(times), 2),
                }
                print(split, f"{name:36s}", rows[name], flush=True)
            result["splits"][split] = {"images": len(images), "steps": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
