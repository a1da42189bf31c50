"""Compare driving-pipeline configurations side by side, each on its own pinned pair of CPU cores.

Writes the synthetic sample and prepares it once (timed), then runs every selected job in parallel
— `train-det` or `train-lanes` followed by `evaluate` on the val split — each under
`taskset -c <two cores>` with two torch threads, so that each job sees what a dedicated 2-core
machine would give. Prints and writes one JSON line per job: wall times and the official metrics.

    python benchmarks/driving_sweep.py --work /tmp/sweep --out sweep.json --jobs det-default lanes-default

Needs as many free cores as 2 x jobs (+2 for the data steps); meant for a many-core machine. The
pipeline's own params.yaml is the base; each job overrides a few keys.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "pipelines" / "driving" / "params.yaml"

#: job name -> (kind, params overrides)
JOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "det-default": ("det", {}),
    "det-b16": ("det", {"det": {"batch": 16}}),
    "det-lr4": ("det", {"det": {"lr0": 0.004}}),
    "det-nomosaic": ("det", {"det": {"extra": {"mosaic": 0.0}}}),
    "lanes-default": ("lanes", {}),
    "lanes-r18-320": ("lanes", {"lanes": {"model": {"encoder": "resnet18", "width": 320, "height": 192}, "train": {"crop_height": 128}}}),
    "lanes-r18-224": ("lanes", {"lanes": {"model": {"encoder": "resnet18", "width": 224, "height": 128}, "train": {"crop_height": 96}}}),
    "lanes-mbv3-320": ("lanes", {"lanes": {"model": {"encoder": "tu-mobilenetv3_small_100", "width": 320, "height": 192}, "train": {"crop_height": 128}}}),
    "lanes-mbv3-224": ("lanes", {"lanes": {"model": {"encoder": "tu-mobilenetv3_small_100", "width": 224, "height": 128}, "train": {"crop_height": 96}}}),
    "lanes-r18-320-bg03": ("lanes", {"lanes": {"model": {"encoder": "resnet18", "width": 320, "height": 192}, "train": {"crop_height": 128, "background_weight": 0.3}}}),
    "lanes-r18-224-bg03": ("lanes", {"lanes": {"model": {"encoder": "resnet18", "width": 224, "height": 128}, "train": {"crop_height": 96, "background_weight": 0.3}}}),
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _cli() -> list[str]:
    return [sys.executable, "-m", "visionpipes.driving.cli"]


def _env(cores: str | None) -> dict[str, str]:
    env = {**os.environ, "VISIONPIPES_THREADS": "2", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    if cores is not None:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(args: list[str], cores: str | None, log: Path) -> float:
    cmd = (["taskset", "-c", cores] if cores is not None else []) + args
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, env=_env(cores), stdout=fh, stderr=subprocess.STDOUT, check=True)
    return round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="scratch folder (replaced)")
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--jobs", nargs="+", default=["det-default", "lanes-default"], choices=sorted(JOBS))
    parser.add_argument("--set", nargs="*", default=[], help="global overrides as section.key=YAML value")
    parser.add_argument("--logger", default=None, help="lanes.trainer.logger (csv where DVCLive is missing)")
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = yaml.safe_load(PARAMS.read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        node = base
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    if args.logger:
        base["lanes"]["trainer"]["logger"] = args.logger
    base["eval"]["ultralytics_plots"] = False
    (work / "params.yaml").write_text(yaml.safe_dump(base))
    log = work / "data.log"
    results: dict[str, Any] = {
        "data_s": _run([*_cli(), "data", "--params", str(work / "params.yaml"), "--out", str(work / "raw")], "0,1", log),
        "prepare_s": _run([*_cli(), "prepare", "--raw", str(work / "raw"), "--out", str(work / "prepared")], "0,1", log),
    }
    print(json.dumps(results), flush=True)

    procs = []
    for i, name in enumerate(args.jobs):
        kind, override = JOBS[name]
        cores = f"{2 * i},{2 * i + 1}"
        job = work / name
        job.mkdir()
        (job / "params.yaml").write_text(yaml.safe_dump(_merge(base, override)))
        dataset = str(work / "prepared" / "dataset.json")
        params = str(job / "params.yaml")
        if kind == "det":
            train = [*_cli(), "train-det", "--dataset", dataset, "--out", str(job / "model"), "--params", params]
            model = ["--det", str(job / "model" / "weights" / "best.pt")]
        else:
            train = [*_cli(), "train-lanes", "--dataset", dataset, "--out", str(job / "model"), "--params", params]
            model = ["--lanes", str(job / "model" / "lane_model.pt")]
        evaluate = [
            *_cli(), "evaluate", "--dataset", dataset, *model, "--metrics", str(job / "metrics.json"),
            "--plots", str(job / "plots"), "--predictions", str(job / "pred"), "--params", params,
        ]
        script = (
            "import json, subprocess, sys, time, os\n"
            f"train, evaluate, cores = {train!r}, {evaluate!r}, {cores!r}\n"
            "env = dict(os.environ)\n"
            "t = time.perf_counter(); subprocess.run(['taskset', '-c', cores, *train], check=True, env=env)\n"
            "train_s = time.perf_counter() - t\n"
            "t = time.perf_counter(); subprocess.run(['taskset', '-c', cores, *evaluate], check=True, env=env)\n"
            "eval_s = time.perf_counter() - t\n"
            f"m = json.load(open({str(job / 'metrics.json')!r}))\n"
            "keep = {k: m[k] for k in ('det', 'lanes') if k in m}\n"
            "for v in keep.values():\n"
            "    v.pop('classes', None)\n"
            f"print('RESULT', json.dumps({{'job': {name!r}, 'train_s': round(train_s, 1), 'eval_s': round(eval_s, 1), **keep}}))\n"
        )
        fh = open(job / "log.txt", "w")  # noqa: SIM115 - closed when the process ends
        procs.append((name, subprocess.Popen([sys.executable, "-c", script], env=_env(cores), stdout=fh, stderr=subprocess.STDOUT), fh))
    rows = []
    for name, proc, fh in procs:
        proc.wait()
        fh.close()
        lines = [line for line in (work / name / "log.txt").read_text().splitlines() if line.startswith("RESULT ")]
        row = json.loads(lines[-1][7:]) if lines else {"job": name, "error": f"exit {proc.returncode}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    results["jobs"] = rows
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
