"""Peak GPU memory of the medical plan's training against the plan's estimate (issue #13, section 3: "train the
medical plan's network for a few steps at the planned CUDA patch and batch, and report peak GPU memory
against the plan's estimate (goal: within 20 %)").

STATUS: prepared, NOT RUN YET (no GPU was lent to the session that wrote it). A session with the `run` tool
runs it as ONE command (the device machine has torch and numpy but not monai; our packages travel with the
working tree and are put on PYTHONPATH; `.whl` is git-ignored and holds monai's pure-Python wheel, 1.6 MB):

    # here, once (if .whl/monai-1.6.1-py3-none-any.whl is not there):
    .venv/bin/pip download --no-deps --only-binary=:all: monai==1.6.1 -d .whl
    # run tool: carry [".whl"], timeout_s 540
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/monai-*.whl \
      && export PYTHONPATH=/tmp/site:packages/core/src:packages/medical/src PYTHONUNBUFFERED=1 \
      && python3 benchmarks/medical_gpu_memory.py --steps 5 --out "$OUT"
    # then copy files_at/medical_gpu_memory_<gpu>.json to benchmarks/results/ and commit it

Expected cost: 8 rows (4 plans x 2 precisions) of ~130-150 TFLOP per step (the plans' `step_gflop`), 5 steps
each: about a minute on an H200 in bf16, a few in fp32; rows run smallest estimate first and the JSON is
rewritten after every row, so a run cut off by its limit keeps what it measured. An out-of-memory row (fp32
at a plan that fills the GPU) is recorded (`oom`), another CUDA runtime error too (`error`).

Import chain (checked in a venv with only torch + numpy + that wheel + PYTHONPATH): `make_plan` needs numpy
and `visionpipes.core.errors` only; `probe_hardware`/`resolve_precision` torch; the network and the loss
monai (which needs torch and numpy). No pydantic, yaml or lightning is imported.

What it does, per plan: `make_plan` (`vp-medical plan`'s rules) for `cuda` with the GPU's own memory
(`core.hardware.probe_hardware("cuda")`: `get_device_properties(0).total_memory` in GiB) and for an 80 GB
budget (`plan.memory_gb: 80`), for the MRI (240x240x155x4, BraTS) and CT (512x512x200 at 0.8x0.8x2.5 mm)
fingerprints of `benchmarks/medical_real_geometry.py` (imported, not copied); the plan's network is that
script's MONAI `DynUNet` (the plan's kernels, strides and nnU-Net's features 32..320, instance norm), in
train mode. It trains `--steps` steps on random inputs at the plan's patch and batch with the medical
trainer's loss (`training.module.MSDSegmentationModule`: MONAI `DiceCELoss(sigmoid=True, smooth_nr=0,
smooth_dr=1e-5, squared_pred=True)`, i.e. Dice + BCE on sigmoid region channels: 3 for the MRI, 2 for the
CT) and optimizer (AdamW, lr 3e-3 and weight decay 1e-5 as `pipelines/medical/params.yaml`), under each
`--precision`:
- `auto` (default, first): what `vp-medical train` gets on CUDA with `train.precision: auto`
  (`core.device.resolve_precision`: `bf16-mixed` on a bf16 GPU, else `16-mixed`): autocast over forward and
  loss as Lightning does (16-mixed adds Lightning's GradScaler). nnU-Net's memory rule (8 GB for 560e6
  feature-map voxels at batch 2) is calibrated on fp16 AMP training, so the 20 % goal is about this row;
- `32-true` (default, second): what `pipelines/medical/params.yaml` sets today (`train.precision: 32-true`;
  PyTorch's default TF32 convolutions). Twice the activation bytes: expected ~2x the estimate, or out of
  memory for a plan that fills the GPU (recorded as `oom`, not an error).
Memory: `torch.cuda.reset_peak_memory_stats` with nothing of ours on the GPU, then model, optimizer, batch
and the steps; `max_memory_allocated` and `max_memory_reserved` in GiB (the plan's GB are GiB, as
`probe_hardware`'s). The compared number is `max_memory_reserved` (what the caching allocator took from
the GPU, close to what nvidia-smi shows less the ~0.5 GiB CUDA context), ratio = measured / estimated,
`within_20pct` = |ratio - 1| <= 0.2. Step time: median over the steps after the first (the first pays
cuDNN's and the allocator's set-up). No deep supervision (the pipeline's DynUNet is built without it;
nnU-Net's adds small heads at every decoder stage: a little more memory than measured here).

Writes benchmarks/results/medical_gpu_memory_<gpu>.json (or `--out DIR`), atomically, and prints a table.
Without CUDA it prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import medical_real_geometry as geometry  # noqa: E402  (the fingerprints, the plan, the plan's DynUNet)

RESULTS = ROOT / "benchmarks" / "results"
NO_CUDA = "medical_gpu_memory: needs a CUDA device (torch.cuda.is_available() is False)"
#: The medical trainer's optimizer settings as pipelines/medical/params.yaml sets them.
LR = 3e-3
WEIGHT_DECAY = 1e-5
#: `MSDSegmentationModule`'s loss arguments (training/module.py).
LOSS_ARGS = {"sigmoid": True, "smooth_nr": 0.0, "smooth_dr": 1e-5, "squared_pred": True}
BUDGET_GB = geometry.CUDA_GB
GOAL = 0.2
GIB = 1024**3


def plans(gpu_memory_gb: float, cpu_cores: int) -> list[dict[str, Any]]:
    """The four plans: MRI and CT, each for the GPU's own memory and for the 80 GB budget."""
    out = []
    for volume in ("mri", "ct"):
        spec = geometry.VOLUMES[volume]
        for label, memory in (("gpu", gpu_memory_gb), (f"{BUDGET_GB:g}gb", BUDGET_GB)):
            hardware = {"device": "cuda", "memory_gb": round(float(memory), 2), "cpu_cores": cpu_cores}
            out.append(
                {
                    "volume": volume,
                    "budget": label,
                    "in_channels": len(spec["modality"]),
                    "regions": spec["classes"],
                    "plan": geometry.plan(spec, hardware),
                }
            )
    return out


def build(entry: dict[str, Any]) -> Any:
    """The plan's DynUNet (medical_real_geometry's), in train mode."""
    job = {
        "net": "dynunet",
        "channels": entry["in_channels"],
        "classes": entry["regions"],
        "plan": entry["plan"],
    }
    return geometry._network(job).train()


def loss_function() -> Any:
    from monai.losses import DiceCELoss

    return DiceCELoss(**LOSS_ARGS)


def measure(
    entry: dict[str, Any],
    *,
    device: str = "cuda",
    steps: int = 5,
    precision: str = "bf16-mixed",
    patch: list[int] | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """Train the plan's network `steps` steps at its patch and batch (or `patch`/`batch`, for a small check)
    and return the step times, the loss, and on CUDA the peak memory against the plan's estimate.

    `precision`: `bf16-mixed`, `16-mixed` (with a GradScaler) or `32-true`. A CUDA out-of-memory error
    ends the run and is recorded (`oom: true`) with the peak reached.
    """
    import torch

    if precision not in ("bf16-mixed", "16-mixed", "32-true"):
        raise ValueError(f"precision must be bf16-mixed, 16-mixed or 32-true, got {precision!r}")
    p = entry["plan"]
    patch = list(patch or p["patch_size"])
    batch = int(batch or p["batch_size"])
    cuda = device.startswith("cuda")
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    result: dict[str, Any] = {
        "volume": entry["volume"],
        "budget": entry["budget"],
        "plan_memory_gb": p["memory_gb"],
        "patch_size": patch,
        "batch_size": batch,
        "features": list(p["features"]),
        "strides": [list(s) for s in p["strides"]],
        "precision": precision,
        "estimated_gb": p["estimated_gb"],
        "steps": steps,
        "oom": False,
    }
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result["allocated_before_gib"] = round(torch.cuda.memory_allocated() / GIB, 4)
    times: list[float] = []
    losses: list[float] = []
    objects: dict[str, Any] = {}
    try:
        net = objects["net"] = build(entry).to(device)
        optimizer = objects["opt"] = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "16-mixed")
        criterion = loss_function()
        g = torch.Generator(device=device).manual_seed(0)
        x = objects["x"] = torch.randn(batch, entry["in_channels"], *patch, device=device, generator=g)
        y = objects["y"] = (
            torch.rand(batch, entry["regions"], *patch, device=device, generator=g) > 0.7
        ).float()
        result["parameters"] = sum(t.numel() for t in net.parameters())
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(
                device.split(":")[0], dtype=dtype or torch.bfloat16, enabled=dtype is not None
            ):
                loss = criterion(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    except torch.OutOfMemoryError as err:
        result["oom"] = True
        result["oom_message"] = str(err).splitlines()[0][:300]
    except RuntimeError as err:  # e.g. a cuDNN limit at these sizes: recorded, the other rows still run
        if not cuda:
            raise
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    result["steps_done"] = len(times)
    result["first_step_s"] = round(times[0], 3) if times else None
    result["step_s"] = round(statistics.median(times[1:] or times), 3) if times else None
    result["losses"] = [round(v, 5) for v in losses]
    result["finite"] = all(v == v and abs(v) != float("inf") for v in losses)
    if cuda:
        reserved = torch.cuda.max_memory_reserved() / GIB
        result["max_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        result["max_reserved_gib"] = round(reserved, 3)
        free, total = torch.cuda.mem_get_info()
        result["device_used_gib_after"] = round((total - free) / GIB, 3)
        result["ratio_reserved"] = round(reserved / p["estimated_gb"], 3)
        result["ratio_allocated"] = round(result["max_allocated_gib"] / p["estimated_gb"], 3)
        result["within_20pct"] = (
            not result["oom"] and "error" not in result and abs(result["ratio_reserved"] - 1) <= GOAL
        )
    objects.clear()
    del times
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
    return result


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| volume | budget | patch | batch | precision | est. GB | max reserved GiB | max alloc. GiB | ratio | within 20 % | step s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        patch = "x".join(str(v) for v in r["patch_size"])
        oom = " (OOM)" if r["oom"] else " (error)" if r.get("error") else ""
        lines.append(
            f"| {r['volume']} | {r['budget']} ({r['plan_memory_gb']:g}) | {patch} | {r['batch_size']} | "
            f"{r['precision']} | {r['estimated_gb']:.1f} | {r['max_reserved_gib']:.1f}{oom} | "
            f"{r['max_allocated_gib']:.1f} | {r['ratio_reserved']:.2f} | {'yes' if r['within_20pct'] else 'no'} | "
            f"{r['step_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="training steps per plan and precision (>= 2)")
    parser.add_argument(
        "--precision", nargs="+", default=["auto", "32-true"],
        help="auto (resolve_precision on CUDA), bf16-mixed, 16-mixed, 32-true",
    )  # fmt: skip
    parser.add_argument("--only", choices=("mri", "ct"), help="one volume only")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the JSON (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    if args.steps < 2:
        print(f"medical_gpu_memory: --steps must be >= 2, got {args.steps}", file=sys.stderr)
        return 2
    from visionpipes.core.device import resolve_precision
    from visionpipes.core.hardware import probe_hardware

    precisions = [resolve_precision(p, "cuda") for p in args.precision]
    hardware = probe_hardware("cuda")
    name = torch.cuda.get_device_name(0)
    entries = [e for e in plans(hardware.memory_gb, hardware.cpu_cores) if args.only in (None, e["volume"])]
    entries.sort(key=lambda e: e["plan"]["estimated_gb"])  # smallest first: a cut-off run keeps the most rows
    rows: list[dict[str, Any]] = []
    result = {
        "gpu": name,
        "gpu_memory_gib": hardware.memory_gb,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_conv": torch.backends.cudnn.allow_tf32,
        "precision_auto": resolve_precision("auto", "cuda"),
        "goal": f"max_memory_reserved within {GOAL:.0%} of the plan's memory.estimated_gb",
        "loss": "MONAI DiceCELoss " + json.dumps(LOSS_ARGS) + " (MSDSegmentationModule's)",
        "optimizer": f"AdamW lr {LR:g} weight_decay {WEIGHT_DECAY:g}",
        "network": "MONAI DynUNet, the plan's kernels/strides/features, instance norm, no deep supervision",
        "inputs": "random normal images, random binary region masks (30 % ones)",
        "rows_planned": len(entries) * len(precisions),
        "rows": rows,
    }
    out = args.out / f"medical_gpu_memory_{_slug(name)}.json"
    for entry in entries:
        for precision in precisions:
            row = measure(entry, device="cuda", steps=args.steps, precision=precision)
            rows.append(row)
            _write_json(
                out, result
            )  # after every row: a run cut off by its time limit keeps what it measured
            keys = (
                "volume",
                "budget",
                "precision",
                "max_reserved_gib",
                "estimated_gb",
                "ratio_reserved",
                "oom",
            )
            print(json.dumps({k: row.get(k) for k in (*keys, "step_s", "error")}), flush=True)
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
