"""Medical prediction at real geometries: plan with `vp-medical plan`'s rules (`make_plan`), then predict one
240x240x155x4 MRI volume (BraTS's grid, 1 mm) and one 512x512x200 CT volume (0.8x0.8x2.5 mm, anisotropic)
with the CPU plan's U-Net and patch on this CPU, side by side with MONAI's plain `sliding_window_inference`
of the same network, patch, overlap and blending on the full grid (what a MONAI user runs); the plans for
this `cpu` and for a `cuda` 80 GB budget side by side; the plan's time estimate against the measurement.

    nice -n 5 .venv/bin/python benchmarks/medical_real_geometry.py [--overlap 0.5] [--only mri|ct] [--onnxruntime]
    nice -n 5 .venv/bin/python benchmarks/medical_real_geometry.py --bf16-quality data/medical/train/checkpoints/last.ckpt

Two ratios, labelled (MONAI plain / ours):
- **engine only**: ours with `crop_foreground: false`, the same windows as MONAI (4 windows per forward
  under inference_mode against MONAI's default 1);
- **engine only, bf16 windows** (`ours_bf16`): the same, with `InferenceConfig.precision: bf16` (the window
  network under `torch.autocast(cpu, bfloat16)`; logits and blending float32), on this CPU's AMX/AVX512-BF16;
  `--bf16-quality MODEL` compares a trained model's fp32 and bf16 windows on real scans (the medical
  pipeline's validation scans by default): max abs probability diff and Dice per region;
- **as deployed**: ours with `crop_foreground: true`, as `pipelines/medical/params.yaml` sets it and as
  nnU-Net crops every case to its non-zero region: the MRI's box of non-zero voxels (the brain), the CT's
  body box (voxels above `InferenceConfig.body_threshold_hu`, -500, in the raw HU, `Predictor.crop_box`);
  every region is absent outside. Outputs: inside the box, max abs diff and argmax Dice against MONAI
  plain; outside it, the share of voxels each labels a region (ours: 0 by construction; MONAI plain's
  random-weight network: whatever it predicts on the background, reported rather than hidden).

What is synthetic, said plainly:
- the fingerprints are written down, not extracted from files: every case of a dataset has the
  geometry above (spacing, shape, modality), 484 cases for the MRI (BraTS's training set), 131 for the
  CT (the MSD liver's, with foreground HU statistics of the order of the liver's: mean 99, std 39,
  percentiles -17/201); `visionpipes.medical.planning.plan.make_plan` plans from those numbers, with this
  machine's RAM share and the conv-throughput table its probe measures at start;
- the network is the plan's U-Net topology (MONAI `DynUNet` with the plan's strides, kernels and
  features, the width the CPU plan chose) with random, seeded weights: the point is geometry and speed,
  not segmentation quality (inside the crop box its outputs depend on where the windows lie, so the
  as-deployed inside-box agreement says little about a trained model; the trained Task01 sample's Dice
  with `crop_foreground: true` is in pipelines/medical's metrics);
- the bodies have real extents: MRI, the MNI152 brain mask (ICBM 2009a, 1 mm, the T1 template > 0.2) that
  nilearn ships inside its wheel (`nilearn.datasets.load_mni152_brain_mask(resolution=1)` reads a packaged
  file, no download; `pip install -e 'packages/medical[bench]'`), cut to its 145x181x155 mm box and
  centred in the grid (BraTS's SRI24 grid is 1 mm as MNI152 is), 4 channels of seeded noise inside, zero
  outside; CT, an adult abdomen: an elliptic cylinder 33 cm lateral x 25 cm antero-posterior (412 x 312
  voxels at 0.8 mm; an adult abdomen's typical width and depth) through all 200 slices, soft tissue
  40 +- 40 HU inside, air -1000 HU outside, normalised with the plan's CT scheme (clip + dataset z-score).

What is measured and what is extrapolated:
- where the plan estimates a full-volume prediction of at most `--full-limit` seconds (420), `full_volume`:
  the whole volume, ours (crop off), MONAI plain, ours as deployed, once each in that order: seconds, peak
  RSS, outputs compared;
- otherwise `slab`: a full-plane slab one window thick (512x512x56 for the CT: every in-plane window of the
  grid and of the body box) run by the same three, `full_grid_memory`: the whole volume with a
  1x1x1-conv stand-in network and 128-voxel windows (the full-size buffers), and `full_volume_extrapolated`:
  each implementation's own full-volume window count (the full grid's, or the body box's for ours as
  deployed) x its seconds per window on the slab, peak RSS = the memory run's peak + the slab's network
  working set. Labelled as such;
- `estimate_vs_measured`: the plan's seconds per window (network) and per volume against ours (crop off).
Each implementation runs in a fresh subprocess (peak RSS is `ru_maxrss` of that child); the normalisation
is done before the timed call for all (the box of ours as deployed is inside it). Writes
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
#: full volume; a longer one on a slab of windows, extrapolated (`--full-limit`).
FULL_LIMIT_S = 420.0

VOLUMES: dict[str, dict[str, Any]] = {
    "mri": {
        "shape": (240, 240, 155),
        "spacing": (1.0, 1.0, 1.0),
        "modality": ["FLAIR", "T1w", "t1gd", "T2w"],
        "classes": 3,
        "cases": 484,
        "what": "BraTS grid: 4 MRI sequences, 1 mm isotropic, 3 regions",
        # the MNI152 (ICBM 2009a) brain mask nilearn ships in its wheel, 1 mm, centred in the grid
        "body": "mni152",
    },
    "ct": {
        "shape": (512, 512, 200),
        "spacing": (0.8, 0.8, 2.5),
        "modality": ["CT"],
        "classes": 2,
        "cases": 131,
        "what": "abdominal CT grid: 0.8x0.8x2.5 mm (anisotropic), 2 regions",
        # an adult abdomen: an elliptic cylinder 33 cm lateral x 25 cm antero-posterior through every slice
        "body": "abdomen",
        "body_mm": (330.0, 250.0),
        # foreground HU statistics of the order of the MSD liver's (liver and tumour voxels)
        "stats": {"mean": 99.4, "std": 39.4, "percentile_00_5": -17.0, "percentile_99_5": 201.0},
    },
}


# -- planning -------------------------------------------------------------------------------------
def fingerprint(spec: dict[str, Any]) -> dict[str, Any]:
    """The numbers a fingerprint would hold for a dataset of identical cases of this geometry."""
    stats = spec.get("stats") or {"mean": 0.0, "std": 1.0, "percentile_00_5": -2.6, "percentile_99_5": 2.6}
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
        "normalization_entries": [dict(e) for e in p.normalization],
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


def brain_mask(shape: tuple[int, ...]) -> np.ndarray:
    """The MNI152 brain mask (nilearn's packaged ICBM 2009a T1 template > 0.2, 1 mm; no download), cut to
    its box and centred in `shape` (BraTS's SRI24 grid is 1 mm too); cut symmetrically where larger."""
    from nilearn.datasets import load_mni152_brain_mask

    mask = np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    idx = np.nonzero(mask)
    mask = mask[tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)]
    out = np.zeros(shape, dtype=bool)
    src, dst = [], []
    for m, n in zip(mask.shape, shape):
        cut = max(0, (m - n) // 2)
        size = min(m, n)
        src.append(slice(cut, cut + size))
        dst.append(slice((n - size) // 2, (n - size) // 2 + size))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def body_mask(job: dict[str, Any]) -> np.ndarray:
    """Where the body is: the MNI152 brain (`mri`), an abdomen's elliptic cylinder (`ct`), or the old
    ellipsoid of semi-axes 0.42 x the grid (`--smoke`)."""
    shape = tuple(job["shape"])
    if job["body"] == "mni152":
        return np.load(job["mask_path"])
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    if job["body"] == "abdomen":
        semi = [mm / 2 / sp for mm, sp in zip(job["body_mm"], job["spacing"][:2])]
        ellipse = sum(((g - (s - 1) / 2) / a) ** 2 for g, s, a in zip(grids[:2], shape[:2], semi)) <= 1.0
        return np.broadcast_to(ellipse, shape)  # (X, Y, 1): every slice
    return sum(((g - (s - 1) / 2) / (0.42 * s)) ** 2 for g, s in zip(grids, shape)) <= 1.0


def raw_volume(job: dict[str, Any]) -> np.ndarray:
    """The scan as stored, `(C, X, Y, Z)` float32: MRI seeded noise in the brain, 0 outside (skull-stripped);
    CT soft tissue (40 +- 40 HU) in the body, air (-1000 HU) outside."""
    inside = np.broadcast_to(body_mask(job), tuple(job["shape"]))
    rng = np.random.default_rng(7)
    ct = job["body"] == "abdomen"
    volume = np.full((job["channels"], *job["shape"]), -1000.0 if ct else 0.0, dtype=np.float32)
    for c in range(job["channels"]):
        noise = rng.standard_normal(int(inside.sum()), dtype=np.float32)
        volume[c][inside] = 40.0 + 40.0 * noise if ct else noise
    return volume


def _volume(job: dict[str, Any]) -> tuple[Any, Any]:
    """`(raw, image)`: the raw scan, and the network's input (the plan's normalisation: CT's clip + dataset
    z-score; the MRI noise is already z-scored inside the brain), both torch `(C, X, Y, Z)` float32."""
    import torch

    from visionpipes.medical.planning.normalization import normalize_channels

    raw = raw_volume(job)
    entries = job["plan"]["normalization_entries"]
    image = normalize_channels(raw, entries) if any(e["scheme"] == "ct" for e in entries) else raw
    return torch.from_numpy(raw), torch.from_numpy(image)


def child(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    net = _network(job)
    raw, image = _volume(job)
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
    engine, prepare_seconds, box = None, 0.0, None
    if job["impl"] in ("ours", "ours_deployed", "ours_onnxruntime", "ours_onnx", "ours_bf16"):
        from visionpipes.medical.msd.regions import Region
        from visionpipes.medical.runtime.predictor import InferenceConfig, Predictor

        regions = [Region(f"r{i}", frozenset({i + 1})) for i in range(job["classes"])]
        engine = {"ours_onnxruntime": "onnxruntime"}.get(job["impl"], "torch")
        config = InferenceConfig(
            overlap=overlap,
            sw_batch_size=job["sw_batch_size"],
            blend="gaussian",
            window_runtime=engine,
            crop_foreground=job["impl"] == "ours_deployed",  # as pipelines/medical/params.yaml deploys it
            precision="bf16" if job["impl"] == "ours_bf16" else "fp32",  # bf16 autocast windows
        )
        entries = job["plan"]["normalization_entries"]
        predictor = Predictor(
            timed if job["impl"] == "ours_onnx" else net,
            regions=regions,
            modality=[f"c{i}" for i in range(job["channels"])],
            roi_size=roi,
            config=config,
            # CT: the plan's clip + z-score entries (so that `crop_box` takes the body from the raw HU);
            # MRI: None, the non-zero z-score, whose crop is the non-zero box of the normalised input
            normalization=entries if any(e["scheme"] == "ct" for e in entries) else None,
        )
        # the module the predictor runs per window batch (for `auto` on CPU: the onnxruntime form,
        # exported here, inside the timed call), wrapped so that its seconds are counted
        t_prepare = time.perf_counter()
        window_net = predictor.window_network()
        prepare_seconds = time.perf_counter() - t_prepare
        engine = type(window_net).__name__
        if job["impl"] != "ours_onnx":
            predictor._window_net = Timed(window_net).eval()
        if job["impl"] == "ours_deployed":  # `predict_array`'s order: the box from the raw scan, then windows
            from visionpipes.medical.runtime.crop import foreground_box

            box = predictor.crop_box(raw)
            probs = predictor.region_probabilities(image, box=box)
            if box is None:  # MRI: the box region_probabilities took (recomputed here, outside the timing)
                box = foreground_box(image, config.crop_margin)
        else:
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
    extra = {} if box is None else {"box": [[b.start, b.stop] for b in box]}
    return {
        **extra,
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


def compare_deployed(ours: Path, monai: Path, box: list[list[int]]) -> dict[str, float]:
    """Ours with the crop (`ours_deployed`) against MONAI plain on the full grid: inside the box, max abs
    difference and Dice of the argmax as `compare`; outside it, the share of voxels each labels as a region
    (ours: 0 by construction; MONAI's random-weight network: whatever it predicts on air/background)."""
    pa, pb = np.load(ours), np.load(monai)
    inside = np.zeros(pa.shape[1:], dtype=bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    background = np.full((1, *pa.shape[1:]), 0.5, dtype=np.float32)
    la = np.concatenate([background, pa]).argmax(0)
    lb = np.concatenate([background, pb]).argmax(0)
    dice = []
    for label in range(1, len(pa) + 1):
        ma, mb = (la == label) & inside, (lb == label) & inside
        total = int(ma.sum()) + int(mb.sum())
        dice.append(1.0 if total == 0 else 2 * int((ma & mb).sum()) / total)
    outside = ~inside
    n_out = max(int(outside.sum()), 1)
    return {
        "box_shape": [b - a for a, b in box],
        "box_share_of_grid": round(float(inside.mean()), 4),
        "inside_max_abs_diff": float(np.abs(pa[:, inside] - pb[:, inside]).max()),
        "inside_dice_min_over_regions": round(min(dice), 6),
        "outside_ours_region_share": round(int((la[outside] != 0).sum()) / n_out, 6),
        "outside_monai_region_share": round(int((lb[outside] != 0).sum()) / n_out, 6),
    }


def pair(
    base: dict[str, Any], work: Path, name: str, *, kind: str, onnxruntime: bool = False
) -> dict[str, Any]:
    """Ours and MONAI's plain call on the same job, each in its own process, outputs compared.

    `kind`: `full` (the plan network on the whole volume) or `slab` (the plan network on a full-plane slab
    one window thick, for extrapolation): ours with the crop off (`ours`: the same windows as MONAI, the
    engine only), MONAI plain, and ours as the pipeline deploys it (`ours_deployed`: crop_foreground on),
    once each, in that order (ours and MONAI alternate); with `onnxruntime`, ours with the windows in
    onnxruntime too. `memory` (the stand-in network on the full grid): the same three, one window at a time.
    """
    out: dict[str, Any] = {}
    ours_batch = 1 if kind == "memory" else 4  # the memory run: one window at a time
    runs = [
        ("ours", "ours", ours_batch),
        ("monai", "monai", 1),
        ("ours_deployed", "ours_deployed", ours_batch),
    ]
    if kind != "memory":  # engine only (crop off, MONAI's windows) with the windows under bf16 autocast
        runs.insert(2, ("ours_bf16", "ours_bf16", 4))
    if onnxruntime and kind != "memory":
        runs += [("ours_onnxruntime", "ours_onnxruntime", 4)]
    for key, impl, batch in runs:
        job = {**base, "impl": impl, "sw_batch_size": batch, "out": str(work / f"{name}-{key}.npy")}
        got = {"impl": impl, "sw_batch_size": batch, **run_child(job)}
        print(f"  {name} {key}: {got}", file=sys.stderr, flush=True)
        out[key] = got
    monai = out["monai"]["seconds"]
    out["speedup_monai_over_ours"] = round(monai / max(out["ours"]["seconds"], 1e-9), 3)
    out["outputs"] = compare(work / f"{name}-ours.npy", work / f"{name}-monai.npy")
    for key in ("ours_onnxruntime", "ours_onnx", "ours_bf16"):
        if key in out:
            out[f"speedup_monai_over_{key}"] = round(monai / max(out[key]["seconds"], 1e-9), 3)
            out[f"outputs_{key}"] = compare(work / f"{name}-{key}.npy", work / f"{name}-monai.npy")
    dep = out["ours_deployed"]
    out["speedup_monai_over_ours_deployed"] = round(monai / max(dep["seconds"], 1e-9), 3)
    out["outputs_ours_deployed"] = compare_deployed(
        work / f"{name}-ours_deployed.npy", work / f"{name}-monai.npy", dep["box"]
    )
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
        "MONAI plain always runs the full grid (what a MONAI user runs). **Engine only**: ours with "
        "`crop_foreground: false`, the same windows as MONAI. **As deployed**: ours with `crop_foreground: "
        "true` as `pipelines/medical/params.yaml` sets it (MRI: the brain's non-zero box; CT: the body's box, "
        "voxels above `body_threshold_hu` -500 in the raw HU), every region absent outside the box.",
        "",
        "| volume | run | ours windows | MONAI windows | ours s | MONAI s | MONAI/ours | ours peak RSS MiB "
        "| MONAI peak RSS MiB | max abs diff | Dice (argmax) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["volumes"].items():
        for run in ("full_volume", "slab", "full_grid_memory"):
            if run not in v:
                continue
            r = v[run]
            what = {
                "full_volume": "**measured full volume**",
                "slab": "measured slab",
                "full_grid_memory": "memory run",
            }
            rows = [
                ("ours", "engine only", r["outputs"]["max_abs_diff"], r["outputs"]["dice_min_over_regions"])
            ]
            d = r["outputs_ours_deployed"]
            rows.append(("ours_deployed", "as deployed (inside the box)", d["inside_max_abs_diff"],
                         d["inside_dice_min_over_regions"]))  # fmt: skip
            if "ours_bf16" in r:
                o = r["outputs_ours_bf16"]
                rows.append(("ours_bf16", "engine only, bf16 windows", o["max_abs_diff"],
                             o["dice_min_over_regions"]))  # fmt: skip
            if "ours_onnxruntime" in r:
                o = r["outputs_ours_onnxruntime"]
                rows.append(("ours_onnxruntime", "engine only, windows in onnxruntime", o["max_abs_diff"],
                             o["dice_min_over_regions"]))  # fmt: skip
            for key, label, diff, dice in rows:
                ratio = r["speedup_monai_over_ours"] if key == "ours" else r[f"speedup_monai_over_{key}"]
                lines.append(
                    f"| {name} | {what[run]} {tuple(r['shape'])}: {label} | {r[key]['windows']} | "
                    f"{r['monai']['windows']} | {r[key]['seconds']} | {r['monai']['seconds']} | {ratio} | "
                    f"{r[key]['peak_rss_mib']} | {r['monai']['peak_rss_mib']} | {diff:.2e} | {dice} |"
                )
        if "full_volume_extrapolated" in v:
            e = v["full_volume_extrapolated"]
            for key, label, ratio in (
                ("ours", "engine only", e["speedup_engine_only"]),
                ("ours_bf16", "engine only, bf16 windows", e.get("speedup_engine_only_bf16")),
                ("ours_deployed", "as deployed", e["speedup_as_deployed"]),
            ):
                if ratio is None:
                    continue
                windows_ours = e["windows_ours_deployed"] if key == "ours_deployed" else e["windows"]
                lines.append(
                    f"| {name} | **extrapolated full volume** {tuple(v['geometry']['shape'])}: {label} | "
                    f"{windows_ours} | {e['windows']} | {e[f'{key}_seconds']} | {e['monai_seconds']} | "
                    f"**{ratio}** | {e[f'{key}_peak_rss_mib']} | {e['monai_peak_rss_mib']} | | |"
                )
    lines += [
        "",
        "### Outside the box (as deployed)",
        "",
        "| volume | run | box (voxels) | box share of grid | ours: voxels labelled a region outside | "
        "MONAI plain (random weights): voxels labelled a region outside |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in result["volumes"].items():
        for run in ("full_volume", "slab"):
            if run in v:
                d = v[run]["outputs_ours_deployed"]
                lines.append(
                    f"| {name} | {run} | {d['box_shape']} | {d['box_share_of_grid']} | "
                    f"{d['outside_ours_region_share']:.2%} | {d['outside_monai_region_share']:.2%} |"
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


def bf16_quality(model: Path, scans: list[Path], threads: int) -> dict[str, Any]:
    """A trained model's fp32 against its bf16 windows (`InferenceConfig.precision`) on real sample scans:
    per scan, the region probabilities on the model grid (the predictor's own preprocessing), max abs
    difference, the Dice per region of the thresholded masks, and seconds (fp32 and bf16 alternating)."""
    import torch
    from monai.data import MetaTensor

    from visionpipes.medical.msd.volumes import read_image_volume
    from visionpipes.medical.runtime.predictor import Predictor

    torch.set_num_threads(threads)
    predictors = {p: Predictor.load(model, precision=p) for p in ("fp32", "bf16")}
    ref = predictors["fp32"]
    rows = []
    for scan in scans:
        volume, image = read_image_volume(scan, ref.num_channels)
        spatial = ref._spatial()
        grid = spatial(MetaTensor(torch.from_numpy(volume), affine=torch.as_tensor(image.affine)))
        normalised = ref.normalise(grid)
        probs, seconds = {}, {}
        for p in ("fp32", "bf16", "fp32", "bf16"):  # alternating; the second of each is timed
            t0 = time.perf_counter()
            probs[p] = predictors[p].region_probabilities(normalised).numpy()
            seconds[p] = round(time.perf_counter() - t0, 3)
        a, b = probs["fp32"] > ref.config.threshold, probs["bf16"] > ref.config.threshold
        dice = {}
        for i, region in enumerate(ref.regions):
            total = int(a[i].sum()) + int(b[i].sum())
            dice[region.name] = 1.0 if total == 0 else round(2 * int((a[i] & b[i]).sum()) / total, 6)
        rows.append({
            "scan": scan.name,
            "grid": list(normalised.shape[1:]),
            "max_abs_prob_diff": float(np.abs(probs["fp32"] - probs["bf16"]).max()),
            "dice_fp32_vs_bf16": dice,
            "fp32_seconds": seconds["fp32"],
            "bf16_seconds": seconds["bf16"],
        })  # fmt: skip
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    return {
        "model": str(model),
        "roi_size": list(ref.roi_size),
        "threads": threads,
        "scans": rows,
        "max_abs_prob_diff": max(r["max_abs_prob_diff"] for r in rows),
        "dice_min": min(min(r["dice_fp32_vs_bf16"].values()) for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--full-limit",
        type=float,
        default=FULL_LIMIT_S,
        help="measure the full volume when the plan estimates at most this many seconds (else a slab)",
    )
    ap.add_argument("--only", choices=sorted(VOLUMES), help="one volume only")
    ap.add_argument(
        "--onnxruntime", action="store_true", help="also run ours with window_runtime: onnxruntime"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="small volumes, results in a temporary folder (a check of the script)",
    )
    ap.add_argument(
        "--bf16-quality",
        type=Path,
        metavar="MODEL",
        help="only compare a trained model's fp32 and bf16 windows on --scans (default: the medical "
        "pipeline's validation scans); writes medical_real_geometry_bf16_quality.json/.md",
    )
    ap.add_argument("--scans", type=Path, nargs="*", help="NIfTI scans for --bf16-quality")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.bf16_quality:
        from visionpipes.core.io import write_json

        scans = args.scans or [
            ROOT / "data/medical/raw/Task01_BrainTumour/imagesTr" / f"{name}.nii.gz"
            for name in json.loads((ROOT / "data/medical/train/split.json").read_text())["val"]
        ]
        load = [round(x, 1) for x in os.getloadavg()]
        quality = {"load_average": load, **bf16_quality(args.bf16_quality, scans, args.threads)}
        write_json(RESULTS / "medical_real_geometry_bf16_quality.json", quality)
        print(json.dumps({k: quality[k] for k in ("max_abs_prob_diff", "dice_min")}))
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
        VOLUMES["ct"]["body_mm"] = (60.0, 45.0)
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
                f"{'full volume' if full_run else 'slab, extrapolated'}",
                file=sys.stderr,
                flush=True,
            )
            base.update(body=spec["body"], spacing=list(spec["spacing"]), body_mm=spec.get("body_mm"))
            if spec["body"] == "mni152":
                base["mask_path"] = str(work / f"{name}-mask.npy")
                np.save(base["mask_path"], brain_mask(tuple(spec["shape"])))
            # the box `crop_foreground` gives on the full volume (the brain's non-zero box / the body's box)
            import torch

            from visionpipes.medical.runtime.crop import box_of

            margin = 4  # InferenceConfig.crop_margin's default, as pipelines/medical/params.yaml
            full_mask = np.broadcast_to(body_mask({**base, "shape": list(spec["shape"])}), spec["shape"])
            full_box = box_of(torch.from_numpy(np.array(full_mask)), margin)
            box_shape = [b.stop - b.start for b in full_box]
            n_box = windows(tuple(box_shape), roi, args.overlap)
            entry["crop_box"] = {
                "box": [[b.start, b.stop] for b in full_box],
                "shape": box_shape,
                "share_of_grid": round(math.prod(box_shape) / math.prod(spec["shape"]), 4),
                "windows": n_box,
                "windows_full_grid": n,
            }
            if full_run:
                full = pair(
                    {**base, "net": "plan", "shape": list(spec["shape"])},
                    work,
                    f"{name}-full",
                    kind="full",
                    onnxruntime=args.onnxruntime,
                )
                full["shape"] = list(spec["shape"])
                entry["full_volume"] = full
                ours = full["ours"]
                measured_predict, how = ours["seconds"], "full volume"
            else:
                # a full-plane slab one window thick: every in-plane window of the grid (and of the body's box)
                slab_shape = [spec["shape"][0], spec["shape"][1], min(spec["shape"][2], roi[2])]
                slab = pair(
                    {**base, "net": "plan", "shape": slab_shape},
                    work,
                    f"{name}-slab",
                    kind="slab",
                    onnxruntime=args.onnxruntime,
                )
                slab["shape"] = slab_shape
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
                extra: dict[str, Any] = {"windows": n, "windows_ours_deployed": n_box}
                for impl, count in (("ours", n), ("monai", n), ("ours_deployed", n_box), ("ours_bf16", n)):
                    b = slab[impl]
                    per_window = b["seconds"] / max(b["windows"], 1)
                    extra[f"{impl}_seconds_per_window"] = round(per_window, 3)
                    extra[f"{impl}_seconds"] = round(count * per_window, 1)
                    extra[f"{impl}_peak_rss_mib"] = round(
                        memory.get(impl, memory["ours"])["peak_rss_mib"]
                        + (b["peak_rss_mib"] - b["rss_before_call_mib"]),
                        1,
                    )
                extra["speedup_engine_only"] = round(
                    extra["monai_seconds"] / max(extra["ours_seconds"], 1e-9), 3
                )
                extra["speedup_engine_only_bf16"] = round(
                    extra["monai_seconds"] / max(extra["ours_bf16_seconds"], 1e-9), 3
                )
                extra["speedup_as_deployed"] = round(
                    extra["monai_seconds"] / max(extra["ours_deployed_seconds"], 1e-9), 3
                )
                extra["how"] = (
                    "seconds: each implementation's own full-volume window count (MONAI plain and ours crop off: "
                    "the full grid's; ours as deployed: the body box's) x its seconds per window on the slab "
                    "(network, blending, and for ours as deployed the body box); peak RSS: the full-grid memory "
                    "run's peak (full-size input, output and weight buffers) + the slab's network working set "
                    "(its peak minus its RSS before the call)"
                )
                entry.update(slab=slab, full_grid_memory=memory, full_volume_extrapolated=extra)
                ours = slab["ours"]
                measured_predict, how = (
                    extra["ours_seconds"],
                    f"slab of {ours['windows']} windows, extrapolated",
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
        "own InstanceNormalization moved logits by 4.4e-3 on mostly-background windows). Rows `ours_bf16`: "
        "engine only (crop off, MONAI's windows) with InferenceConfig.precision `bf16`, the window network "
        "under torch.autocast(cpu, bfloat16), float32 logits and blending; their max abs diff and argmax Dice "
        "are against MONAI plain's fp32 (a random-weight network's outputs sit near 0.5, so bf16 rounding flips "
        "argmax labels; the trained Task01 model's fp32 vs bf16 check is `--bf16-quality`).",
    ]
    for name, v in result["volumes"].items():
        c = v["estimate_vs_measured"]
        p = v["plans"]["cpu"]
        box = v["crop_box"]
        if "full_volume" in v:
            main, where = v["full_volume"], "measured on the full volume"
            engine, deployed = main["speedup_monai_over_ours"], main["speedup_monai_over_ours_deployed"]
        else:
            main, where = v["slab"], "measured on a full-plane slab one window thick, extrapolated"
            e = v["full_volume_extrapolated"]
            engine, deployed = e["speedup_engine_only"], e["speedup_as_deployed"]
        bf16 = ""
        if "ours_bf16" in main:
            ratio = (
                main["speedup_monai_over_ours_bf16"] if "full_volume" in v else e["speedup_engine_only_bf16"]
            )
            o = main["outputs_ours_bf16"]
            bf16 = (
                f"; engine only with bf16 windows {ratio}x (max abs diff {o['max_abs_diff']:.1e}, Dice of the "
                f"argmax {o['dice_min_over_regions']})"
            )
        d = main["outputs_ours_deployed"]
        out.append(
            f"{name}: cpu plan {p['patch_size']} x {p['batch_size']}, features {_features(p)} vs cuda "
            f"{v['plans']['cuda']['patch_size']} x {v['plans']['cuda']['batch_size']}; {where}. MONAI plain / "
            f"ours: engine only {engine}x (outputs equal to {main['outputs']['max_abs_diff']:.1e}, Dice of the "
            f"argmax {main['outputs']['dice_min_over_regions']}){bf16}; as deployed {deployed}x (box "
            f"{box['shape']}, {box['share_of_grid']:.0%} of the grid, {box['windows']} of {box['windows_full_grid']} "
            f"windows; inside the box max abs diff {d['inside_max_abs_diff']:.1e}, Dice of the argmax "
            f"{d['inside_dice_min_over_regions']}: the windows sit elsewhere, so a random-weight network with "
            f"instance norms differs; outside it ours labels {d['outside_ours_region_share']:.2%} of the voxels, "
            f"MONAI plain {d['outside_monai_region_share']:.2%}). Ours (crop off) {c['predict_seconds_measured']} s "
            f"vs the plan's estimate {c['predict_seconds_estimated']} s (measured/estimated {c['ratio_predict']}; "
            f"per window, network only, {c['ratio_per_window']})."
        )
    return out


if __name__ == "__main__":
    main()
