"""Prediction on a folder of DICOM series: one series per channel of the model (chosen by SeriesDescription
or `--series`), read onto their common grid, predicted with the `Predictor`'s array API, and written as a
NIfTI label map on that grid and/or a DICOM SEG referencing the first channel's series.

It wires `visionpipes.medical.dicom` (formats) to the predictor; it never trains and writes nothing on error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from visionpipes.core.errors import UserError
from visionpipes.medical.dicom.choice import choose_series
from visionpipes.medical.dicom.series import SeriesInfo, find_series, read_channels
from visionpipes.medical.msd.volumes import (
    NIFTI_SUFFIXES,
    NonFinitePolicy,
    check_output_path,
    finite_volume,
    write_label_map,
)
from visionpipes.medical.runtime.predictor import Predictor

OutputFormat = Literal["nifti", "seg", "both"]
#: File-name ending of a DICOM SEG output.
SEG_SUFFIX = ".dcm"


@dataclass(frozen=True)
class DicomPrediction:
    """What `predict_dicom_folder` wrote.

    Attributes:
        series: `{modality: series}` read, in channel order.
        outputs: the files written (NIfTI and/or SEG).
    """

    series: dict[str, SeriesInfo]
    outputs: list[Path]


def input_kind(folder: str | os.PathLike) -> Literal["nifti", "dicom"]:
    """`nifti` if `folder` holds `.nii` / `.nii.gz` files at its top level, otherwise `dicom`.

    A NIfTI folder is the MSD layout (one scan per file, side by side); anything else is searched
    recursively for DICOM series, and a folder with neither gets one error from `find_series`.
    """
    folder = Path(folder)
    if any(p.is_file() and p.name.endswith(NIFTI_SUFFIXES) for p in folder.iterdir()):
        return "nifti"
    return "dicom"


def output_paths(output: str | os.PathLike, output_format: OutputFormat) -> tuple[Path | None, Path | None]:
    """`(nifti, seg)` paths for `--output` and `--output-format` (`both`: the SEG beside the NIfTI).

    Raises:
        UserError: if the name does not fit the format (`.nii`/`.nii.gz` for nifti and both, `.dcm` for seg)
            or its folder does not exist.
    """
    output = Path(output)
    if output_format == "seg":
        if output.suffix.lower() != SEG_SUFFIX:
            raise UserError(f"output {output} must end in {SEG_SUFFIX} for --output-format seg.")
        parent = output.parent if str(output.parent) else Path(".")
        if not parent.is_dir():
            raise UserError(f"output folder {parent} does not exist (for {output}).")
        return None, output
    check_output_path(output)
    if output_format == "nifti":
        return output, None
    stem = output.name.removesuffix(".gz").removesuffix(".nii")
    return output, output.with_name(stem + SEG_SUFFIX)


def predict_dicom_folder(
    predictor: Predictor,
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    overrides: Mapping[str, str] | None = None,
    output_format: OutputFormat = "nifti",
    nonfinite: NonFinitePolicy = "error",
) -> DicomPrediction:
    """Predict the DICOM series of `folder` (one per model channel) and write the label map.

    Args:
        predictor: the model.
        folder: a folder of DICOM files (searched recursively), one or several series.
        output: the NIfTI (`nifti`, `both`) or `.dcm` (`seg`) path; with `both` the SEG goes beside the
            NIfTI with the `.dcm` ending.
        overrides: `{modality: SeriesDescription or SeriesInstanceUID}` (`--series`).
        output_format: `nifti`, `seg` or `both`.
        nonfinite: NaN/inf voxels refuse the series (`error`) or are set to 0 with a warning (`zero`).

    Returns:
        The series read and the files written.

    Raises:
        UserError: if the folder holds no DICOM series, a channel has no (or several) series, a series
            cannot be read or the channels' grids differ, a voxel is NaN/inf (with `error`), an output is
            unusable or lies in the input folder's files. Nothing is written then.
    """
    folder = Path(folder)
    nifti_out, seg_out = output_paths(output, output_format)
    series = find_series(folder)
    chosen = choose_series(series, predictor.modality, overrides)
    for path in (nifti_out, seg_out):
        if path is not None and any(path.resolve() == f.resolve() for s in chosen.values() for f in s.files):
            raise UserError(f"output {path} is a file of the input series; choose another output.")
    volume, affine, _ = read_channels(chosen)
    volume = finite_volume(volume, f"DICOM series {next(iter(chosen.values()))}", nonfinite)
    labels = predictor.predict_array(volume, affine)
    written = []
    if seg_out is not None:
        from visionpipes.medical.dicom.seg import write_seg

        first = next(iter(chosen.values()))
        written.append(
            write_seg(labels, first, predictor.label_names(), seg_out, affine=affine,
                      series_description="visionpipes segmentation")
        )  # fmt: skip
    if nifti_out is not None:
        written.append(write_label_map(labels, affine, nifti_out))
    return DicomPrediction(series=dict(chosen), outputs=written)
