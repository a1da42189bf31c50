"""nnU-Net's low-resolution cascade against the full-resolution configuration, on a synthetic Task01 sample
whose images are much larger than the planned patch: held-out Dice per region and the seconds each
configuration takes to train and to predict, in one run. Writes benchmarks/results/medical_cascade.json.

    .venv/bin/python benchmarks/medical_cascade.py [--cases 12 --size 64 --epochs 20 --memory-gb 0.02]

The plan is made for a small `cuda` budget (`--memory-gb`, exactly the budget on cuda), which gives a patch
far smaller than the image, so that `train.configuration: auto` picks 3d_cascade_fullres. Both runs share
the plan, the split, the seed, the network widths and the epochs; 3d_cascade_fullres also trains its
3d_lowres stage (the same epochs) and predicts the training cases with it, so it costs more: the
seconds say how much. Everything in the JSON is measured in this run (CPU: see the load average).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _wt_dice(predicted: Path, truth: Path) -> float:
    import nibabel as nib

    p = np.asarray(nib.load(predicted).dataobj) > 0
    t = np.asarray(nib.load(truth).dataobj) > 0
    return float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=12, help="synthetic training cases (default 12)")
    parser.add_argument("--size", type=int, default=64, help="synthetic volume edge in voxels (default 64)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each stage (default 20)")
    parser.add_argument("--memory-gb", type=float, default=0.02, help="cuda plan budget (default 0.02)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "medical_cascade.json")
    args = parser.parse_args(argv)

    import torch

    from visionpipes.core.io import write_json
    from visionpipes.medical.msd.dataset_json import load_task
    from visionpipes.medical.msd.synth import SynthConfig, write_synthetic_task
    from visionpipes.medical.planning.fingerprint import compute_fingerprint
    from visionpipes.medical.planning.plan import make_plan, overrides_from_params, write_plan
    from visionpipes.medical.runtime.predictor import Predictor
    from visionpipes.medical.training.config import resolve_training_config
    from visionpipes.medical.training.evaluate import evaluate_cases
    from visionpipes.medical.training.fit import train

    torch.set_num_threads(args.threads)
    params = {
        "max_epochs": args.epochs,
        "check_val_every_n_epoch": args.epochs,
        "monitor": None,
        "progress": False,
        "lr": 0.003,
        "model": {"name": "unet", "channels": "auto", "strides": "auto", "num_res_units": 1},
        "data": {
            "roi_size": "auto",
            "batch_size": "auto",
            "pixdim": "auto",
            "num_samples": 2,
            "val_fraction": 0.25,
        },
    }
    results: dict = {
        "settings": vars(args) | {"out": str(args.out)},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="vp-cascade-") as tmp:
        root = Path(tmp)
        task_dir = write_synthetic_task(
            root / "Task01_BrainTumour", SynthConfig(cases=args.cases, size=args.size, seed=11, test_cases=1)
        )
        hardware = {"device": "cuda", "memory_gb": args.memory_gb, "cpu_cores": os.cpu_count() or 1}
        plan = make_plan(compute_fingerprint(task_dir), hardware, overrides_from_params(params))
        plan_path = write_plan(root / "plan.json", plan)
        results["plan"] = {
            "patch_size": plan.patch_size,
            "median_shape": plan.median_shape,
            "cascade": plan.cascade,
        }
        print(f"plan: patch {plan.patch_size} of median image {plan.median_shape}; cascade {plan.cascade}")
        if not plan.cascade.get("enabled"):
            print(
                "error: the plan does not enable the cascade; lower --memory-gb or raise --size",
                file=sys.stderr,
            )
            return 1
        task = load_task(task_dir)
        for configuration in ("3d_fullres", "3d_cascade_fullres"):
            config, record = resolve_training_config(
                {**params, "configuration": configuration}, plan_path, source=configuration
            )
            out = root / configuration
            start = time.perf_counter()
            result = train(task_dir, out, config, resume=False, plan=record)
            train_s = time.perf_counter() - start
            val = {c.case_id for c in task.training if c.case_id in result.split["val"]}
            cases = [c for c in task.training if c.case_id in val]
            predictor = Predictor.load(out / "checkpoints" / "last.ckpt", overlap=0.25, crop_foreground=True)
            start = time.perf_counter()
            scores = evaluate_cases(predictor, task, cases)
            predict_s = (time.perf_counter() - start) / max(1, len(cases))
            dice = {k: round(v["dice"], 4) for k, v in scores["summary"].items()}
            results["runs"][configuration] = {
                "dice": dice,
                "train_seconds": round(train_s, 1),
                "predict_seconds_per_case": round(predict_s, 2),
                "val_cases": len(cases),
            }
            print(
                f"{configuration}: Dice {dice}; train {train_s:.0f} s; predict {predict_s:.1f} s/case",
                flush=True,
            )
            if configuration == "3d_cascade_fullres":
                # the first stage alone, and how much cleaner its masks are on the cases it was trained on
                # (what the cascade is trained with) than on the held-out ones (what it meets at prediction)
                low_ckpt = out / "lowres" / "checkpoints" / "last.ckpt"
                low = Predictor.load(low_ckpt, overlap=0.25, crop_foreground=True)
                low_dice = {
                    k: round(v["dice"], 4) for k, v in evaluate_cases(low, task, cases)["summary"].items()
                }
                masks = {}
                for subset in ("training", "held_out"):
                    scores = [
                        _wt_dice(out / "lowres" / "predictions" / f"{c.case_id}.nii.gz", c.label)
                        for c in task.training
                        if (c.case_id in val) == (subset == "held_out")
                    ]
                    masks[subset] = round(float(np.mean(scores)), 4)
                results["runs"]["3d_lowres (stage 1 alone)"] = {
                    "dice": low_dice,
                    "wt_dice_of_its_masks": masks,
                }
                print(f"3d_lowres alone: Dice {low_dice}; WT Dice of its masks {masks}", flush=True)
        results["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"load average {results['load_average']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
