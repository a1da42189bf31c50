"""`vp-medical predict --engine ray`: many scans predicted on a Ray Data actor pool
(`core.ray_batch`), each actor loading the model once and writing one NIfTI label map per scan with
`Predictor.predict_file`, the local engine's own code. A scan whose label map exists is finished: a
re-run predicts only the others. A scan that fails is reported and the others go on.

Runtime: it never imports training code, Lightning, DVCLive or Optuna.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionpipes.core.errors import UserError
from visionpipes.medical.msd.validate import is_junk
from visionpipes.medical.msd.volumes import NIFTI_SUFFIXES
from visionpipes.medical.runtime.predictor import FolderPrediction, same_file


def list_scans(source: str | os.PathLike) -> list[Path]:
    """The scans to predict: every `.nii` / `.nii.gz` of a folder (sorted), or the paths listed one per
    line in a text file (relative to the file's folder; blank lines and `#` comments ignored).

    Raises:
        UserError: if there is no scan, a listed scan is not a NIfTI name, or two scans share a file name
            (their label maps would collide).
    """
    source = Path(source)
    if source.is_dir():
        scans = sorted(p for p in source.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not is_junk(p.name))
    else:
        lines = [line.strip() for line in source.read_text().splitlines()]
        scans = [(source.parent / line) for line in lines if line and not line.startswith("#")]
        for scan in scans:
            if not scan.name.endswith(NIFTI_SUFFIXES):
                raise UserError(f"{source} lists {scan}, which is not a .nii or .nii.gz scan.")
    if not scans:
        raise UserError(f"{source} holds no .nii or .nii.gz scan.")
    names: dict[str, Path] = {}
    for scan in scans:
        if scan.name in names:
            raise UserError(f"{source} lists two scans named {scan.name} ({names[scan.name]}, {scan}).")
        names[scan.name] = scan
    return scans


class RayPredictWorker:
    """The `core.ray_batch.ShardWorker` of `predict --engine ray`: one `Predictor` per actor (on the GPU
    where the actor has one), one scan per shard."""

    def __init__(
        self, *, use_gpu: bool, model: str, overrides: Mapping[str, Any], threads: int, nonfinite: str
    ) -> None:
        import torch

        from visionpipes.medical.runtime.predictor import Predictor

        torch.set_num_threads(threads)
        self.predictor = Predictor.load(model, device="cuda" if use_gpu else "cpu", **dict(overrides))
        self.nonfinite = nonfinite
        # what `predict_file` imports on its first scan (MONAI's transforms, inferers, MetaTensor: seconds of
        # CPU) is imported here, at actor start-up, so no shard pays it
        import monai.data
        import monai.inferers
        import monai.transforms  # noqa: F401

    def process(self, shard: Mapping[str, Any]) -> dict[str, Any]:
        """Predict `shard["scan"]` into `shard["out"]`."""
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            written = self.predictor.predict_file(shard["scan"], shard["out"], nonfinite=self.nonfinite)
        return {
            "written": str(written),
            "warnings": [str(w.message) for w in caught if "NonFinite" in type(w.message).__name__],
        }


def predict_scans_ray(
    model: str | os.PathLike,
    scans: list[Path],
    output_dir: str | os.PathLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    nonfinite: str = "error",
    address: str | None = None,
    actors: int = 1,
    num_cpus: int | None = None,
    gpus_per_actor: float | None = None,
    progress: bool = True,
) -> tuple[FolderPrediction, list[Path]]:
    """Predict `scans` into `output_dir/<scan name>` on Ray, skipping scans whose label map exists.

    The model is loaded once here first, so an unusable model or setting is one error before any actor
    starts.

    Returns:
        What was written or failed now, and the scans skipped as already predicted.

    Raises:
        UserError: if Ray is missing, `output_dir` is not an existing folder or is a scan's folder, or the
            model cannot be loaded.
    """
    from visionpipes.core.ray_batch import ray_cluster, require_ray, run_shards
    from visionpipes.medical.runtime.predictor import Predictor

    require_ray()
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise UserError(f"output folder {output_dir} does not exist.")
    for scan in scans:
        if same_file(scan.parent, output_dir):
            raise UserError(
                f"output folder {output_dir} holds the scan {scan}; the label maps (same file names) would "
                f"overwrite the scans, so choose another output folder."
            )
    Predictor.load(model, **dict(overrides or {}))  # a bad model or setting fails here, not in an actor
    shards, done = [], []
    for i, scan in enumerate(scans):
        out = output_dir / scan.name
        if out.exists():  # written atomically: an existing label map is a finished one
            done.append(scan)
        else:
            shards.append({"id": i, "scan": str(scan), "out": str(out)})
    result = FolderPrediction()
    if not shards:
        return result, done
    count = 0

    def report(summary: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        if progress:
            name = scans[summary["id"]].name
            print(
                f"predict: {count}/{len(shards)} {name}{' failed' if 'error' in summary else ''}",
                file=sys.stderr,
            )
        for message in summary.get("warnings", []):
            print(f"warning: {message}", file=sys.stderr)

    with ray_cluster(address, num_cpus=num_cpus) as cluster:
        threads = max(1, int(cluster.cpus // max(actors, 1)))
        summaries = run_shards(
            shards,
            RayPredictWorker,
            worker_kwargs={
                "model": str(model),
                "overrides": dict(overrides or {}),
                "threads": threads,
                "nonfinite": nonfinite,
            },
            actors=actors,
            cpus_per_actor=threads,
            gpus_per_actor=gpus_per_actor,
            on_result=report,
        )
    for summary in summaries:
        scan = scans[summary["id"]]
        if "error" in summary:
            result.failed.append((scan, summary["error"].removeprefix("UserError: ")))
        else:
            result.written.append(Path(summary["written"]))
    return result, done
