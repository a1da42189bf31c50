"""`vp-medical plan TASK_DIR --out PLAN.json [--device cpu|cuda] [--memory-gb N]`: the verb's handler
(the fingerprint of the data and the hardware -> the nnU-Net plan, `visionpipes.medical.planning`).

Never imports training code, Lightning, DVCLive or Optuna (import-linter contract).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from visionpipes.core.cli_common import params_section


def cmd_plan(args: argparse.Namespace, *, progress: Callable[[int, int], None] | None = None) -> int:
    """`vp-medical plan`: fingerprint the task folder, plan for the hardware, write both JSON files and
    print the plan's main values; `progress(done, total)` reports the fingerprint's cases."""
    from visionpipes.core.errors import UserError
    from visionpipes.core.plan import plan_hardware
    from visionpipes.medical.data_stage import resolve_task_dir
    from visionpipes.medical.planning.fingerprint import (
        FOREGROUND_SAMPLES_TOTAL,
        compute_fingerprint,
        write_fingerprint,
    )
    from visionpipes.medical.planning.plan import make_plan, overrides_from_params, write_plan

    hardware = plan_hardware(
        params_section(args.params, "plan"),
        device=args.device,
        memory_gb=args.memory_gb,
        cpu_cores=args.cpu_cores,
        source=f"{args.params}:plan",
    )
    task_dir = resolve_task_dir(args.task_dir)
    if args.samples is not None and args.samples < 1:
        raise UserError(f"--samples must be at least 1, not {args.samples}.")
    fingerprint = compute_fingerprint(
        task_dir,
        samples_total=args.samples or FOREGROUND_SAMPLES_TOTAL,
        progress=progress,
    )
    plan = make_plan(fingerprint, hardware, overrides_from_params(params_section(args.params, "train")))
    fingerprint_out = args.fingerprint or args.out.parent / "fingerprint.json"
    write_fingerprint(fingerprint_out, fingerprint)
    write_plan(args.out, plan)
    v = plan.values
    norm = [
        e["scheme"] + ("+nonzero" if e.get("use_nonzero_mask") else "") for e in v["train.data.normalization"]
    ]
    cascade = plan.cascade.get("lowres_spacing") if plan.cascade.get("enabled") else "no"
    print(
        f"plan for {hardware.device} ({hardware.memory_gb:g} GB, {hardware.cpu_cores} cores; budget "
        f"{plan.memory['budget_gb']:g} GB): spacing {plan.spacing} (pixdim {v['train.data.pixdim']}), "
        f"patch {v['train.data.roi_size']}, batch {v['train.data.batch_size']}, strides "
        f"{v['train.model.strides']}, channels {v['train.model.channels']}, normalization {norm}, "
        f"cascade {cascade}"
    )
    differ = {k: o["params"] for k, o in plan.overridden.items() if o.get("differs")}
    print(f"params.yaml overrides: {differ or 'none'}")
    print(f"wrote {args.out} and {fingerprint_out}")
    return 0
