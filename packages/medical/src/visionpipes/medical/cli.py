"""`vp-medical`: the medical domain's command line, one verb per user intention (synth, validate, ...).

It parses arguments and prints; the work lives in the library modules, imported only by the verb that
needs them. Bad input ends as one `error:` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from visionpipes.core.cli_common import params_section, run_main
from visionpipes.core.ray_batch import add_engine_options
from visionpipes.medical.runtime.command import cmd_predict, inference_overrides

#: The verbs, in the order a user meets them.
VERBS: tuple[str, ...] = ("synth", "validate", "data", "plan", "train", "evaluate", "export", "predict")


def _progress(verb: str, every: int = 1) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % every == 0:
            print(f"{verb}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _cmd_synth(args: argparse.Namespace) -> int:
    from visionpipes.core.config import parse_config
    from visionpipes.medical.msd.ct_synth import CTSynthConfig, write_ct_task
    from visionpipes.medical.msd.synth import SynthConfig, write_synthetic_task

    keys = ["cases", "size", "seed", "test_cases", "spacing"]
    if args.task != "brain":
        keys += ["slices", "slice_spacing"]
    elif args.slices is not None or args.slice_spacing is not None:
        print(
            "error: --slices and --slice-spacing apply to the CT tasks (--task liver|lung|pancreas|colon)",
            file=sys.stderr,
        )
        return 2
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.task == "brain":
        config = parse_config(SynthConfig, options, source="vp-medical synth")
        write = write_synthetic_task
    else:
        config = parse_config(CTSynthConfig, {**options, "task": args.task}, source="vp-medical synth")
        write = write_ct_task
    every = max(1, (config.cases + config.test_cases) // 10)
    out = write(args.out_dir, config, overwrite=args.overwrite, progress=_progress("synth", every))
    print(f"wrote {config.cases} training cases and {config.test_cases} test images to {out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from visionpipes.medical.msd.validate import validate_task

    problems = validate_task(args.task_dir, progress=_progress("validate", every=25))
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{args.task_dir}: {errors} errors, {warnings} warnings", file=sys.stderr)
    if errors or (warnings and args.strict):
        return 1
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from visionpipes.medical.plan_command import cmd_plan

    return cmd_plan(args, progress=_progress("plan: fingerprint", every=25))


def _cmd_train(args: argparse.Namespace) -> int:
    from visionpipes.medical.data_stage import resolve_task_dir
    from visionpipes.medical.training.config import resolve_training_config
    from visionpipes.medical.training.fit import train

    params = params_section(args.params, args.section, required=True)
    source = f"{args.params}:{args.section}" if args.params else "defaults"
    for key, value in (("max_epochs", args.epochs), ("seed", args.seed)):
        if value is not None:  # where the section gives it: flat, or under trainer
            if key in params:
                params = {**params, key: value}
            else:
                params = {**params, "trainer": {**(params.get("trainer") or {}), key: value}}
    config, plan_record = resolve_training_config(params, args.plan, source=source)
    result = train(
        resolve_task_dir(args.task_dir), args.out, config, resume=not args.no_resume, plan=plan_record
    )
    best = result.fit.best_checkpoint or result.fit.last_checkpoint
    print(
        f"trained {result.fit.epochs} epochs ({result.seconds_per_epoch:.1f} s/epoch); "
        f"val_dice {result.fit.metrics.get('val_dice', float('nan')):.4f}; checkpoint {best}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from visionpipes.medical.data_stage import resolve_task_dir
    from visionpipes.medical.msd.dataset_json import load_task
    from visionpipes.medical.runtime.predictor import Predictor
    from visionpipes.medical.training.evaluate import (
        OverlaySlices,
        evaluate_cases,
        select_cases,
        write_metrics,
        write_overlay,
    )

    for out in (args.metrics, args.cases_out, args.overlay):
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
    task = load_task(resolve_task_dir(args.task_dir))
    cases = select_cases(task, args.split, args.subset)
    predictor = Predictor.load(args.model, device=args.device, **inference_overrides(args))
    overlay = OverlaySlices(max_cases=3)
    result = evaluate_cases(
        predictor,
        task,
        cases,
        progress=lambda i, n, c: print(f"evaluate: {i}/{n} {c}", file=sys.stderr),
        on_case=overlay if args.overlay else None,
    )
    write_metrics(result, args.metrics, args.cases_out)
    if args.overlay:
        write_overlay(overlay, task.labels, args.overlay, channel_name=task.modality_names[0])
    print(json.dumps({k: v["dice"] for k, v in result["summary"].items()}, indent=None))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from visionpipes.core.config import parse_config
    from visionpipes.medical.data_stage import TASK_POINTER, DataStageConfig, prepare_data

    settings = params_section(args.params, args.section)
    base = args.params.parent if args.params else Path(".")
    if args.path is not None:
        settings["path"], base = str(args.path), Path(".")
    source = f"{args.params}:{args.section}" if args.params else "data settings"
    config = parse_config(DataStageConfig, settings, source=source)
    record = prepare_data(
        config, args.out, base_dir=base, progress=lambda line: print(f"data: {line}", file=sys.stderr)
    )
    kind = "synthetic" if record["synthetic"] else "real"
    print(
        f"{kind} task {record['name']}: {record['num_training']} training and {record['num_test']} test cases, "
        f"{len(record['validation']['warnings'])} warnings; {args.out / TASK_POINTER} -> {record['task_dir']}"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from visionpipes.core.config import parse_config
    from visionpipes.core.errors import UserError
    from visionpipes.core.export import ExportParityError
    from visionpipes.medical.runtime.predictor import InferenceConfig
    from visionpipes.medical.training.deploy import DeployConfig, deploy

    if args.format == "bundle":
        from visionpipes.medical.training.bundle import export_bundle

        inference = parse_config(InferenceConfig, inference_overrides(args), source="inference settings")
        out = export_bundle(args.model, args.out, inference=inference, metrics=args.metrics)
        print(f"MONAI bundle: {out} (configs/metadata.json, configs/inference.json, models/model.pt)")
        return 0
    settings = params_section(args.params, "deploy")
    if args.formats:
        settings.update(formats=args.formats, runtime=args.formats[0])
    config = parse_config(
        DeployConfig, settings, source=f"{args.params}:deploy" if args.params else "deploy settings"
    )
    inference = parse_config(InferenceConfig, inference_overrides(args), source="inference settings")
    params = None
    if args.params:
        params = {
            k: v for k in ("data", "train", "inference", "deploy") if (v := params_section(args.params, k))
        }
    try:
        result = deploy(
            args.model,
            args.out,
            config=config,
            inference=inference,
            task_dir=args.task,
            metrics=args.metrics,
            params=params,
        )
    except ExportParityError as err:
        raise UserError(str(err)) from None
    for fmt, info in result.record["files"].items():
        print(f"{fmt}: {result.out_dir / info['file']} (parity max abs diff {info['max_abs_diff']:.2e})")
    print(f"model card: {result.out_dir / 'MODEL_CARD.md'}")
    return 0


def _add_inference_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    parser.add_argument("--model", type=Path, required=True, help=model_help)
    parser.add_argument(
        "--params", type=Path, help="params.yaml whose `inference:` section gives the settings below"
    )
    parser.add_argument(
        "--overlap", type=float, help="sliding-window overlap (default: the model's, else 0.5)"
    )
    parser.add_argument(
        "--sw-batch-size", type=int, help="windows per forward pass (default: the model's, else 4)"
    )
    parser.add_argument(
        "--tta", action=argparse.BooleanOptionalAction, help="average with predictions of flipped volumes"
    )
    parser.add_argument(
        "--crop-foreground",
        action=argparse.BooleanOptionalAction,
        help="run windows over the non-zero bounding box only (skull-stripped MRI)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="window network precision: bf16 autocast, auto (bf16 where native), fp32 (the model's, else fp32)",
    )
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps (default: cpu)")
    _add_threads(parser)


def _add_task_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "task_dir",
        type=Path,
        metavar="TASK_DIR",
        help="the TaskXX_Name folder (or the data stage's task.json)",
    )


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and onnxruntime (default: $VISIONPIPES_THREADS or all)",
    )


_ANY_MODEL = (
    "a `vp-medical train` checkpoint (.ckpt), a `vp-medical export` folder, or its model.onnx / model.pt"
)


def build_parser() -> argparse.ArgumentParser:
    """The `vp-medical` argument parser with its sub-commands."""
    parser = argparse.ArgumentParser(
        prog="vp-medical",
        description="Medical Segmentation Decathlon tumour segmentation: data, training, evaluation, deployment.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    synth = verbs.add_parser(
        "synth",
        help="write a synthetic MSD sample (Task01_BrainTumour, Task03_Liver, Task06_Lung, Task07_Pancreas or "
        "Task10_Colon format)",
        description="Write a complete MSD-format sample, deterministic by seed, written atomically: "
        "--task brain (default): Task01_BrainTumour (dataset.json, 4-D FLAIR/T1w/t1gd/T2w images, labels 0-3); "
        "--task liver: Task03_Liver (CT in int16 HU, labels 1 liver, 2 cancer); --task lung: Task06_Lung (CT, "
        "label 1 cancer); --task pancreas: Task07_Pancreas (CT, labels 1 pancreas, 2 cancer); --task colon: "
        "Task10_Colon (CT, label 1 colon cancer primaries); the CT tasks on an anisotropic grid (--spacing "
        "in-plane, --slice-spacing along z; defaults liver/lung 1 x 2.5 mm, pancreas 0.8 x 2.5, colon 0.8 x 5).",
    )
    synth.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="task folder to create")
    synth.add_argument(
        "--task",
        choices=("brain", "liver", "lung", "pancreas", "colon"),
        default="brain",
        help="which task (default: brain)",
    )
    synth.add_argument("--cases", type=int, help="training cases (default: brain 12, CT 20)")
    synth.add_argument("--test-cases", type=int, help="images in imagesTs (default: 2)")
    synth.add_argument(
        "--size",
        type=int,
        help="voxels per edge: the brain cube (default 48), the CT in-plane grid (default 64)",
    )
    synth.add_argument("--slices", type=int, help="CT: number of slices (default: 24)")
    synth.add_argument("--seed", type=int, help="random seed (default: 0)")
    synth.add_argument(
        "--spacing", type=float, help="voxel size in mm (CT: in-plane; default: brain 1.0, CT the task's)"
    )
    synth.add_argument("--slice-spacing", type=float, help="CT: slice thickness in mm (default: the task's)")
    synth.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    synth.set_defaults(run=_cmd_synth)

    validate = verbs.add_parser(
        "validate",
        help="check an MSD task folder, decoding every volume",
        description="Check an MSD task folder: dataset.json keys and counts, files present and decodable, "
        "no NaN/inf, channels = modalities, label values declared, image/label shape and affine agree. "
        "Prints one problem per line; exit status 0 when there is no error, 1 otherwise.",
    )
    validate.add_argument("task_dir", type=Path, metavar="TASK_DIR", help="the TaskXX_Name folder")
    validate.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    validate.set_defaults(run=_cmd_validate)

    train = verbs.add_parser(
        "train",
        help="train a region segmentation model on an MSD task",
        description="Train a 3-D region model (MONAI UNet / SegResNet / core attention U-Net) on an MSD task "
        "folder with DiceCE on sigmoid region channels; checkpoints, DVCLive logs, split.json and train.json go "
        "to --out. Resumes from --out/checkpoints/last.ckpt when present.",
    )
    _add_task_dir(train)
    train.add_argument("--out", type=Path, required=True, help="run folder to write")
    train.add_argument("--params", type=Path, help="params.yaml holding the training settings")
    train.add_argument("--section", default="train", help="section of --params to read (default: train)")
    train.add_argument("--epochs", type=int, help="override trainer.max_epochs")
    train.add_argument("--seed", type=int, help="override trainer.seed")
    train.add_argument("--no-resume", action="store_true", help="start afresh even if last.ckpt exists")
    train.add_argument(
        "--plan",
        type=Path,
        help="plan.json of `vp-medical plan`: resolves `auto` values, recorded in the model",
    )
    _add_threads(train)
    train.set_defaults(run=_cmd_train)

    data = verbs.add_parser(
        "data",
        help="the pipeline's data stage: synthesise the sample or validate a real task folder",
        description="Write OUT/task.json naming the task folder the later stages read, with a fingerprint of "
        "its files: without data.path (params) or --path, synthesise the Task01 sample into "
        "OUT/Task01_BrainTumour; with one, validate that real MSD folder (every volume decoded) and point to "
        "it. OUT is replaced as a whole, and only when validation passes.",
    )
    data.add_argument("--out", type=Path, required=True, help="output folder (e.g. ../../data/medical/raw)")
    data.add_argument(
        "--params", type=Path, help="params.yaml whose section gives path, cases, size, seed, ..."
    )
    data.add_argument("--section", default="data", help="section of --params to read (default: data)")
    data.add_argument("--path", type=Path, help="a real MSD task folder (overrides data.path)")
    data.set_defaults(run=_cmd_data)

    plan = verbs.add_parser(
        "plan",
        help="fingerprint the data and plan spacing, patch, batch, network and normalisation",
        description="Compute the nnU-Net dataset fingerprint of TASK_DIR's training cases (spacings, shapes "
        "after cropping to the non-zero region, foreground intensity statistics per channel, label "
        "frequencies) and plan from it and the hardware, by nnU-Net's rules: target spacing, patch and batch "
        "under the memory budget, strides and kernels per axis, per-channel normalisation (CT or z-score), "
        "cascade. Writes PLAN.json and fingerprint.json beside it; `auto` values of params.yaml take the plan's.",
    )
    _add_task_dir(plan)
    plan.add_argument(
        "--out", type=Path, required=True, help="plan JSON to write (e.g. data/medical/plan/plan.json)"
    )
    plan.add_argument("--fingerprint", type=Path, help="fingerprint JSON to write (default: beside --out)")
    plan.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        help="plan for this device (default: plan.device, else this machine's)",
    )
    plan.add_argument(
        "--memory-gb", type=float, help="memory budget in GB (default: plan.memory_gb, else probed)"
    )
    plan.add_argument("--cpu-cores", type=int, help="CPU cores (default: plan.cpu_cores, else probed)")
    plan.add_argument(
        "--samples",
        type=int,
        help="foreground intensity samples per channel over the dataset, drawn equally from every case "
        "(default: 10,000,000; nnU-Net: 1e8)",
    )
    plan.add_argument(
        "--params",
        type=Path,
        help="params.yaml: its `plan:` section (device, memory_gb, cpu_cores) and the "
        "explicit (non-auto) `train:` values, recorded as overrides",
    )
    plan.set_defaults(run=_cmd_plan)

    evaluate = verbs.add_parser(
        "evaluate",
        help="Dice and HD95 per region on labelled cases",
        description="Predict labelled cases of TASK_DIR (all, or the --subset of a split.json) and write Dice "
        "and HD95 per region and their mean (null where a region is absent) to --metrics; optionally a PNG of "
        "slices with ground truth and prediction drawn over the image.",
    )
    _add_task_dir(evaluate)
    _add_inference_options(evaluate, _ANY_MODEL)
    evaluate.add_argument("--split", type=Path, help="split.json written by train (default: all cases)")
    evaluate.add_argument("--subset", default="val", help="list of --split to evaluate (default: val)")
    evaluate.add_argument("--metrics", type=Path, required=True, help="metrics.json to write")
    evaluate.add_argument("--cases-out", type=Path, help="also write per-case scores here")
    evaluate.add_argument("--overlay", type=Path, help="also draw slices of up to 3 cases into this PNG")
    evaluate.set_defaults(run=_cmd_evaluate)

    export = verbs.add_parser(
        "export",
        aliases=["deploy"],
        help="deploy a checkpoint: TorchScript + ONNX (parity-checked) and a model card",
        description="Export a trained checkpoint to OUT: model.onnx and model.pt (TorchScript), each checked "
        "against the eager network and carrying the model description and inference settings, model.json, "
        "and MODEL_CARD.md with metrics, params and the data fingerprint. OUT appears whole or not at all.",
    )
    _add_inference_options(export, "checkpoint written by `vp-medical train`")
    export.add_argument("--out", type=Path, required=True, help="folder to write (replaced as a whole)")
    export.add_argument("--task", type=Path, help="training data to fingerprint: task folder or task.json")
    export.add_argument("--metrics", type=Path, help="metrics.json from `vp-medical evaluate`, for the card")
    export.add_argument(
        "--formats",
        nargs="+",
        choices=["onnx", "torchscript"],
        help="override deploy.formats (the first is the runtime predict uses)",
    )
    export.add_argument(
        "--format",
        choices=["deploy", "bundle"],
        default="deploy",
        help="deploy: our folder (ONNX/TorchScript, model.json, card; default); bundle: a MONAI Bundle "
        "(configs/metadata.json, configs/inference.json, models/model.pt) for `python -m monai.bundle run`",
    )
    export.set_defaults(run=_cmd_export)

    predict = verbs.add_parser(
        "predict",
        help="segment a scan (or a folder of scans) into an MSD label map",
        description="Predict label maps (0 background, then the task's labels, e.g. 1 edema, 2 non-enhancing, "
        "3 enhancing tumour) by Gaussian-blended sliding windows; written as NIfTI with the input's affine and "
        "header. With a folder of NIfTI scans as --input, --output must be an existing folder; scans that fail "
        "are reported at the end (exit 1) and the others predicted. A folder of DICOM files is read as one "
        "series per channel and written as NIfTI on the series' grid and/or a DICOM SEG. The output is never "
        "the input. --model takes a checkpoint or "
        "a deployed model (its folder, model.onnx or model.pt); a deployed model brings its own settings.",
    )
    _add_inference_options(predict, _ANY_MODEL)
    predict.add_argument(
        "--input",
        type=Path,
        required=True,
        help="a .nii/.nii.gz scan, a folder of them, or a folder of DICOM files (one series per channel); with "
        "--engine ray a folder of NIfTI scans or a text file listing them, one per line",
    )
    predict.add_argument(
        "--output",
        type=Path,
        required=True,
        help="output .nii.gz (a folder for a NIfTI folder; a .dcm file with --output-format seg)",
    )
    predict.add_argument(
        "--series",
        action="append",
        metavar="MODALITY=DESCRIPTION_OR_UID",
        help="DICOM input: the series of a channel, by SeriesDescription or SeriesInstanceUID (repeatable; "
        "default: the series whose description contains the modality name)",
    )
    predict.add_argument(
        "--output-format",
        choices=["nifti", "seg", "both"],
        default="nifti",
        help="DICOM input: a NIfTI label map (default), a DICOM SEG (--output ends in .dcm), or both (the "
        "SEG beside the NIfTI, ending .dcm)",
    )
    predict.add_argument(
        "--nonfinite",
        choices=["error", "zero"],
        default="error",
        help="NaN/inf voxels: refuse the scan (default) or set them to 0 with a warning",
    )
    add_engine_options(predict)
    predict.set_defaults(run=cmd_predict)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the verb; returns the exit code (bad input raises `UserError`)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        from visionpipes.core.settings import apply_runtime_settings

        apply_runtime_settings(threads=args.threads)  # before torch is imported by the verb
    return args.run(args)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of `vp-medical`."""
    run_main(lambda: run(argv))
