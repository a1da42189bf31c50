"""`vp-driving`: the command line of the driving package (official metrics, format conversion, samples).

Each verb is a thin wrapper over a library function; nothing heavy (torch, ultralytics) is imported
until a verb that needs it runs, so `vp-driving --help` and the evaluation verbs start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError, run_cli


def _emit(result: dict[str, Any], out: str | None) -> None:
    """Print `result` as JSON; also write it to `out` when given."""
    if out:
        from visionpipes.core.io import write_json

        write_json(out, result)
    print(json.dumps(result, indent=2))


def _cmd_eval_det(args: argparse.Namespace) -> None:
    from visionpipes.driving.metrics import evaluate_detection_files

    scores = evaluate_detection_files(args.gt, args.pred)
    result: dict[str, Any] = scores.summary()
    if args.per_class:
        result["per_class_AP"] = scores.per_class_AP
    _emit(result, args.out)


def _cmd_eval_lanes(args: argparse.Namespace) -> None:
    from visionpipes.driving.metrics import evaluate_lanes

    _emit(evaluate_lanes(args.gt, args.pred).as_dict(), args.out)


def _cmd_eval_drivable(args: argparse.Namespace) -> None:
    from visionpipes.driving.metrics import evaluate_drivable

    _emit(evaluate_drivable(args.gt, args.pred).as_dict(), args.out)


def _cmd_convert_yolo(args: argparse.Namespace) -> None:
    from visionpipes.driving.bdd100k import YoloSplit, det_to_yolo

    if args.root is not None:
        if args.labels is not None or args.images is not None:
            raise UserError("convert yolo takes either --root, or --labels with --images, not both.")
        root = Path(args.root)
        splits = [
            YoloSplit(s, root / "labels" / "det_20" / f"det_{s}.json", root / "images" / "100k" / s)
            for s in args.splits
        ]
    elif args.labels is not None and args.images is not None:
        splits = [YoloSplit(args.splits[0], Path(args.labels), Path(args.images))]
    else:
        raise UserError("convert yolo needs --root, or both --labels and --images.")
    dataset = det_to_yolo(splits, args.out, copy_images=args.copy, image_size=(args.width, args.height))
    _emit({"data_yaml": str(dataset.data_yaml), "images": dataset.images, "boxes": dataset.boxes}, None)


def _cmd_convert_masks(args: argparse.Namespace) -> None:
    from visionpipes.driving.bdd100k import drivable_polygons_to_masks, lane_polygons_to_masks

    size = (args.width, args.height)
    if args.kind == "lanes":
        if args.thickness < 1:
            raise UserError(f"--thickness must be at least 1 pixel, got {args.thickness}.")
        n = lane_polygons_to_masks(args.polygons, args.out, image_size=size, thickness=args.thickness)
    else:
        n = drivable_polygons_to_masks(args.polygons, args.out, image_size=size)
    _emit({"masks": n, "out": str(args.out)}, None)


def _cmd_synth(args: argparse.Namespace) -> None:
    from visionpipes.driving.synth import SynthConfig, write_sample

    config = SynthConfig(
        images=args.images,
        seed=args.seed,
        val_fraction=args.val_fraction,
        cameras=args.cameras,
        video_frames=args.video_frames,
    )
    summary = write_sample(args.out, config)
    _emit(summary, None)


def build_parser() -> argparse.ArgumentParser:
    """The `vp-driving` argument parser (one sub-command per verb)."""
    parser = argparse.ArgumentParser(
        prog="vp-driving", description="BDD100K detection and lanes: official metrics, conversion, samples."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("eval-det", help="official BDD100K detection AP/AR of a det JSON")
    p.add_argument("--gt", required=True, help="ground-truth det JSON (Scalabel list of frames or legacy)")
    p.add_argument("--pred", required=True, help="prediction det JSON (labels with 'score')")
    p.add_argument("--per-class", action="store_true", help="add the AP of each of the 10 classes")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=_cmd_eval_det)

    p = verbs.add_parser("eval-lanes", help="official lane-marking F-scores of a folder of lane masks")
    p.add_argument("--gt", required=True, help="folder of ground-truth lane mask PNGs")
    p.add_argument("--pred", required=True, help="folder of predicted lane mask PNGs (same names)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=_cmd_eval_lanes)

    p = verbs.add_parser("eval-drivable", help="official drivable-area IoU of a folder of drivable masks")
    p.add_argument("--gt", required=True, help="folder of ground-truth drivable mask PNGs")
    p.add_argument("--pred", required=True, help="folder of predicted drivable mask PNGs (same names)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=_cmd_eval_drivable)

    p = verbs.add_parser("convert", help="convert BDD100K labels (det JSON -> YOLO; polygons -> masks)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    y = kinds.add_parser("yolo", help="det JSON -> the YOLO dataset layout ultralytics trains on")
    y.add_argument("--root", help="BDD100K root (images/100k/<split>, labels/det_20/det_<split>.json)")
    y.add_argument("--labels", help="one det JSON (instead of --root)")
    y.add_argument("--images", help="the folder of that JSON's images (with --labels)")
    y.add_argument(
        "--splits", nargs="+", default=["train", "val"], help="splits to convert (default: train val)"
    )
    y.add_argument("--out", required=True, help="dataset folder to write (data.yaml, images/, labels/)")
    y.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    y.add_argument("--width", type=int, default=1280, help="image width (default 1280)")
    y.add_argument("--height", type=int, default=720, help="image height (default 720)")
    y.set_defaults(func=_cmd_convert_yolo)
    for kind, text in (
        ("lanes", "lane polygons -> lane mask PNGs"),
        ("drivable", "drivable polygons -> masks"),
    ):
        m = kinds.add_parser(kind, help=text)
        m.add_argument("--polygons", required=True, help="polygon JSON (e.g. lane_train.json)")
        m.add_argument("--out", required=True, help="folder for the mask PNGs")
        m.add_argument("--width", type=int, default=1280, help="mask width (default 1280)")
        m.add_argument("--height", type=int, default=720, help="mask height (default 720)")
        if kind == "lanes":
            m.add_argument("--thickness", type=int, default=3, help="lane line width in pixels (default 3)")
        m.set_defaults(func=_cmd_convert_masks, kind=kind)

    p = verbs.add_parser("synth", help="write a synthetic sample in the BDD100K layout (+ camera videos)")
    p.add_argument("out", help="folder to write (created; replaced if it holds a previous sample)")
    p.add_argument("--images", type=int, default=40, help="number of images in all splits (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of images in val (default 0.25)")
    p.add_argument("--cameras", type=int, default=4, help="number of camera videos (default 4)")
    p.add_argument("--video-frames", type=int, default=48, help="frames per camera video (default 48)")
    p.set_defaults(func=_cmd_synth)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the verb; `UserError` propagates (see `main`). Warnings go to stderr."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            args.func(args)
        finally:
            from visionpipes.driving.bdd100k import BDD100KWarning

            for w in caught:
                if issubclass(w.category, BDD100KWarning):
                    print(f"warning: {w.message}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point `vp-driving`."""
    from visionpipes.core.settings import apply_runtime_settings

    apply_runtime_settings()
    sys.exit(run_cli(lambda: run(argv)))


if __name__ == "__main__":
    main()
