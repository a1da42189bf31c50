"""The resolution ceiling of the official lane F-scores: each ground-truth lane mask of a split is resampled
(nearest) to the grid a network predicts on and back to its own size, then scored with the official
`metrics.evaluate_lanes` against itself. A network predicting on that grid cannot beat the row's score
with nearest upsampling (bilinear logits can place edges between cells, so this is a guide, not a bound).

    .venv/bin/python benchmarks/lane_resolution_ceiling.py [--masks data/driving/raw/labels/lane/masks/val]

Rows: the lane model's ROI (rows below 40 %, 448x160, logits at stride 1), the multi-task network at
384x216 of content (384x224 input) with lane logits at stride 2 (`lane_stride: 2`) and 1, and 448/640 wide.
Writes benchmarks/results/lane_resolution_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

GRIDS = {
    "lane model: ROI below 40 %, 448x160, stride 1": (448, 160, 0.4),
    "multitask 384x224: stride 2 (192x108)": (192, 108, 0.0),
    "multitask 384x224: stride 1 (384x216)": (384, 216, 0.0),
    "multitask 448x256: stride 2 (224x126)": (224, 126, 0.0),
    "multitask 640x384: stride 2 (320x180)": (320, 180, 0.0),
}


def resample(mask: np.ndarray, width: int, height: int, top: float) -> np.ndarray:
    import cv2

    rows = mask.shape[0]
    first = round(top * rows)
    small = cv2.resize(mask[first:], (width, height), interpolation=cv2.INTER_NEAREST)
    out = np.full_like(mask, 255)  # background above the ROI
    out[first:] = cv2.resize(small, (mask.shape[1], rows - first), interpolation=cv2.INTER_NEAREST)
    return out


def main() -> None:
    import cv2

    from visionpipes.driving.metrics import evaluate_lanes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=Path, default=ROOT / "data/driving/raw/labels/lane/masks/val")
    args = parser.parse_args()
    masks = sorted(args.masks.glob("*.png"))
    if not masks:
        raise SystemExit(
            f"{args.masks}: no lane masks (run `make demo` or `dvc repro pipelines/driving` first)"
        )
    rows = {}
    for name, (width, height, top) in GRIDS.items():
        with tempfile.TemporaryDirectory() as tmp:
            for path in masks:
                mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                cv2.imwrite(str(Path(tmp) / path.name), resample(mask, width, height, top))
            scores = evaluate_lanes(args.masks, tmp)
        rows[name] = {k: round(getattr(scores, k), 1) for k in ("F1_pix1", "F1_pix2", "F1_pix5")}
        print(f"{name}: {rows[name]}", flush=True)
    out = ROOT / "benchmarks/results/lane_resolution_ceiling.json"
    out.write_text(
        json.dumps(
            {
                "masks": str(args.masks.relative_to(ROOT))
                if args.masks.is_relative_to(ROOT)
                else str(args.masks),
                "images": len(masks),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
