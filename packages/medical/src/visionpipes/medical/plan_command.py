"""`vp-medical plan TASK_DIR --out PLAN.json [--device cpu|cuda] [--memory-gb N]`: the verb's handler
(the fingerprint of the data and the hardware -> the nnU-Net plan, `visionpipes.medical.planning`).

params.yaml's `plan:` section: `device`, `memory_gb`, `cpu_cores` (core's hardware keys) and, for CPU
plans, `cpu_gflops` (`auto`: a ~2 s conv probe on this machine, scaled from its cores to the plan's;
a number: GFLOP/s of a 32-channel 3x3x3 conv block — conv, instance norm, leaky ReLU — counting the conv's FLOPs) and `predict_seconds` (the target for predicting the
median image, which chooses the network's width). The prediction estimate assumes `inference.overlap`
when params gives a number, else nnU-Net's 0.5.

Never imports training code, Lightning, DVCLive or Optuna (import-linter contract).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from visionpipes.core.cli_common import params_section

#: Keys of the `plan:` section the medical plan reads itself (the rest go to `core.plan.plan_hardware`).
MEDICAL_PLAN_KEYS = ("cpu_gflops", "predict_seconds")


def _number(section: dict, key: str, source: str) -> float | None:
    from visionpipes.core.errors import UserError
    from visionpipes.medical.planning.plan import is_auto

    value = section.get(key)
    if value is None or is_auto(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{source}: key '{key}' = {value!r} must be a number > 0 (or auto).")
    return float(value)


def probe_cpu_gflops(threads: int) -> dict[int, float]:
    """Measure GFLOP/s of a 3x3x3 conv block (conv, instance norm, leaky ReLU; the conv's FLOPs) per width in
    `throughput.PROBE_WIDTHS` on this CPU with `threads` threads."""
    import time

    import torch

    from visionpipes.medical.planning import throughput

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    table: dict[int, float] = {}
    try:
        gen = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            for width in throughput.PROBE_WIDTHS:
                edge = throughput.PROBE_EDGE[width]
                # one conv block as the U-Net runs it (DynUNet: conv, instance norm, leaky ReLU); only the
                # conv's FLOPs are counted, so the rate carries the elementwise layers' time
                block = torch.nn.Sequential(
                    torch.nn.Conv3d(width, width, 3, padding=1),
                    torch.nn.InstanceNorm3d(width, affine=True),
                    torch.nn.LeakyReLU(0.01, inplace=True),
                )
                x = torch.randn(1, width, edge, edge, edge, generator=gen)
                block(x)  # warm-up: oneDNN picks its kernel
                best = float("inf")
                for _ in range(throughput.PROBE_REPEATS):
                    t0 = time.perf_counter()
                    block(x)
                    best = min(best, time.perf_counter() - t0)
                flops = 2 * 27 * width * width * edge**3
                table[width] = round(flops / max(best, 1e-9) / 1e9, 3)
    finally:
        torch.set_num_threads(before)
    return table


def _overlap(params: object) -> tuple[float, str]:
    from visionpipes.core.errors import UserError
    from visionpipes.medical.planning.cost import NNUNET_OVERLAP

    value = params_section(params, "inference").get("overlap")
    if value is None or isinstance(value, str):
        return NNUNET_OVERLAP, "nnU-Net's"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UserError(f"{params}:inference: key 'overlap' = {value!r} must be a number in [0, 1).")
    return float(value), "inference.overlap"


def cmd_plan(args: argparse.Namespace, *, progress: Callable[[int, int], None] | None = None) -> int:
    """`vp-medical plan`: fingerprint the task folder, plan for the hardware, write both JSON files and
    print the plan's main values; `progress(done, total)` reports the fingerprint's cases."""
    from visionpipes.core.errors import UserError
    from visionpipes.core.plan import plan_hardware
    from visionpipes.medical.data_stage import resolve_task_dir
    from visionpipes.medical.planning.cost import DEFAULT_PREDICT_SECONDS
    from visionpipes.medical.planning.fingerprint import (
        FOREGROUND_SAMPLES_TOTAL,
        compute_fingerprint,
        write_fingerprint,
    )
    from visionpipes.medical.planning.plan import (
        make_plan,
        overrides_from_params,
        write_plan,
    )

    source = f"{args.params}:plan"
    section = params_section(args.params, "plan")
    own = {k: section.pop(k) for k in MEDICAL_PLAN_KEYS if k in section}
    gflops = _number(own, "cpu_gflops", source)
    target = _number(own, "predict_seconds", source) or DEFAULT_PREDICT_SECONDS
    overlap, overlap_from = _overlap(args.params)
    hardware = plan_hardware(
        section,
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
    gflops_source = "given (plan.cpu_gflops)"
    if hardware.device != "cuda" and gflops is None:
        import os

        here = os.cpu_count() or 1
        table = probe_cpu_gflops(here)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
        gflops_source = f"measured: conv probe on {here} cores (load average {load})"
        if hardware.cpu_cores != here:
            table = {w: round(g * hardware.cpu_cores / here, 3) for w, g in table.items()}
            gflops_source += f", scaled to {hardware.cpu_cores} cores"
        gflops = table  # type: ignore[assignment]
    plan = make_plan(
        fingerprint,
        hardware,
        overrides_from_params(params_section(args.params, "train")),
        cpu_gflops=gflops,
        cpu_gflops_source=gflops_source,
        predict_seconds=target,
        overlap=overlap,
    )
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
    for label, est in (("planned", plan.time["planned"]), ("params", plan.time.get("effective"))):
        if est is None:
            continue
        secs = (
            f": ~{est['seconds_per_step']:g} s per training step, ~{est['predict_seconds_per_volume']:g} s "
            f"to predict the median image ({est['windows_per_volume']} windows at overlap {overlap:g}, "
            f"{overlap_from})"
            if "seconds_per_step" in est
            else f": {est['step_gflop']:g} GFLOP per step, {est['predict_gflop_per_volume']:g} GFLOP per median image"
        )
        print(f"cost ({label} {est['patch_size']} x {est['batch_size']}, features {est['features']}){secs}")
    if plan.time.get("meets_target") is False:
        print(
            f"warning: even base width {plan.time['base_width']} misses the {target:g} s prediction target "
            "(plan.predict_seconds); the estimate above is what to expect"
        )
    differ = {k: o["params"] for k, o in plan.overridden.items() if o.get("differs")}
    print(f"params.yaml overrides: {differ or 'none'}")
    print(f"wrote {args.out} and {fingerprint_out}")
    return 0
