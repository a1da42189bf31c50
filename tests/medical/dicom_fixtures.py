"""Synthetic DICOM series for test_dicom.py: a CT series and a four-series MR study built from NIfTI volumes.

Volumes are generated here, saved and reloaded as NIfTI with nibabel, then written as DICOM slices with
pydicom; nothing is downloaded. Plain helpers, not pytest fixtures, so the tests need no conftest.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RTStructureSetStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

#: Task01's four MRI sequences (dataset.json `modality`) and realistic series descriptions for them.
MR_DESCRIPTIONS = {"FLAIR": "AX FLAIR", "T1w": "T1w SAG 3D", "t1gd": "T1 post-contrast t1gd", "T2w": "AX T2w"}
CT_INTERCEPT = -1024.0

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Study:
    """Patient and study identity shared by the series of one study."""

    patient_id: str = "VP-SYNTH-001"
    study_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)


def ct_volume(shape: tuple[int, int, int] = (32, 30, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic CT in HU (integers) with 0.8 x 0.8 x 2.5 mm voxels, axial, LPS-ordered axes.

    The in-plane sizes differ and the content is noisy so that a swapped or flipped axis shows.
    """
    rng = np.random.default_rng(7)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    body = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1
    hu[body] = 40.0
    hu[((x - 0.2) ** 2 + (y + 0.1) ** 2 + (z - 0.3) ** 2) < 0.1] = 90.0
    hu[((x + 0.4) ** 2 + (y - 0.3) ** 2) < 0.02] = 900.0
    hu += rng.integers(-20, 21, size=shape)
    affine = np.array(
        [[-0.8, 0.0, 0.0, 12.4], [0.0, -0.8, 0.0, 30.0], [0.0, 0.0, 2.5, -40.0], [0.0, 0.0, 0.0, 1.0]]
    )
    return hu, affine


def mr_affine(spacing: tuple[float, float, float] = (1.0, 1.2, 3.0)) -> np.ndarray:
    """An oblique RAS affine (rotated 15 degrees about x and 10 about z) with anisotropic voxels."""
    a, b = np.deg2rad(15.0), np.deg2rad(10.0)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = (20.5, -14.0, 8.25)
    return affine


def mr_volumes(shape: tuple[int, int, int] = (24, 28, 10)) -> dict[str, np.ndarray]:
    """Four synthetic MR sequences (non-negative integer intensities) of one grid, keyed by modality."""
    rng = np.random.default_rng(11)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (x / 0.9) ** 2 + (y / 0.85) ** 2 + (z / 1.1) ** 2 < 1
    lesion = ((x - 0.3) ** 2 + (y + 0.2) ** 2 + z**2) < 0.08
    volumes = {}
    for i, name in enumerate(MR_DESCRIPTIONS):
        volume = np.where(brain, 300.0 + 50 * i, 0.0) + np.where(lesion, 200.0 - 40 * i, 0.0)
        volumes[name] = np.round(volume + rng.integers(0, 30, size=shape)).astype(np.float64)
    return volumes


def nifti_round_trip(path: Path, volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Save `volume` as NIfTI and load it back: the array and affine nibabel gives for it."""
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(path))
    image = nib.load(str(path))
    return np.asarray(image.get_fdata(dtype=np.float32)), np.asarray(image.affine, dtype=np.float64)


def series_datasets(
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    modality: str,
    description: str,
    study: Study,
    series_number: int = 1,
    rescale_intercept: float = 0.0,
) -> list[Dataset]:
    """DICOM slices (one dataset per `volume[:, :, k]`) of a NIfTI-convention volume and RAS affine.

    Slice `k` is placed at the affine's voxel `(0, 0, k)`; pixel `[row j, column i]` holds `volume[i, j, k]`.
    CT is stored as int16 with `RescaleIntercept`, MR as uint16 without rescale.
    """
    lps = _LPS_TO_RAS @ affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    col_spacing, row_spacing = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    if abs(col_step @ row_step) > 1e-5 * col_spacing * row_spacing:
        raise ValueError("the affine's first two axes are not orthogonal; DICOM slices cannot hold it.")
    orientation = [*(col_step / col_spacing), *(row_step / row_spacing)]
    is_ct = modality == "CT"
    series_uid = generate_uid()
    datasets = []
    for k in range(volume.shape[2]):
        stored = np.round(volume[:, :, k].T - (rescale_intercept if is_ct else 0.0))
        ds = _image_header(CTImageStorage if is_ct else MRImageStorage, modality, study)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(lps[:3, 3] + k * lps[:3, 2])
        ds.ImageOrientationPatient = _ds(orientation)
        ds.PixelSpacing = _ds([row_spacing, col_spacing])
        ds.SliceThickness = _ds([np.linalg.norm(lps[:3, 2])])[0]
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if is_ct else 0
        if is_ct:
            ds.RescaleIntercept = _ds([rescale_intercept])[0]
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
        ds.PixelData = stored.astype(np.int16 if is_ct else np.uint16).tobytes()
        datasets.append(ds)
    return datasets


def write_datasets(
    datasets: Sequence[Dataset], folder: Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Save datasets as DICOM files in `folder` (created), named `names` or `IM0001.dcm`, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"IM{i + 1:04d}.dcm" for i in range(len(datasets))]
    paths = []
    for ds, name in zip(datasets, names, strict=True):
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_ct_series(
    folder: Path, study: Study | None = None, *, description: str = "CT ABDOMEN 2.5mm"
) -> tuple[np.ndarray, np.ndarray, list[Dataset]]:
    """Write the synthetic CT (via a NIfTI round trip) as a DICOM series; returns nibabel's array, affine."""
    folder.mkdir(parents=True, exist_ok=True)
    hu, affine = ct_volume()
    volume, affine = nifti_round_trip(folder.parent / f"{folder.name}_ct.nii.gz", hu, affine)
    datasets = series_datasets(
        volume,
        affine,
        modality="CT",
        description=description,
        study=study or Study(),
        rescale_intercept=CT_INTERCEPT,
    )
    write_datasets(datasets, folder)
    return volume, affine, datasets


def write_mr_study(folder: Path, study: Study | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Write the four MR sequences as four series of one study, one sub-folder each.

    Returns:
        `{modality: nibabel's array}` and nibabel's affine (shared by all four).
    """
    study = study or Study()
    volumes: dict[str, np.ndarray] = {}
    affine = mr_affine()
    for number, (name, synthetic) in enumerate(mr_volumes().items(), start=1):
        volume, affine = nifti_round_trip(
            folder.parent / f"{folder.name}_{name}.nii.gz", synthetic, mr_affine()
        )
        datasets = series_datasets(
            volume,
            affine,
            modality="MR",
            description=MR_DESCRIPTIONS[name],
            study=study,
            series_number=number,
        )
        write_datasets(datasets, folder / f"series{number}")
        volumes[name] = volume
    return volumes, affine


def write_rtstruct(folder: Path, referenced: Sequence[Dataset]) -> Path:
    """Write a minimal RT Structure Set (no contours) referencing the series of `referenced`."""
    first = referenced[0]
    ds = _header(RTStructureSetStorage, "RTSTRUCT")
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID"):
        setattr(ds, keyword, getattr(first, keyword))
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 99
    ds.SeriesDescription = "RTSTRUCT tumour contours"
    ds.StructureSetLabel = "tumour"
    ds.StructureSetDate, ds.StructureSetTime = "20240101", "120000"
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence = []
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "RS.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def restacked(source: Dataset, count: int, step_mm: float) -> list[Dataset]:
    """`count` copies of one slice (e.g. pydicom's CT_small.dcm) stacked `step_mm` apart along its normal."""
    orientation = np.asarray([float(v) for v in source.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.asarray([float(v) for v in source.ImagePositionPatient])
    series_uid = generate_uid()
    stack = []
    for k in range(count):
        ds = copy.deepcopy(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(origin + k * step_mm * normal)
        stack.append(ds)
    return stack


def _ds(values: Sequence[float] | np.ndarray) -> list[DSfloat]:
    return [DSfloat(float(v), auto_format=True) for v in values]


def _header(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.Manufacturer = "visionpipes tests"
    ds.SeriesDate, ds.SeriesTime = "20240101", "120000"
    return ds


def _image_header(sop_class: str, modality: str, study: Study) -> Dataset:
    ds = _header(sop_class, modality)
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    return ds
