"""`vp-driving predict`: its arguments and handlers. Two ways in: `--det`/`--lanes` run the trained
PyTorch models (ultralytics, the lane model) over images, writing `det.json` and `lanes/*.png`; `--deploy`
(or `--perception`) runs the deployed ONNX models over image folders and video files through
`driving.batch` (one BDD100K JSON per input, resumable, local engine or Ray), with the model family
(`two_model` or the multi-task `perception.onnx`) chosen by `deployment.resolve_models`.

Runtime: never imports training code, Lightning, DVCLive or Optuna (import-linter contract).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError


def add_predict_parser(verbs: Any) -> None:
    """Add the `predict` verb to `vp-driving`'s sub-parsers."""
    p = verbs.add_parser(
        "predict",
        help="detections (det JSON) and lane masks (PNG) for images; with --deploy, for image folders and videos",
    )
    p.add_argument("images", nargs="+", help="image files or folders (with --deploy also video files)")
    p.add_argument(
        "--out", required=True,
        help="folder for det.json and lanes/*.png (with --deploy: <input name>.json and <input name>.lanes/)",
    )  # fmt: skip
    p.add_argument(
        "--deploy", help="deploy folder (vp-driving deploy): its ONNX models, one BDD100K JSON per input; resumable",
    )  # fmt: skip
    p.add_argument("--no-lanes", action="store_true", help="--deploy: skip the lane model's masks")
    p.add_argument(
        "--model-family", default="auto", choices=["two_model", "multitask", "auto"],
        help="--deploy: two_model (detector + lane model), multitask (perception.onnx; also writes "
        "<input name>.drivable/ official drivable masks) or auto (default: multitask when the folder holds it)",
    )  # fmt: skip
    p.add_argument(
        "--perception", help="exported multi-task model (perception.onnx), as --model-family multitask"
    )
    p.add_argument("--det", help="detector weights (.pt)")
    p.add_argument("--lanes", help="lane model (lane_model.pt)")
    p.add_argument("--imgsz", type=int, help="detector input size (default: its training size)")
    p.add_argument("--conf", type=float, default=0.25, help="detection score threshold (default 0.25)")
    p.add_argument("--device", default="auto", help="auto, cpu or a CUDA index")
    from visionpipes.core.ray_batch import add_engine_options

    add_engine_options(p)  # --engine local|ray, --address, --actors, ... (ray: with --deploy)
    p.set_defaults(func=cmd_predict)


def _image_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"image file or folder {path} does not exist.")
    if not files:
        raise UserError(f"no .jpg/.png images in {', '.join(paths)}.")
    return files


def _cmd_predict_batch(args: argparse.Namespace, perception: str | None = None) -> int:
    """`predict --deploy`: the deploy folder's ONNX models (or, with `perception`, the multi-task graph)
    over image folders and video files, one BDD100K JSON per input (+ lane and drivable mask folders),
    on the local engine or a Ray actor pool (`driving.batch`); finished inputs are skipped, failed ones
    listed at the end (exit 1)."""
    from visionpipes.driving.batch import list_inputs, predict_inputs

    if args.deploy is None and perception is None:
        raise UserError(
            "--engine ray runs a deploy folder's ONNX models: pass --deploy (from `vp-driving deploy`)."
        )
    if args.det is not None or args.lanes is not None or args.imgsz is not None:
        raise UserError("--deploy brings the models and their input size: drop --det, --lanes and --imgsz.")
    if args.engine == "ray":
        from visionpipes.core.ray_batch import require_ray

        require_ray()  # the one clear error before anything loads
    inputs = list_inputs(args.images)
    result = predict_inputs(
        args.deploy, inputs, args.out, engine=args.engine, conf=args.conf, lanes=not args.no_lanes,
        address=args.address, actors=args.actors, num_cpus=args.num_cpus, gpus_per_actor=args.gpus_per_actor,
        perception=perception,
    )  # fmt: skip
    masks = ", lane and drivable masks" if perception is not None else ""
    print(
        f"wrote {len(result.written)} prediction files ({result.frames} frames, {result.boxes} boxes{masks}) to {args.out} "
        f"({len(result.skipped)} already there, skipped)"
    )
    for file, reason in result.failed:
        print(f"failed: {file}: {reason}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} input files failed (of {len(inputs)} inputs)", file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int | None:
    """`vp-driving predict` (see the module docstring); the exit code, or None for 0."""
    from visionpipes.core.io import atomic_path

    if args.perception is not None or (args.model_family != "two_model" and args.deploy is not None):
        from visionpipes.driving.deployment import resolve_models

        if args.det is not None or args.lanes is not None or args.imgsz is not None:
            raise UserError(
                "--deploy/--perception bring the models and their input size: drop --det, --lanes and --imgsz."
            )
        family, _, _, perception = resolve_models(args.deploy, args.model_family, perception=args.perception)
        if family == "multitask":
            return _cmd_predict_batch(args, str(perception))
    elif args.model_family == "multitask":
        raise UserError(
            "--model-family multitask needs --deploy FOLDER (holding perception.onnx) or --perception FILE."
        )
    if args.deploy is not None or args.engine == "ray":
        return _cmd_predict_batch(args)
    if args.no_lanes:
        raise UserError("--no-lanes is for --deploy; without it, leave out --lanes.")
    if args.det is None and args.lanes is None:
        raise UserError("predict needs a detector (--det), a lane model (--lanes), or both.")
    from visionpipes.driving.devices import model_device, ultralytics_device

    images = _image_files(args.images)
    device = model_device(args.device)  # one rule for both models (core.device.select_device)
    model = net = None
    if args.det is not None:
        from visionpipes.driving.detection.predict import load_detector

        model = load_detector(args.det)
    if args.lanes is not None:
        from visionpipes.driving.lanes.model import load_lane_model

        net = load_lane_model(args.lanes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"images": len(images)}
    if model is not None:
        from visionpipes.driving.bdd100k.labels import save_frames
        from visionpipes.driving.detection.predict import predict_detections

        imgsz = args.imgsz or int(
            (getattr(model, "ckpt", None) or {}).get("train_args", {}).get("imgsz", 320)
        )
        frames = predict_detections(
            model, images, imgsz=imgsz, conf=args.conf, device=ultralytics_device(device)
        )
        save_frames(out / "det.json", frames)
        result["det"] = str(out / "det.json")
        result["boxes"] = sum(len(f.labels or []) for f in frames)
    if net is not None:
        from visionpipes.driving.lanes.runtime import predict_lane_masks

        with atomic_path(out / "lanes", is_dir=True) as tmp:
            predict_lane_masks(net, images, tmp, device=device)
        result["lanes"] = str(out / "lanes")
    print(json.dumps(result, indent=2))
    return None
