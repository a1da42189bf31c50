"""The multi-task network's lane-level decoding, chosen on training images: official lane F1_pix2 of
one or more trained multi-task models (`multitask_model.pt` or an exported `.onnx`) over a grid of
`join_gaps` x `min_area` (`lane_mask_from_logits`, `vote` on), on the train split (where the choice
is made) and the val split (the held-out check). The network runs once per image; only the decoding
changes between rows: the logits are upsampled once (`multitask.decode.unletterbox`), then decoded
by `lane_mask_from_logits` (the evaluation's `lane_mask_from_grid` gives the same masks, computing
only the cells that can be lanes), then scored by `metrics.evaluate_lanes` on official PNGs.

    python benchmarks/multitask_lane_decoding.py --dataset data/driving/prepared/dataset.json \
        --model seed0/multitask_model.pt --model seed1/multitask_model.pt \
        --out benchmarks/results/multitask_lane_decoding.json

The lane model's decoding (join_gaps 3, min_area 0.0002) was chosen the same way for the lane model
(`benchmarks/lane_decoding.py`); the multi-task network's stride-2 lanes come out in more small
pieces, so its best settings may differ. Compare rows of one model, not models with each other.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="multitask_model.pt or .onnx (repeatable)")
    parser.add_argument("--dataset", required=True, help="dataset.json from `vp-driving prepare`")
    parser.add_argument("--join-gaps", type=float, nargs="+", default=[0.0, 1.5, 3.0, 6.0, 10.0])
    parser.add_argument("--min-area", type=float, nargs="+", default=[0.0002, 0.0005, 0.001, 0.002])
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args()

    from visionpipes.core.image import read_image
    from visionpipes.core.io import write_json
    from visionpipes.core.settings import apply_runtime_settings
    from visionpipes.driving.bdd100k.masks import mask_name, write_mask
    from visionpipes.driving.lanes.decode import lane_mask_from_logits
    from visionpipes.driving.metrics import evaluate_lanes
    from visionpipes.driving.multitask.decode import network_input, unletterbox
    from visionpipes.driving.multitask.evaluate import load_runner
    from visionpipes.driving.prepare import load_manifest
    from visionpipes.driving.ultralytics_env import apply_ultralytics_env

    apply_runtime_settings()
    apply_ultralytics_env()
    dataset = load_manifest(args.dataset)
    splits = [s for s in ("train", "val") if s in dataset.names]
    grid = [{"join_gaps": j, "min_area": m, "vote": True} for j in args.join_gaps for m in args.min_area]
    result: dict[str, Any] = {"dataset": args.dataset, "splits": splits, "models": {}}
    for model_path in args.model:
        runner, config = load_runner(model_path)
        size = (config.width, config.height)
        logits: dict[str, list[tuple[str, tuple[int, int], Any]]] = {}
        for split in splits:
            names, items = dataset.names[split], []
            for start in range(0, len(names), 8):
                chunk = names[start : start + 8]
                pictures = [read_image(dataset.images[split] / n, order="BGR") for n in chunk]
                x, infos = network_input(pictures, size)
                _, lanes, _ = runner(x)
                for name, picture, lane, info in zip(chunk, pictures, lanes, infos):
                    frame = (picture.shape[1], picture.shape[0])
                    items.append((name, frame, unletterbox(lane, info, frame, size, upsample=True)))
            logits[split] = items
        rows = []
        for decoding in grid:
            row: dict[str, Any] = dict(decoding)
            for split, items in logits.items():
                with tempfile.TemporaryDirectory() as tmp:
                    for name, frame, lane in items:
                        write_mask(Path(tmp) / mask_name(name), lane_mask_from_logits(lane, frame, **decoding))
                    row[f"{split}_F1_pix2"] = round(evaluate_lanes(dataset.lane_masks[split], Path(tmp)).F1_pix2, 2)
            print(model_path, row, flush=True)
            rows.append(row)
        best = max(rows, key=lambda r: r["train_F1_pix2"]) if "train" in splits else None
        result["models"][model_path] = {"trained_with": config.decoding(), "rows": rows, "best_on_train": best}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
