"""`vp-driving`: the command line of the driving package (official metrics, format conversion, samples,
the pipeline verbs data/prepare/train-det/train-lanes/predict/evaluate/export/deploy).

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

from visionpipes.core.cli_common import params_section, run_main
from visionpipes.core.errors import UserError
from visionpipes.driving.multitask.command import resolve_multitask_model


def load_config(model: Any, params: str | None, section: str) -> Any:
    """`core.config.load_config`, imported when a verb runs (pydantic stays out of `--help`)."""
    from visionpipes.core.config import load_config as load

    return load(model, params, section)


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
    from visionpipes.driving.bdd100k.yolo import YoloSplit, det_to_yolo

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
    from visionpipes.driving.bdd100k.masks import drivable_polygons_to_masks, lane_polygons_to_masks

    size = (args.width, args.height)
    if args.kind == "lanes":
        if args.thickness < 1:
            raise UserError(f"--thickness must be at least 1 pixel, got {args.thickness}.")
        n = lane_polygons_to_masks(args.polygons, args.out, image_size=size, thickness=args.thickness)
    else:
        n = drivable_polygons_to_masks(args.polygons, args.out, image_size=size)
    _emit({"masks": n, "out": str(args.out)}, None)


def _cmd_synth(args: argparse.Namespace) -> None:
    from visionpipes.driving.synth.sample import SynthConfig, write_sample

    flags = {
        "images": args.images,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "cameras": args.cameras,
        "video_frames": args.video_frames,
    }
    config = SynthConfig.from_params(flags, source="vp-driving synth")
    summary = write_sample(args.out, config)
    _emit(summary, None)


# --------------------------------------------------------------------------------------------------
# Pipeline verbs: data, prepare, train-det, train-lanes, predict, evaluate, export, deploy
# --------------------------------------------------------------------------------------------------


def _cmd_data(args: argparse.Namespace) -> None:
    from visionpipes.driving.prepare import DataConfig, obtain_data

    config = load_config(DataConfig, args.params, "data")
    if args.path is not None:
        config.path = args.path
    base = Path(args.params).parent if args.params else Path.cwd()
    summary = obtain_data(config, args.out, base_dir=base)
    _emit({k: v for k, v in summary.items() if k != "label_files"}, None)


def _cmd_plan(args: argparse.Namespace) -> None:
    from visionpipes.core.plan import plan_verb
    from visionpipes.driving.planning import make_plan

    plan_verb(
        args.raw,
        args.out,
        make_plan,
        params=args.params,
        device=args.device,
        memory_gb=args.memory_gb,
        cpu_cores=args.cpu_cores,
    )


def _cmd_prepare(args: argparse.Namespace) -> None:
    from visionpipes.driving.prepare import PrepareConfig, manifest_summary, prepare_dataset

    config = load_config(PrepareConfig, args.params, "prepare")
    dataset = prepare_dataset(args.raw, args.out, config)
    _emit({**manifest_summary(dataset), "manifest": str(Path(args.out) / "dataset.json")}, None)


def _cmd_train_det(args: argparse.Namespace) -> None:
    from visionpipes.driving.planning import resolve_section

    section = dict(params_section(args.params, "det"))
    for key in ("epochs", "imgsz", "batch", "device", "time_minutes", "model"):
        value = getattr(args, key)
        if value is not None:
            section[key] = value
    # auto keys and the plan first: their errors come before ultralytics is imported
    section, _ = resolve_section(section, args.plan, "det", source=f"{args.params or 'params'}:det")
    from visionpipes.driving.detection.train import DetectorConfig, train_detector
    from visionpipes.driving.prepare import load_manifest

    config = DetectorConfig.from_params(section, source=f"{args.params or 'params'}:det")
    dataset = load_manifest(args.dataset)
    print(f"train-det: {config.model} at {config.imgsz} px on {len(dataset.names['train'])} images", flush=True)
    run = train_detector(dataset.data_yaml, args.out, config)
    _emit({"weights": str(run.best), "epochs": run.epochs, "seconds": round(run.seconds, 1), "metrics": run.metrics}, None)


def _cmd_train_lanes(args: argparse.Namespace) -> None:
    from visionpipes.driving.planning import resolve_section

    source = f"{args.params or 'params'}:lanes"
    raw_section = params_section(args.params, "lanes")
    if args.max_time is not None and isinstance(raw_section.get("trainer") or {}, dict):
        raw_section["trainer"] = {**(raw_section.get("trainer") or {}), "max_time": args.max_time}  # replaces auto
    # auto keys and the plan first: their errors come before Lightning is imported
    raw_section, _ = resolve_section(raw_section, args.plan, "lanes", source=source)
    from visionpipes.core.training import TrainConfig
    from visionpipes.driving.lanes.data import LaneSample
    from visionpipes.driving.lanes.model import LaneModelConfig
    from visionpipes.driving.lanes.train import LanesSection, train_lanes
    from visionpipes.driving.prepare import load_manifest

    section = LanesSection.from_params(raw_section, source=source)
    model_config = LaneModelConfig.from_params(section.model.to_dict(), source=f"{source}.model")
    train_config = section.train
    trainer = dict(section.trainer)
    if args.epochs is not None:
        trainer["max_epochs"] = args.epochs
    if args.max_time is not None:
        trainer["max_time"] = args.max_time
    if args.device is not None:
        trainer["accelerator"] = args.device
    trainer_config = TrainConfig.from_params(trainer, source=f"{source}.trainer")
    dataset = load_manifest(args.dataset)

    def samples(split: str) -> list[LaneSample]:
        from visionpipes.driving.bdd100k.masks import mask_name

        pairs = [
            LaneSample(dataset.images[split] / name, dataset.lane_masks[split] / mask_name(name))
            for name in dataset.names[split]
        ]
        pairs = [p for p in pairs if p.mask.is_file()]
        if not pairs:
            raise UserError(f"no {split} image has a lane mask in {dataset.lane_masks[split]}.")
        return pairs

    train, val = samples("train"), samples("val")
    print(
        f"train-lanes: {model_config.arch}/{model_config.encoder} at {model_config.width}x{model_config.height} "
        f"on {len(train)} images",
        flush=True,
    )
    run = train_lanes(
        train, val, args.out, model_config=model_config, train_config=train_config, trainer_config=trainer_config
    )
    if not args.keep_checkpoints:  # lane_model.pt holds the chosen weights; the Lightning states are large
        import shutil

        shutil.rmtree(Path(args.out) / "checkpoints", ignore_errors=True)
    _emit({"model": str(run.model_path), "epochs": run.epochs, "seconds": round(run.seconds, 1), "metrics": run.metrics}, None)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from visionpipes.driving.evaluation import EvalConfig, evaluate_models
    from visionpipes.driving.prepare import load_manifest

    config = load_config(EvalConfig, args.params, "eval")
    if args.device is not None:
        config.device = args.device
    dataset = load_manifest(args.dataset)
    result = evaluate_models(
        dataset,
        det_weights=args.det,
        lane_model=args.lanes,
        metrics_path=args.metrics,
        plots_dir=args.plots,
        predictions_dir=args.predictions,
        config=config,
        split=args.split,
        multitask_model=resolve_multitask_model(args.multitask, args.params),
        drivable_pred=args.drivable_pred,
    )
    short: dict[str, Any] = {"metrics": str(result.metrics_path), "plots": [p.name for p in result.plots]}
    if "det" in result.metrics:
        short["det"] = {k: result.metrics["det"][k] for k in ("AP", "AP_50", "AP_75")}
    if "lanes" in result.metrics:
        short["lanes"] = {k: result.metrics["lanes"][k] for k in ("F1_pix1", "F1_pix2", "F1_pix5")}
    if "drivable" in result.metrics:
        short["drivable"] = {k: result.metrics["drivable"][k] for k in ("mIoU", "IoU")}
    if "multitask" in result.metrics:
        multitask = result.metrics["multitask"]
        short["multitask"] = {
            "det": {k: multitask["det"][k] for k in ("AP", "AP_50", "AP_75")},
            "lanes": {k: multitask["lanes"][k] for k in ("F1_pix1", "F1_pix2", "F1_pix5")},
            **({"drivable": {"mIoU": multitask["drivable"]["mIoU"]}} if "drivable" in multitask else {}),
        }
    _emit(short, None)


def _cmd_export(args: argparse.Namespace) -> None:
    from visionpipes.driving.deploy import DeployConfig, export_models

    config = load_config(DeployConfig, args.params, "deploy")
    multitask = resolve_multitask_model(args.multitask, args.params)
    report = export_models(args.out, det_weights=args.det, lane_model=args.lanes, multitask_model=multitask, config=config)
    _emit(report, None)


def _cmd_deploy(args: argparse.Namespace) -> None:
    from visionpipes.driving.deploy import DeployConfig, deploy

    config = load_config(DeployConfig, args.params, "deploy")
    params = None
    if args.params:
        params = {k: params_section(args.params, k) for k in ("data", "prepare", "det", "lanes", "model", "multitask")}
    plan = None
    if args.plan:
        from visionpipes.core.plan import read_plan

        plan = read_plan(args.plan, domain="driving").summary()
    summary = deploy(
        args.out,
        det_weights=args.det,
        lane_model=args.lanes,
        multitask_model=resolve_multitask_model(args.multitask, args.params),
        metrics_path=args.metrics,
        params=params,
        config=config,
        dataset=args.dataset,
        plan=plan,
    )
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

    p = verbs.add_parser("data", help="write the raw data: the synthetic sample, or a pointer to a real BDD100K copy")
    p.add_argument("--out", required=True, help="raw data folder to write (replaced)")
    p.add_argument("--params", help="params.yaml with a 'data' section (path, synth)")
    p.add_argument("--path", help="a real BDD100K root (overrides data.path)")
    p.set_defaults(func=_cmd_data)

    p = verbs.add_parser("plan", help="plan settings (detector size/batch, lane ROI/size, workers, time budgets) from the data and the hardware")
    p.add_argument("raw", help="raw data folder (from `vp-driving data`) or a BDD100K root")
    p.add_argument("--out", required=True, help="plan JSON to write")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="plan for this device (overrides plan.device)")
    p.add_argument("--memory-gb", type=float, help="memory budget in GB (overrides plan.memory_gb; default: probed)")
    p.add_argument("--cpu-cores", type=int, help="CPU cores (overrides plan.cpu_cores; default: probed)")
    p.add_argument("--params", help="params.yaml: its 'plan' section, and the planned keys it sets explicitly")
    p.set_defaults(func=_cmd_plan)

    p = verbs.add_parser("prepare", help="YOLO dataset, lane masks and the dataset.json manifest from raw data")
    p.add_argument("--raw", required=True, help="raw data folder (from `vp-driving data`)")
    p.add_argument("--out", required=True, help="prepared folder to write (replaced)")
    p.add_argument("--params", help="params.yaml with a 'prepare' section")
    p.set_defaults(func=_cmd_prepare)

    p = verbs.add_parser("train-det", help="train the YOLO detector (offline, from a model yaml)")
    p.add_argument("--dataset", required=True, help="dataset.json from `vp-driving prepare`")
    p.add_argument("--out", required=True, help="run folder to write (weights/best.pt, results.csv, plots)")
    p.add_argument("--params", help="params.yaml with a 'det' section")
    p.add_argument("--model", help="model yaml or local .pt (overrides det.model)")
    p.add_argument("--epochs", type=int, help="epochs (overrides det.epochs)")
    p.add_argument("--imgsz", type=int, help="image size (overrides det.imgsz)")
    p.add_argument("--batch", type=int, help="batch size (overrides det.batch)")
    p.add_argument("--time-minutes", type=float, help="training budget in minutes (overrides det.time_minutes)")
    p.add_argument("--device", help="auto, cpu or a CUDA index (overrides det.device)")
    p.add_argument("--plan", help="plan JSON of `vp-driving plan`: the values of det keys set to auto")
    p.set_defaults(func=_cmd_train_det)

    p = verbs.add_parser("train-lanes", help="train the lane-marking model (Lightning + DVCLive)")
    p.add_argument("--dataset", required=True, help="dataset.json from `vp-driving prepare`")
    p.add_argument("--out", required=True, help="folder to write (lane_model.pt, checkpoints/, dvclive/)")
    p.add_argument("--params", help="params.yaml with a 'lanes' section (model, train, trainer)")
    p.add_argument("--epochs", type=int, help="epochs (overrides lanes.trainer.max_epochs)")
    p.add_argument("--max-time", help="time budget DD:HH:MM:SS (overrides lanes.trainer.max_time)")
    p.add_argument("--device", help="auto, cpu or gpu (overrides lanes.trainer.accelerator)")
    p.add_argument("--plan", help="plan JSON of `vp-driving plan`: the values of lanes keys set to auto")
    p.add_argument(
        "--keep-checkpoints", action="store_true", help="keep Lightning's checkpoints/ (to resume; large)"
    )
    p.set_defaults(func=_cmd_train_lanes)

    from visionpipes.driving.multitask.command import add_train_multitask_parser

    add_train_multitask_parser(verbs)  # train-multitask: its arguments and handler live beside the multi-task code

    from visionpipes.driving.predict_command import add_predict_parser

    add_predict_parser(verbs)  # predict: its arguments and handlers live in predict_command

    p = verbs.add_parser("evaluate", help="official metrics of the models on a split, with plots")
    p.add_argument("--dataset", required=True, help="dataset.json from `vp-driving prepare`")
    p.add_argument("--det", help="detector weights (.pt)")
    p.add_argument("--lanes", help="lane model (lane_model.pt)")
    p.add_argument(
        "--drivable-pred",
        metavar="DIR",
        help="folder of predicted drivable masks (official PNGs, <image stem>.png) to score as `drivable`",
    )
    p.add_argument("--metrics", required=True, help="metrics.json to write")
    p.add_argument("--plots", required=True, help="folder for the PNG plots (replaced)")
    p.add_argument("--predictions", required=True, help="folder for the predictions (replaced)")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--params", help="params.yaml with an 'eval' section")
    p.add_argument("--device", help="auto, cpu or a CUDA index (overrides eval.device)")
    p.add_argument(
        "--multitask",
        metavar="MODEL",
        help="multi-task model (multitask_model.pt, or the train-multitask folder) scored as `multitask`",
    )
    p.set_defaults(func=_cmd_evaluate)

    for verb, text in (
        ("export", "ONNX exports of the detector and/or lane model, checked against the eager models"),
        ("deploy", "ONNX exports of both models plus model.json (files with checksums) and a model card"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("--out", required=True, help="folder to write" + (" (replaced)" if verb == "deploy" else ""))
        p.add_argument("--det", help="detector weights (.pt)")
        p.add_argument("--lanes", help="lane model (lane_model.pt)")
        p.add_argument("--multitask", metavar="MODEL", help="multi-task model (or train-multitask folder) -> perception.onnx")
        p.add_argument("--params", help="params.yaml (its 'deploy' section; deploy also records data/det/lanes)")
        if verb == "deploy":
            p.add_argument("--metrics", help="metrics.json of `vp-driving evaluate`, for the model card")
            p.add_argument("--dataset", help="dataset.json of `vp-driving prepare` (calibrates and scores deploy.det_int8)")
            p.add_argument("--plan", help="plan JSON of `vp-driving plan` the models were trained with (recorded)")
        p.set_defaults(func=_cmd_export if verb == "export" else _cmd_deploy)

    from visionpipes.driving.streams.command import add_stream_parser

    add_stream_parser(verbs)  # the stream verb's arguments and handler live beside the streams
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the verb; `UserError` propagates (see `main`). Warnings go to stderr."""
    args = build_parser().parse_args(argv)
    from visionpipes.driving.ultralytics_env import apply_ultralytics_env

    apply_ultralytics_env()  # before any verb imports ultralytics (it reads YOLO_CONFIG_DIR once)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = args.func(args)
        finally:
            from visionpipes.driving.bdd100k.labels import BDD100KWarning

            for w in caught:
                if issubclass(w.category, BDD100KWarning):
                    print(f"warning: {w.message}", file=sys.stderr)
    return code if isinstance(code, int) else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point `vp-driving`."""
    run_main(lambda: run(argv))


if __name__ == "__main__":
    main()
