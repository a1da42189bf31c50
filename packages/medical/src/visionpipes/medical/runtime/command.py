"""The `predict` verb of `vp-medical` (runtime: a checkpoint or deploy folder over NIfTI scans, a
folder of them, or DICOM series; locally or on a Ray Data actor pool), and the inference settings the
`evaluate` verb shares. Nothing here imports the training modules.
"""

from __future__ import annotations

import argparse
import sys

from visionpipes.core.cli_common import params_section


def inference_overrides(args: argparse.Namespace) -> dict:
    """Inference settings: the `inference:` section of `--params`, then the flags given."""
    from visionpipes.core.config import parse_config
    from visionpipes.medical.runtime.predictor import InferenceConfig

    settings = params_section(args.params, "inference")
    if settings:
        parse_config(InferenceConfig, settings, source=f"{args.params}:inference")  # names the file at fault
    flags = {
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
        "tta_flips": args.tta,
        "crop_foreground": args.crop_foreground,
        "precision": getattr(args, "precision", None),
    }
    return {**settings, **{k: v for k, v in flags.items() if v is not None}}


def _print_warnings(caught: list) -> None:
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    import warnings

    from visionpipes.core.errors import UserError
    from visionpipes.medical.runtime.predictor import Predictor, refuse_overwriting_input

    if not args.input.exists():
        raise UserError(f"input {args.input} does not exist.")
    refuse_overwriting_input(args.input, args.output)  # before anything runs
    if args.engine == "ray":
        return _predict_ray(args)
    kind = "file"
    if args.input.is_dir():
        from visionpipes.medical.runtime.dicom_predict import input_kind

        kind = input_kind(args.input)
    if kind != "dicom" and (args.series or args.output_format != "nifti"):
        flag = "--series" if args.series else f"--output-format {args.output_format}"
        raise UserError(f"{flag} needs a folder of DICOM series as --input; {args.input} holds NIfTI.")
    overrides = None
    if kind == "dicom":
        from visionpipes.medical.dicom.choice import parse_series_overrides

        overrides = parse_series_overrides(args.series or [])
    predictor = Predictor.load(args.model, device=args.device, **inference_overrides(args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if kind == "dicom":
            from visionpipes.medical.runtime.dicom_predict import predict_dicom_folder

            done = predict_dicom_folder(
                predictor, args.input, args.output, overrides=overrides,
                output_format=args.output_format, nonfinite=args.nonfinite,
            )  # fmt: skip
            _print_warnings([w for w in caught if "NonFinite" in type(w.message).__name__])
            for modality, info in done.series.items():
                print(f"{modality}: series {info}", file=sys.stderr)
            for path in done.outputs:
                print(f"wrote {path}")
            return 0
        if kind == "nifti":
            result = predictor.predict_folder(
                args.input,
                args.output,
                nonfinite=args.nonfinite,
                progress=lambda i, n, p: print(f"predict: {i}/{n} {p.name}", file=sys.stderr),
            )
            _print_warnings([w for w in caught if "NonFinite" in type(w.message).__name__])
            print(f"wrote {len(result.written)} label maps to {args.output}")
            for scan, reason in result.failed:
                print(f"failed: {scan}: {reason}", file=sys.stderr)
            if result.failed:
                print(f"{len(result.failed)} of {len(result.failed) + len(result.written)} scans failed",
                      file=sys.stderr)  # fmt: skip
                return 1
            return 0
        written = predictor.predict_file(args.input, args.output, nonfinite=args.nonfinite)
        _print_warnings([w for w in caught if "NonFinite" in type(w.message).__name__])
    print(f"wrote {written}")
    return 0


def _predict_ray(args: argparse.Namespace) -> int:
    """`predict --engine ray`: a folder of NIfTI scans or a text file listing them, one label map per scan
    in the --output folder, on a Ray Data actor pool; scans already predicted are skipped."""
    from visionpipes.core.errors import UserError
    from visionpipes.core.ray_batch import require_ray
    from visionpipes.medical.runtime.batch import list_scans, predict_scans_ray

    require_ray()  # the one clear error before anything loads
    if args.input.is_dir() and not any(p.name.endswith((".nii", ".nii.gz")) for p in args.input.iterdir()):
        raise UserError(
            f"--engine ray predicts NIfTI scans; {args.input} holds none (DICOM: use --engine local)."
        )
    if args.series or args.output_format != "nifti":
        raise UserError("--series and --output-format are for DICOM input, which --engine ray does not read.")
    scans = list_scans(args.input)
    result, done = predict_scans_ray(
        args.model,
        scans,
        args.output,
        overrides=inference_overrides(args),
        nonfinite=args.nonfinite,
        address=args.address,
        actors=args.actors,
        num_cpus=args.num_cpus,
        gpus_per_actor=args.gpus_per_actor,
    )
    print(f"wrote {len(result.written)} label maps to {args.output} ({len(done)} already there, skipped)")
    for scan, reason in result.failed:
        print(f"failed: {scan}: {reason}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} of {len(scans)} scans failed", file=sys.stderr)
        return 1
    return 0
