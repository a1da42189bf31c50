"""Medical prediction at real geometries: plan with `vp-medical plan`'s rules (`make_plan`), then predict one
240x240x155x4 MRI volume (BraTS's grid, 1 mm) and one 512x512x200 CT volume (0.8x0.8x2.5 mm, anisotropic)
with the CPU plan's U-Net and patch on this CPU, side by side with MONAI's plain `sliding_window_inference`
of the same network, patch, overlap and blending; the plans for this `cpu` and for a `cuda` 80 GB budget
side by side; the plan's time estimate against the measurement.

    nice -n 5 .venv/bin/python benchmarks/medical_real_geometry.py [--overlap 0.5] [--only mri|ct]

What is synthetic, said plainly:
- the fingerprints are written down, not extracted from files: every case of a dataset has the
  geometry above (spacing, shape, modality), 484 cases for the MRI (BraTS's training set), 131 for the
  CT (the MSD liver's); `visionpipes.medical.planning.plan.make_plan` plans from those numbers, with
  this machine's RAM share and the conv-throughput table its probe measures at start;
- the network is the plan's U-Net topology (MONAI `DynUNet` with the plan's strides, kernels and
  features, the width the CPU plan chose) with random, seeded weights: the point is geometry and speed,
  not segmentation quality;
- the volumes are seeded noise inside a body-shaped ellipsoid (zero outside, as skull-stripped MRI is).

What is measured and what is extrapolated:
- where the plan estimates a full-volume prediction of at most `--full-limit` seconds (420), `full_volume`:
  the whole volume, ours and MONAI plain, once each: seconds, peak RSS, outputs compared;
- otherwise `block`: a sub-volume of 2 x 2 x 1 windows run by each implementation (the headline pair twice,
  alternating, then MONAI with our window batch and ours as ONNX), `full_grid_memory`: the whole volume
  with a 1x1x1-conv stand-in network and 128-voxel windows (the full-size buffers), and
  `full_volume_extrapolated`: the full grid's window count x the block's seconds per window, peak RSS =
  the memory run's peak + the block's network working set. Labelled as such;
- `estimate_vs_measured`: the plan's seconds per window (network) and per volume against ours.
Each implementation runs in a fresh subprocess (peak RSS is `ru_maxrss` of that child). Writes
benchmarks/results/medical_real_geometry.json and .md (`_mri`/`_ct` suffix with `--only`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CUDA_GB = 80.0
#: A CPU plan whose estimated full-volume prediction is at most this many seconds is measured on the
#: full volume; a longer one on a block of windows, extrapolated (`--full-limit`).
FULL_LIMIT_S = 420.0

VOLUMES: dict[str, dict[str, Any]] = {
    "mri": {
        "shape": (240, 240, 155),
        "spacing": (1.0, 1.0, 1.0),
        "modality": ["FLAIR", "T1w", "t1gd", "T2w"],
        "classes": 3,
        "cases": 484,
        "what": "BraTS grid: 4 MRI sequences, 1 mm isotropic, 3 regions",
    },
    "ct": {
        "shape": (512, 512, 200),
        "spacing": (0.8, 0.8, 2.5),
        "modality": ["CT"],
        "classes": 2,
        "cases": 131,
        "what": "abdominal CT grid: 0.8x0.8x2.5 mm (anisotropic), 2 regions",
    },
}


# -- planning -------------------------------------------------------------------------------------
def fingerprint(spec: dict[str, Any]) -> dict[str, Any]:
    """The numbers a fingerprint would hold for a dataset of identical cases of this geometry."""
    stats = {"mean": 0.0, "std": 1.0, "percentile_00_5": -2.6, "percentile_99_5": 2.6}
    return {
        "spacings": [list(spec["spacing"])] * spec["cases"],
        "shapes_after_crop": [list(spec["shape"])] * spec["cases"],
        "modality": spec["modality"],
        "labels": {str(i): f"label {i}" for i in range(spec["classes"] + 1)},
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": [dict(stats) for _ in spec["modality"]],
    }


def plan(spec: dict[str, Any], hardware: dict[str, Any], **timing: Any) -> dict[str, Any]:
    """`vp-medical plan`'s rules (`planning.plan.make_plan`) for this geometry on `hardware`."""
    from visionpipes.medical.planning.plan import make_plan

    p = make_plan(fingerprint(spec), hardware, **timing)
    return {
        "device": hardware["device"],
        "memory_gb": hardware["memory_gb"],
        "budget_gb": p.memory["budget_gb"],
        "spacing": [round(float(s), 4) for s in p.spacing],
        "patch_size": list(p.patch_size),
        "batch_size": p.batch_size,
        "strides": [list(s) for s in p.strides],
        "kernel_sizes": [list(k) for k in p.kernel_sizes],
        "features": list(p.features),
        "estimated_gb": p.memory["estimated_gb"],
        "lowres_stage": bool(p.cascade.get("enabled")),
        "normalization": [e["scheme"] for e in p.normalization],
        "time": p.time,
    }


def windows(shape: tuple[int, ...], roi: list[int], overlap: float) -> int:
    """Windows MONAI's `sliding_window_inference` runs over `shape` (its `_get_scan_interval`)."""
    total = 1
    for size, r in zip(shape, roi):
        if size <= r:
            continue
        interval = max(int(r * (1 - overlap)), 1)
        total *= math.ceil((size - r) / interval) + 1
    return total


# -- one run, in a child process ------------------------------------------------------------------
def _vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _network(job: dict[str, Any]) -> Any:
    import torch

    torch.manual_seed(0)
    channels, classes = job["channels"], job["classes"]
    if job["net"] == "standin":
        return torch.nn.Conv3d(channels, classes, 1).eval()
    from monai.networks.nets import DynUNet

    p = job["plan"]
    return DynUNet(
        3,
        channels,
        classes,
        kernel_size=p["kernel_sizes"],
        strides=p["strides"],
        upsample_kernel_size=p["strides"][1:],
        filters=p["features"],
        norm_name="instance",
        res_block=False,
    ).eval()


def _volume(job: dict[str, Any]) -> Any:
    """Seeded noise inside a centred ellipsoid (zero outside), `(C, X, Y, Z)` float32, z-scored inside."""
    import torch

    shape = tuple(job["shape"])
    rng = np.random.default_rng(7)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    inside = sum(((g - (s - 1) / 2) / (0.42 * s)) ** 2 for g, s in zip(grids, shape)) <= 1.0
    volume = np.zeros((job["channels"], *shape), dtype=np.float32)
    for c in range(job["channels"]):
        volume[c][inside] = rng.standard_normal(int(inside.sum()), dtype=np.float32)
    return torch.from_numpy(volume)


def child(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    net = _network(job)
    image = _volume(job)
    forward = {"seconds": 0.0, "calls": 0, "windows": 0}

    class Timed(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            out = self.inner(x)
            forward["seconds"] += time.perf_counter() - t0
            forward["calls"] += 1
            forward["windows"] += int(x.shape[0])
            return out

    if (
        job["impl"] == "ours_onnx"
    ):  # the deployed form (`vp-medical export`): the same network run by onnxruntime
        from visionpipes.core.export import export_onnx
        from visionpipes.medical.runtime.deployed import OnnxNetwork

        path = job["out"] + ".onnx"
        example = torch.randn(job["sw_batch_size"], job["channels"], *job["plan"]["patch_size"])
        axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
        export_onnx(
            net,
            example,
            path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=axes,
            atol=1e-3,
            rtol=1e-3,
        )
        net = OnnxNetwork(path, threads=job["threads"])
    timed = Timed(net).eval()
    roi, overlap = job.get("roi") or job["plan"]["patch_size"], job["overlap"]
    rss_before = _vm_rss_mib()
    t0 = time.perf_counter()
    engine, prepare_seconds = None, 0.0
    if job["impl"] in ("ours", "ours_onnxruntime", "ours_onnx"):
        from visionpipes.medical.msd.regions import Region
        from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

        regions = [Region(f"r{i}", frozenset({i + 1})) for i in range(job["classes"])]
        engine = {"ours": "torch", "ours_onnxruntime": "onnxruntime", "ours_onnx": "torch"}[job["impl"]]
        config = InferenceConfig(
            overlap=overlap, sw_batch_size=job["sw_batch_size"], blend="gaussian", window_runtime=engine
        )
        predictor = Predictor(
            timed if job["impl"] == "ours_onnx" else net,
            regions=regions,
            modality=[f"c{i}" for i in range(job["channels"])],
            roi_size=roi,
            config=config,
        )
        # the module the predictor runs per window batch (for `auto` on CPU: the onnxruntime form,
        # exported here, inside the timed call), wrapped so that its seconds are counted
        t_prepare = time.perf_counter()
        window_net = predictor.window_network()
        prepare_seconds = time.perf_counter() - t_prepare
        engine = type(window_net).__name__
        if job["impl"] != "ours_onnx":
            predictor._window_net = Timed(window_net).eval()
        probs = predictor.region_probabilities(image)
    else:
        from monai.inferers import sliding_window_inference

        with torch.no_grad():  # as MONAI's own examples call it
            probs = torch.sigmoid(
                sliding_window_inference(
                    image[None],
                    roi_size=roi,
                    sw_batch_size=job["sw_batch_size"],
                    predictor=timed,
                    overlap=overlap,
                    mode="gaussian",
                )
            )[0]
    seconds = time.perf_counter() - t0
    np.save(job["out"], probs.numpy().astype(np.float32))
    return {
        "seconds": round(seconds, 2),
        "network_seconds": round(forward["seconds"], 2),
        "network_share": round(forward["seconds"] / seconds, 3) if seconds else None,
        "windows": forward["windows"],
        "window_network": engine,
        "prepare_seconds": round(prepare_seconds, 2),  # the one-off onnxruntime export (once per predictor)
        "forward_calls": forward["calls"],
        "rss_before_call_mib": round(rss_before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {job['impl']} {job['net']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> dict[str, float]:
    """Max abs difference of the probabilities, and the Dice per label of the argmax label maps
    (argmax over [background at 0.5, region 1, region 2, ...]), the lowest over labels."""
    pa, pb = np.load(a), np.load(b)
    diff = float(np.abs(pa - pb).max())
    background = np.full((1, *pa.shape[1:]), 0.5, dtype=np.float32)
    la = np.concatenate([background, pa]).argmax(0)
    lb = np.concatenate([background, pb]).argmax(0)
    dice = []
    for label in range(1, len(pa) + 1):
        ma, mb = la == label, lb == label
        total = int(ma.sum()) + int(mb.sum())
        dice.append(1.0 if total == 0 else 2 * int((ma & mb).sum()) / total)
    return {"max_abs_diff": diff, "dice_min_over_regions": round(min(dice), 6)}


def pair(base: dict[str, Any], work: Path, name: str, *, kind: str) -> dict[str, Any]:
    """Ours and MONAI's plain call on the same job, each in its own process, outputs compared.

    `kind`: `block` (the plan network on a few windows): the two headline runs are repeated,
    alternating, and the faster of each kept (the machine is shared); then, once each, MONAI with our
    window batch (what batching is worth) and ours with the network in its deployed ONNX form
    (onnxruntime). `full` (the plan network on the whole volume): each headline run once, then ours as
    ONNX. `memory`
    (the stand-in network): each once, one window at a time for both.
    """
    block = kind == "block"
    out: dict[str, Any] = {}
    ours_batch = 1 if kind == "memory" else 4  # the memory run: one window at a time
    headline = [("ours", "ours", ours_batch), ("monai", "monai", 1)]
    runs = headline * (2 if block else 1)
    if block:
        # MONAI with our window batch, and ours with the windows in onnxruntime (`window_runtime: onnxruntime`)
        runs += [("monai_sw4", "monai", 4), ("ours_onnxruntime", "ours_onnxruntime", 4)]
    elif kind == "full":
        runs += [("ours_onnxruntime", "ours_onnxruntime", 4)]
    for key, impl, batch in runs:
        job = {**base, "impl": impl, "sw_batch_size": batch, "out": str(work / f"{name}-{key}.npy")}
        got = {"impl": impl, "sw_batch_size": batch, **run_child(job)}
        print(f"  {name} {key}: {got}", file=sys.stderr, flush=True)
        if key not in out or got["seconds"] < out[key]["seconds"]:
            got["all_seconds"] = [*out.get(key, {}).get("all_seconds", []), got["seconds"]]
            out[key] = got
        else:
            out[key]["all_seconds"].append(got["seconds"])
    monai = out["monai"]["seconds"]
    out["speedup_monai_over_ours"] = round(monai / max(out["ours"]["seconds"], 1e-9), 3)
    out["outputs"] = compare(work / f"{name}-ours.npy", work / f"{name}-monai.npy")
    for key in ("monai_sw4", "ours_onnxruntime", "ours_onnx"):
        if key in out:
            out[f"speedup_monai_over_{key}"] = round(monai / max(out[key]["seconds"], 1e-9), 3)
            out[f"outputs_{key}"] = compare(work / f"{name}-{key}.npy", work / f"{name}-monai.npy")
    for key in {k for k, _, _ in runs}:
        (work / f"{name}-{key}.npy").unlink()
    return out


def _features(p: dict[str, Any]) -> str:
    return f"{p['features'][0]}..{p['features'][-1]}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Medical prediction at real geometries (`benchmarks/medical_real_geometry.py`)",
        "",
        f"{result['cpu']}, {result['threads']} torch threads, run with `{result['command']}` on a shared machine "
        f"(load average {result['load_average_at_start']} at start, {result['load_average_at_end']} at the end). "
        "Random-weight networks; synthetic fingerprints and volumes (see the script's docstring). CPU throughput "
        f"table (GFLOP/s of a 3x3x3 conv by width, {result['cpu_gflops_source']}): {result['cpu_gflops']}.",
        "",
        "## Plans (`make_plan`): this CPU vs a cuda 80 GB budget",
        "",
        "| volume | device | budget GB-eq. | spacing | patch | batch | stages | features | est. GB | low-res stage "
        "| est. s/step | windows/volume | est. predict s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["volumes"].items():
        for p in (v["plans"]["cpu"], v["plans"]["cuda"]):
            t = p["time"]["planned"]
            lines.append(
                f"| {name} | {p['device']} ({p['memory_gb']:g} GB) | {p['budget_gb']:g} | {p['spacing']} | "
                f"{p['patch_size']} | {p['batch_size']} | {len(p['strides'])} | {_features(p)} | {p['estimated_gb']} | "
                f"{p['lowres_stage']} | {t.get('seconds_per_step', '-')} | {t['windows_per_volume']} | "
                f"{t.get('predict_seconds_per_volume', '-')} |"
            )
    lines += [
        "",
        "## Prediction with the cpu plan's network and patch: ours vs MONAI's plain `sliding_window_inference`",
        "",
        "| volume | run | windows | ours s | MONAI s | MONAI/ours | ours peak RSS MiB | MONAI peak RSS MiB "
        "| max abs diff | Dice (argmax) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["volumes"].items():
        for run in ("full_volume", "block", "full_grid_memory"):
            if run not in v:
                continue
            r = v[run]
            label = "**measured full volume**" if run == "full_volume" else run
            lines.append(
                f"| {name} | {label} {tuple(r['shape'])} | {r['ours']['windows']} | {r['ours']['seconds']} | "
                f"{r['monai']['seconds']} | {r['speedup_monai_over_ours']} | {r['ours']['peak_rss_mib']} | "
                f"{r['monai']['peak_rss_mib']} | {r['outputs']['max_abs_diff']:.2e} | {r['outputs']['dice_min_over_regions']} |"
            )
        if "block" in v:
            b = v["block"]
            for key, what in (
                ("monai_sw4", "MONAI given our window batch (4)"),
                ("ours_onnxruntime", "ours, windows in onnxruntime (window_runtime: onnxruntime)"),
            ):
                lines.append(
                    f"| {name} | block: {what} vs MONAI plain | {b[key]['windows']} | {b[key]['seconds']} | "
                    f"{b['monai']['seconds']} | {b[f'speedup_monai_over_{key}']} | {b[key]['peak_rss_mib']} | "
                    f"{b['monai']['peak_rss_mib']} | {b[f'outputs_{key}']['max_abs_diff']:.2e} | "
                    f"{b[f'outputs_{key}']['dice_min_over_regions']} |"
                )
        for key in ("ours_onnx", "ours_onnxruntime"):
            if "full_volume" not in v or key not in v["full_volume"]:
                continue
            f = v["full_volume"]
            lines.append(
                f"| {name} | full volume: {key} vs MONAI plain | {f[key]['windows']} | "
                f"{f[key]['seconds']} | {f['monai']['seconds']} | {f[f'speedup_monai_over_{key}']} | "
                f"{f[key]['peak_rss_mib']} | {f['monai']['peak_rss_mib']} | "
                f"{f[f'outputs_{key}']['max_abs_diff']:.2e} | {f[f'outputs_{key}']['dice_min_over_regions']} |"
            )
        if "full_volume_extrapolated" in v:
            e = v["full_volume_extrapolated"]
            lines.append(
                f"| {name} | **extrapolated** full volume, plan network | {e['windows']} | {e['ours_seconds']} | "
                f"{e['monai_seconds']} | {e['speedup']} | {e['ours_peak_rss_mib']} | {e['monai_peak_rss_mib']} | | |"
            )
    lines += [
        "",
        "## The plan's time estimate vs the measurement (ours)",
        "",
        "| volume | measured how | est. network s/window | measured network s/window | measured/est. "
        "| est. predict s | measured predict s | measured/est. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["volumes"].items():
        c = v["estimate_vs_measured"]
        lines.append(
            f"| {name} | {c['measured']} | {c['seconds_per_window_estimated']} | {c['network_seconds_per_window_measured']} "
            f"| {c['ratio_per_window']} | {c['predict_seconds_estimated']} | {c['predict_seconds_measured']} | "
            f"{c['ratio_predict']} |"
        )
    lines += ["", "## Reading", "", *[f"- {line}" for line in result["notes"]], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--full-limit",
        type=float,
        default=FULL_LIMIT_S,
        help="measure the full volume when the plan estimates at most this many seconds (else a block)",
    )
    ap.add_argument("--only", choices=sorted(VOLUMES), help="one volume only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="small volumes, results in a temporary folder (a check of the script)",
    )
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from visionpipes.core.hardware import cpu_model_name, probe_hardware
    from visionpipes.core.io import write_json
    from visionpipes.medical.plan_command import probe_cpu_gflops

    t_start = time.perf_counter()
    cores = os.cpu_count() or 1
    results = RESULTS
    if args.smoke:
        results = Path(tempfile.mkdtemp(prefix="medical-geometry-smoke-"))
        VOLUMES["mri"]["shape"], VOLUMES["ct"]["shape"] = (64, 56, 40), (96, 96, 40)
    volumes = {args.only: VOLUMES[args.only]} if args.only else VOLUMES
    load = [round(x, 1) for x in os.getloadavg()]
    table = probe_cpu_gflops(args.threads)
    source = f"measured by the plan's conv probe, {args.threads} threads, load average {load}"
    hardware = probe_hardware("cpu").to_dict()
    result: dict[str, Any] = {
        "command": " ".join(
            ["nice -n 5 .venv/bin/python benchmarks/medical_real_geometry.py", *sys.argv[1:]]
        ),
        "cpu": cpu_model_name(),
        "cores": cores,
        "threads": args.threads,
        "load_average_at_start": load,
        "cpu_gflops": table,
        "cpu_gflops_source": source,
        "hardware": hardware,
        "overlap": args.overlap,
        "blend": "gaussian",
        "volumes": {},
    }
    with tempfile.TemporaryDirectory(prefix="medical-geometry-") as tmp:
        work = Path(tmp)
        for name, spec in volumes.items():
            plans = {
                "cpu": plan(spec, hardware, cpu_gflops=table, cpu_gflops_source=source, overlap=args.overlap),
                "cuda": plan(
                    spec, {"device": "cuda", "memory_gb": CUDA_GB, "cpu_cores": cores}, overlap=args.overlap
                ),
            }
            cpu_plan = plans["cpu"]
            est = cpu_plan["time"]["planned"]
            roi = cpu_plan["patch_size"]
            base = {
                "channels": len(spec["modality"]),
                "classes": spec["classes"],
                "plan": cpu_plan,
                "overlap": args.overlap,
                "threads": args.threads,
            }
            entry: dict[str, Any] = {"geometry": spec, "plans": plans}
            n = windows(spec["shape"], roi, args.overlap)
            full_run = est["predict_seconds_per_volume"] <= args.full_limit
            print(
                f"{name}: cpu plan patch {roi} x {cpu_plan['batch_size']}, features {cpu_plan['features']}, "
                f"{n} windows, estimated {est['predict_seconds_per_volume']} s -> "
                f"{'full volume' if full_run else 'block, extrapolated'}",
                file=sys.stderr,
                flush=True,
            )
            if full_run:
                full = pair(
                    {**base, "net": "plan", "shape": list(spec["shape"])}, work, f"{name}-full", kind="full"
                )
                full["shape"] = list(spec["shape"])
                entry["full_volume"] = full
                ours = full["ours"]
                measured_predict, how = ours["seconds"], "full volume"
            else:
                # 2 x 2 x 1 windows of the plan's patch
                step = [max(int(r * (1 - args.overlap)), 1) for r in roi]
                block_shape = [
                    min(spec["shape"][0], roi[0] + step[0]),
                    min(spec["shape"][1], roi[1] + step[1]),
                    min(spec["shape"][2], roi[2]),
                ]
                block = pair(
                    {**base, "net": "plan", "shape": block_shape}, work, f"{name}-block", kind="block"
                )
                block["shape"] = block_shape
                # The full-size buffers (input, output, weights): peak memory does not depend on the window grid.
                memory_roi = [min(s, 128) for s in spec["shape"]]
                full_job = {
                    **base,
                    "net": "standin",
                    "shape": list(spec["shape"]),
                    "roi": memory_roi,
                    "overlap": 0.0,
                }
                memory = pair(full_job, work, f"{name}-memory", kind="memory")
                memory["shape"], memory["roi"], memory["overlap"] = list(spec["shape"]), memory_roi, 0.0
                extra: dict[str, Any] = {"windows": n}
                for impl in ("ours", "monai"):
                    b = block[impl]
                    # the one-off export is counted once, not per window
                    prepare = b.get("prepare_seconds", 0.0)
                    per_window = (b["seconds"] - prepare) / max(b["windows"], 1)
                    extra[f"{impl}_seconds_per_window"] = round(per_window, 3)
                    extra[f"{impl}_seconds"] = round(prepare + n * per_window, 1)
                    extra[f"{impl}_peak_rss_mib"] = round(
                        memory[impl]["peak_rss_mib"] + (b["peak_rss_mib"] - b["rss_before_call_mib"]), 1
                    )
                extra["speedup"] = round(extra["monai_seconds"] / max(extra["ours_seconds"], 1e-9), 3)
                extra["how"] = (
                    "seconds: full-grid windows x the block's seconds per window (network and blending); peak RSS: "
                    "the full-grid memory run's peak (full-size input, output and weight buffers) + the block's "
                    "network working set (its peak minus its RSS before the call)"
                )
                entry.update(block=block, full_grid_memory=memory, full_volume_extrapolated=extra)
                ours = block["ours"]
                measured_predict, how = (
                    extra["ours_seconds"],
                    f"block of {ours['windows']} windows, extrapolated",
                )
            per_window = ours["network_seconds"] / max(ours["windows"], 1)
            entry["estimate_vs_measured"] = {
                "measured": how,
                "windows_estimated": est["windows_per_volume"],
                "windows_full_grid": n,
                "seconds_per_window_estimated": est["seconds_per_patch"],
                "network_seconds_per_window_measured": round(per_window, 3),
                "ratio_per_window": round(per_window / est["seconds_per_patch"], 2),
                "predict_seconds_estimated": est["predict_seconds_per_volume"],
                "predict_seconds_measured": measured_predict,
                "ratio_predict": round(measured_predict / est["predict_seconds_per_volume"], 2),
            }
            result["volumes"][name] = entry
    result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["notes"] = notes(result)
    results.mkdir(parents=True, exist_ok=True)
    stem = "medical_real_geometry" + (f"_{args.only}" if args.only else "")
    write_json(results / f"{stem}.json", result)
    md = results / f"{stem}.md"
    tmp_md = md.with_suffix(".md.tmp")
    tmp_md.write_text(markdown(result))
    os.replace(tmp_md, md)
    print(markdown(result))


def notes(result: dict[str, Any]) -> list[str]:
    out = [
        "CPU plans: patch from the RAM share (x 0.5 for fp32), batch 2, the network's base width the widest of "
        "32/16/8 whose estimated prediction of the median image fits 300 s at the measured throughput "
        "(`planning/plan.py`'s docstring); the estimate counts every conv of the plan's DynUNet (equal to "
        "torch's FlopCounterMode) at the probe's GFLOP/s for its width. Windows at overlap "
        f"{result['overlap']}, Gaussian blending.",
        "Our Predictor is MONAI's sliding_window_inference (same windows, same Gaussian weights) under "
        "torch.inference_mode with 4 windows per forward (InferenceConfig.sw_batch_size, its default) where "
        "MONAI's default is 1; rows `ours` pin InferenceConfig.window_runtime `torch` (eager), rows `ours_onnxruntime` "
        "`onnxruntime` (opt-in; `auto` picks it on CPU for windows of >= 64^3 voxels): the windows run through onnxruntime, the network exported once per predictor (inside the timed call) with "
        "its instance norms rewritten as axis-by-axis reductions (`runtime/fast_windows.py`: onnxruntime's "
        "own InstanceNormalization moved logits by 4.4e-3 on mostly-background windows).",
    ]
    for name, v in result["volumes"].items():
        c = v["estimate_vs_measured"]
        p = v["plans"]["cpu"]
        main = v.get("full_volume") or v["block"]
        where = "measured on the full volume" if "full_volume" in v else "measured on a block, extrapolated"
        out.append(
            f"{name}: cpu plan {p['patch_size']} x {p['batch_size']}, features {_features(p)} vs cuda "
            f"{v['plans']['cuda']['patch_size']} x {v['plans']['cuda']['batch_size']}; prediction {where}: ours "
            f"{c['predict_seconds_measured']} s vs the plan's estimate {c['predict_seconds_estimated']} s "
            f"(measured/estimated {c['ratio_predict']}; per window, network only, {c['ratio_per_window']}); MONAI "
            f"plain / ours = {main['speedup_monai_over_ours']}x, outputs equal to "
            f"{main['outputs']['max_abs_diff']:.1e} (Dice of the argmax {main['outputs']['dice_min_over_regions']}); "
            f"peak RSS ours {main['ours']['peak_rss_mib']} MiB, MONAI {main['monai']['peak_rss_mib']} MiB."
        )
    return out


if __name__ == "__main__":
    main()
