"""Medical inference benchmark: sliding-window prediction of one 4x240x240x155 volume (BraTS's grid) by
the deployed predictor (`vp-medical predict --model data/medical/deploy`) against MONAI's plain
`sliding_window_inference` over the same network run eagerly, in one run; plus seconds per training
epoch on the pipeline's default data. Writes benchmarks/results/medical_inference.json.

    .venv/bin/dvc repro pipelines/medical/dvc.yaml       # first: the trained and deployed model
    .venv/bin/python benchmarks/medical_inference.py

The volume is a synthetic skull-stripped brain (`synth_case` at 155^3) centred in a zero 240x240x155
grid, as BraTS stores brains. Each variant runs in its own process (peak memory is that process's
maximum resident set), all from the same normalised volume to region probabilities; agreement with the
baseline is measured on the label maps, and the held-out Dice of both settings on the pipeline's own
validation cases. Every number in the JSON is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "medical"
SHAPE = (240, 240, 155)

#: name -> model (`checkpoint`, a file of the deployed folder, or `folder`: what `predict` runs) and the
#: inference settings (None: the ones recorded in the deployed model). Full grid unless `crop_foreground`.
_FULL = {"crop_foreground": False, "tta_flips": False}
VARIANTS: dict[str, dict[str, Any]] = {
    # MONAI's sliding_window_inference over the eager network, as the pipeline validated before deployment
    "baseline": {"model": "checkpoint", "settings": {"overlap": 0.5, "sw_batch_size": 4}, "runner": "monai"},
    # one lever at a time
    "eager_inference_mode_sw8": {
        "model": "checkpoint",
        "settings": {**_FULL, "overlap": 0.5, "sw_batch_size": 8},
    },
    "torchscript_overlap_0.5": {
        "model": "model.pt",
        "settings": {**_FULL, "overlap": 0.5, "sw_batch_size": 8},
    },
    "onnx_overlap_0.5": {"model": "model.onnx", "settings": {**_FULL, "overlap": 0.5, "sw_batch_size": 8}},
    "torchscript_overlap_0.25": {
        "model": "model.pt",
        "settings": {**_FULL, "overlap": 0.25, "sw_batch_size": 8},
    },
    "onnx_deployed_settings": {"model": "model.onnx", "settings": None},
    # the deployed predictor exactly as `vp-medical predict --model data/medical/deploy` runs it
    "deployed": {"model": "folder", "settings": None},
}


def brain_volume(seed: int = 0) -> np.ndarray:
    """`(4, 240, 240, 155)` float32: a synthetic brain (zero outside) centred in BraTS's grid."""
    from visionpipes.medical.msd.synth import synth_case

    image, _ = synth_case(np.random.default_rng(seed), SHAPE[2])
    out = np.zeros((4, *SHAPE), np.float32)
    ox, oy = (SHAPE[0] - SHAPE[2]) // 2, (SHAPE[1] - SHAPE[2]) // 2
    out[:, ox : ox + SHAPE[2], oy : oy + SHAPE[2], :] = np.moveaxis(image, -1, 0)
    return out


def normalise(volume: np.ndarray):
    """The predictor's intensity preprocessing (z-score of non-zero voxels per channel)."""
    import torch
    from monai.transforms import NormalizeIntensity

    return NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(volume)).as_subclass(
        torch.Tensor
    )


def run_variant(name: str, deploy_dir: Path, checkpoint: Path, volume_path: Path, labels_out: Path) -> dict:
    """Time one variant (in this process) on the saved volume; write its label map to `labels_out`."""
    import torch

    from visionpipes.core.settings import apply_runtime_settings
    from visionpipes.medical.msd.regions import regions_to_labels
    from visionpipes.medical.runtime.checkpoint import network_from_checkpoint
    from visionpipes.medical.runtime.predictor import Predictor

    apply_runtime_settings()
    spec = VARIANTS[name]
    x = normalise(np.load(volume_path))
    record = json.loads((deploy_dir / "model.json").read_text())
    if spec.get("runner") == "monai":
        from monai.inferers import sliding_window_inference

        net, description = network_from_checkpoint(checkpoint)
        roi = tuple(description["roi_size"])
        settings = {**spec["settings"], "blend": "gaussian"}
        model = checkpoint

        def predict() -> torch.Tensor:
            with torch.no_grad():
                logits = sliding_window_inference(
                    x[None], roi, settings["sw_batch_size"], net, overlap=settings["overlap"], mode="gaussian"
                )
            return torch.sigmoid(logits)[0]

    else:
        model = {"checkpoint": checkpoint, "folder": deploy_dir}.get(
            spec["model"], deploy_dir / spec["model"]
        )
        predictor = Predictor.load(model, **(spec["settings"] or {}))
        roi = predictor.roi_size
        settings = {k: getattr(predictor.config, k) for k in ("overlap", "sw_batch_size", "blend", "tta_flips",
                                                              "crop_foreground", "crop_margin")}  # fmt: skip

        def predict() -> torch.Tensor:
            return predictor.region_probabilities(x)

    predict_small = x[:, :64, :64, :64]  # warm-up on a small crop (allocator, oneDNN/ORT kernels)
    if spec.get("runner") == "monai":
        with torch.no_grad():
            sliding_window_inference(predict_small[None], roi, 1, net, overlap=0.0)
    else:
        predictor.region_probabilities(predict_small)
    start = time.perf_counter()
    probs = predict()
    seconds = time.perf_counter() - start
    from visionpipes.medical.msd.regions import Region

    regions = [Region(n, frozenset(v)) for n, v in record["description"]["regions"]]
    np.save(labels_out, regions_to_labels(probs.numpy(), regions, threshold=0.5))
    voxels = int(np.prod(SHAPE))
    return {
        "seconds": round(seconds, 3),
        "voxels_per_second": round(voxels / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "model": str(model),
        "roi_size": list(roi),
        "settings": settings,
        "torch_threads": torch.get_num_threads(),
    }


def agreement(reference: np.ndarray, other: np.ndarray, regions) -> dict[str, float]:
    """Dice per region between two label maps (1.0 where both are empty)."""
    from visionpipes.medical.msd.regions import labels_to_regions

    a, b = labels_to_regions(reference, regions), labels_to_regions(other, regions)
    out = {}
    for i, region in enumerate(regions):
        total = int(a[i].sum() + b[i].sum())
        out[region.name] = 1.0 if total == 0 else round(2 * int((a[i] & b[i]).sum()) / total, 5)
    out["voxels_equal"] = round(float((reference == other).mean()), 6)
    return out


def held_out_dice(deploy_dir: Path, checkpoint: Path, regions) -> dict[str, Any]:
    """Dice against the truth on the pipeline's held-out cases with the baseline's settings and with the
    deployed predictor, and the Dice between the two predictions (per region, mean over cases)."""
    from visionpipes.medical.data_stage import resolve_task_dir
    from visionpipes.medical.msd.dataset_json import load_task
    from visionpipes.medical.runtime.predictor import Predictor
    from visionpipes.medical.training.evaluate import evaluate_cases, select_cases

    task = load_task(resolve_task_dir(DATA / "raw"))
    cases = select_cases(task, DATA / "train" / "split.json", "val")
    out: dict[str, Any] = {"cases": [c.case_id for c in cases]}
    predicted: dict[str, list[np.ndarray]] = {}
    for name, predictor in (
        (
            "baseline_settings",
            Predictor.load(checkpoint, overlap=0.5, crop_foreground=False, sw_batch_size=4),
        ),
        ("deployed", Predictor.load(deploy_dir)),
    ):
        maps = predicted.setdefault(name, [])
        result = evaluate_cases(
            predictor, task, cases, on_case=lambda _id, _im, _t, p, maps=maps: maps.append(p)
        )
        summary = result["summary"]
        out[name] = {k: round(v["dice"], 4) for k, v in summary.items()}
    pairs = [agreement(a, b, regions) for a, b in zip(predicted["baseline_settings"], predicted["deployed"])]
    out["agreement_between_them"] = {k: round(float(np.mean([p[k] for p in pairs])), 5) for k in pairs[0]}
    return out


def training_epoch_seconds(epochs: int) -> dict[str, Any]:
    """Seconds per training epoch on the default data with the pipeline's settings (fresh run here), and
    the figure the pipeline's own run recorded."""
    from visionpipes.core.io import load_params
    from visionpipes.core.settings import apply_runtime_settings
    from visionpipes.medical.data_stage import resolve_task_dir
    from visionpipes.medical.training.config import SegmentationConfig
    from visionpipes.medical.training.fit import train

    apply_runtime_settings()
    params = dict(load_params(ROOT / "pipelines" / "medical" / "params.yaml", "train"))
    params.update(max_epochs=epochs, logger="none", progress=False)
    config = SegmentationConfig.from_params(params, source="params.yaml:train")
    with tempfile.TemporaryDirectory() as tmp:
        result = train(resolve_task_dir(DATA / "raw"), tmp, config, resume=False)
    pipeline = json.loads((DATA / "train" / "train.json").read_text())
    n_val = config.trainer.check_val_every_n_epoch
    return {
        "fresh_run": {
            "epochs": epochs,
            "seconds_per_epoch": round(result.seconds_per_epoch, 2),
            "validation_epochs": epochs // n_val,
        },
        "pipeline_run": {
            "epochs": pipeline["epochs"],
            "seconds_per_epoch": pipeline["seconds_per_epoch"],
            "note": "from data/medical/train/train.json (validation every "
            f"{n_val} epochs included), measured when the pipeline ran",
        },
        "train_cases": len(pipeline["split"]["train"]),
        "steps_per_epoch": -(-len(pipeline["split"]["train"]) // config.data.batch_size),
        "crops_per_step": config.data.batch_size * config.data.num_samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", type=Path, default=DATA / "deploy")
    parser.add_argument("--checkpoint", type=Path, default=DATA / "train" / "checkpoints" / "last.ckpt")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3, help="training epochs to time (0: skip)")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of every variant and of training (default: 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "medical_inference.json"
    )
    parser.add_argument("--one", nargs=3, metavar=("NAME", "VOLUME", "LABELS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, volume, labels = args.one
        print(json.dumps(run_variant(name, args.deploy, args.checkpoint, Path(volume), Path(labels))))
        return
    os.environ["VISIONPIPES_THREADS"] = str(args.threads)  # every variant's process, and training here
    for path in (args.deploy / "model.json", args.checkpoint):
        if not path.exists():
            sys.exit(f"error: {path} does not exist; run `dvc repro pipelines/medical/dvc.yaml` first.")

    from visionpipes.core.io import write_json
    from visionpipes.medical.msd.regions import Region

    record = json.loads((args.deploy / "model.json").read_text())
    regions = [Region(n, frozenset(v)) for n, v in record["description"]["regions"]]
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "volume.npy"
        image = brain_volume()
        np.save(volume, image)
        brain_box = [int(v) for v in np.ptp(np.argwhere(image.any(axis=0)), axis=0) + 1]
        for name in args.variants:
            labels = Path(tmp) / f"{name}.npy"
            cmd = [sys.executable, __file__, "--deploy", str(args.deploy), "--checkpoint", str(args.checkpoint),
                   "--one", name, str(volume), str(labels)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"error: variant {name} failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name}: {results[name]['seconds']:.1f} s, {results[name]['voxels_per_second']:,} voxels/s, "
                  f"peak {results[name]['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
        if "baseline" in results:
            reference = np.load(Path(tmp) / "baseline.npy")
            for name in results:
                results[name]["speedup_vs_baseline"] = round(
                    results["baseline"]["seconds"] / results[name]["seconds"], 2
                )
                results[name]["agreement_with_baseline"] = agreement(
                    reference, np.load(Path(tmp) / f"{name}.npy"), regions
                )
    load_after_inference = os.getloadavg()
    report: dict[str, Any] = {
        "benchmark": "sliding-window prediction of one 4x240x240x155 volume (normalised volume -> region probabilities)",
        "volume": {
            "shape": [4, *SHAPE],
            "brain_box": brain_box,
            "content": "synth_case(155) centred in zeros (BraTS's geometry: a brain inside a zero grid)",
            "note": "the model was trained on 48^3 brains: at 155^3 the anatomy is ~3x larger than anything it saw, "
            "so agreement_with_baseline on this volume measures how window placement sways an out-of-"
            "distribution prediction; accuracy is held_out_dice (cases of the training distribution)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after_inference": [round(v, 2) for v in load_after_inference],
        },
        "deployed_model": {
            "dir": str(args.deploy),
            "inference": record["inference"],
            "runtime": record["runtime"],
        },
        "variants": results,
        "held_out_dice": held_out_dice(args.deploy, args.checkpoint, regions),
    }
    if args.epochs:
        report["training"] = training_epoch_seconds(args.epochs)
        report["machine"]["load_average_after_training"] = [round(v, 2) for v in os.getloadavg()]
    write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("held_out_dice", "training") if k in report}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
