"""`vp-driving train-multitask` (arguments and handler) and how `evaluate`/`export`/`deploy` find the
multi-task model: `--multitask` names a `multitask_model.pt`, or the folder `train-multitask` wrote,
which holds either the model or — when `params.yaml` says `model.family: two_model` — only the
marker `skipped.json` (the pipeline stage runs either way; DVC cannot skip a stage by a parameter).

Imports nothing heavy until a handler runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError

#: The file in a `train-multitask` output folder when the family is not `multitask`.
SKIPPED_FILE = "skipped.json"
MODEL_FILE = "multitask_model.pt"


def model_family(params: str | None) -> str:
    """`model.family` of a params file (`two_model` without one).

    Raises:
        UserError: on an unknown key or family in the `model` section.
    """
    from visionpipes.core.config import load_config
    from visionpipes.driving.multitask.config import FamilyConfig

    return load_config(FamilyConfig, params, "model").family


def resolve_multitask_model(path: str | None, params: str | None) -> Path | None:
    """The multi-task model that `--multitask PATH` names, or None when there is none to use.

    A file is used as it is. A `train-multitask` output folder gives its `multitask_model.pt`, or
    None when it holds the two-model marker; with `--params`, the folder must agree with
    `model.family` (`multitask`: the model must be there; `two_model`: it is not used).

    Raises:
        UserError: if the path is missing, or the folder disagrees with the family.
    """
    if path is None:
        return None
    target = Path(path)
    if target.is_file():
        return target
    if not target.is_dir():
        raise UserError(
            f"--multitask {target} does not exist (a multitask_model.pt or a train-multitask folder)."
        )
    family = model_family(params) if params else None
    model = target / MODEL_FILE
    if family == "two_model" or (family is None and not model.is_file()):
        if not model.is_file() and not (target / SKIPPED_FILE).is_file():
            raise UserError(f"--multitask {target} holds neither {MODEL_FILE} nor {SKIPPED_FILE}.")
        print(f"multi-task: model.family is two_model; {target} is not used", flush=True)
        return None
    if not model.is_file():
        raise UserError(
            f"model.family is multitask but {target} holds no {MODEL_FILE}: run `vp-driving train-multitask` "
            "(it only trains when model.family is multitask)."
        )
    return model


def _cmd_train_multitask(args: argparse.Namespace) -> None:
    from visionpipes.core.cli_common import params_section
    from visionpipes.core.io import atomic_path, write_json
    from visionpipes.driving.multitask.config import MultiTaskConfig

    source = f"{args.params or 'params'}:multitask"
    section = params_section(args.params, "multitask")
    cfg = MultiTaskConfig.from_params(section, source=source)
    family = args.family or model_family(args.params)
    out = Path(args.out)
    if family != "multitask":
        out.parent.mkdir(parents=True, exist_ok=True)
        note = {
            "family": family,
            "trained": False,
            "why": "model.family is not multitask: nothing trained (set model.family: multitask, or --family multitask)",
        }
        with atomic_path(out, is_dir=True) as tmp:
            write_json(tmp / SKIPPED_FILE, note)
        print(json.dumps(note, indent=2))
        return
    if args.max_minutes is not None:
        cfg.train.max_minutes = args.max_minutes
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            raise UserError(f"--max-epochs must be at least 1, got {args.max_epochs}.")
        cfg.train.max_epochs = args.max_epochs
    if args.schedule is not None:
        cfg.train.schedule = args.schedule
    if args.device is not None:
        cfg.trainer = {**cfg.trainer, "accelerator": args.device}
    from visionpipes.driving.multitask.train import train_multitask

    model = cfg.model
    print(
        f"train-multitask: {model.backbone if isinstance(model.backbone, str) else model.backbone.get('name', 'spec')} "
        f"at {model.width}x{model.height}, schedule {cfg.train.schedule}, {cfg.train.max_epochs} epochs"
        + (f" within {cfg.train.max_minutes} min" if cfg.train.max_minutes else ""),
        flush=True,
    )
    run = train_multitask(args.dataset, out, cfg)
    if not args.keep_checkpoints:  # multitask_model.pt holds the final weights; Lightning's states are large
        import shutil

        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    result: dict[str, Any] = {
        "model": str(run.model_path),
        "epochs": run.epochs,
        "seconds": round(run.seconds, 1),
        "phase_steps": run.phase_steps,
        "metrics": run.metrics,
    }
    print(json.dumps(result, indent=2))


def add_train_multitask_parser(verbs: Any) -> None:
    """Add `train-multitask` to the `vp-driving` sub-commands."""
    p = verbs.add_parser(
        "train-multitask",
        help="train the multi-task network (detection, lanes, drivable area; Lightning + DVCLive)",
    )
    p.add_argument("--dataset", required=True, help="dataset.json from `vp-driving prepare`")
    p.add_argument("--out", required=True, help="folder to write (multitask_model.pt, dvclive/)")
    p.add_argument("--params", help="params.yaml with the 'multitask' section (and 'model.family')")
    p.add_argument(
        "--family",
        choices=("two_model", "multitask"),
        help="overrides model.family (two_model: write the skipped.json marker, train nothing)",
    )
    p.add_argument("--max-minutes", type=float, help="time budget (overrides multitask.train.max_minutes)")
    p.add_argument("--max-epochs", type=int, help="epochs (overrides multitask.train.max_epochs)")
    p.add_argument("--schedule", choices=("joint", "staged"), help="overrides multitask.train.schedule")
    p.add_argument("--device", help="auto, cpu or gpu (overrides multitask.trainer.accelerator)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep Lightning's checkpoints/")
    p.set_defaults(func=_cmd_train_multitask)
