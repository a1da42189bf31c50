"""Write a predicted label map as a DICOM Segmentation (highdicom) over its source series, and read one back.

The label map is on the source grid in the NIfTI/RAS convention of `series.read_series`; this module
re-orders it into the series' slices. It never runs a model and writes nothing but the SEG file (atomically).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from visionpipes.core.errors import UserError
from visionpipes.core.io import atomic_path
from visionpipes.medical.dicom.series import SeriesGeometry, SeriesInfo, read_geometry

#: Category of a lesion-like region (CID 7150): SCT 49755003 "Morphologically Abnormal Structure".
ABNORMAL = codes.cid7150.MorphologicallyAbnormalStructure
#: Category of an organ (CID 7150): SCT 91723000 "Anatomical Structure".
ANATOMY = codes.cid7150.AnatomicalStructure
#: Category and type of a region whose name says nothing we can code: SCT 85756007 "Tissue" twice.
UNKNOWN_REGION = (codes.cid7150.Tissue, codes.cid7151.Tissue)

#: (words in a region name, category, type from CID 7151), first match wins: lesions before organs, so
#: "liver tumour" is a neoplasm. Names are the Medical Segmentation Decathlon's label names.
REGION_CODES: tuple[tuple[frozenset[str], Code, Code], ...] = (
    (frozenset({"edema", "oedema"}), ABNORMAL, codes.cid7151.Edema),
    (frozenset({"necrosis", "necrotic"}), ABNORMAL, codes.cid7151.Necrosis),
    (
        frozenset({"tumor", "tumour", "cancer", "neoplasm", "lesion", "metastasis", "mass"}),
        ABNORMAL,
        codes.cid7151.Neoplasm,
    ),
    (frozenset({"liver"}), ANATOMY, codes.cid7151.Liver),
    (frozenset({"pancreas"}), ANATOMY, codes.cid7151.Pancreas),
    (frozenset({"spleen"}), ANATOMY, codes.cid7151.Spleen),
    (frozenset({"prostate"}), ANATOMY, codes.cid7151.Prostate),
    (frozenset({"hippocampus"}), ANATOMY, codes.cid7151.Hippocampus),
    (frozenset({"atrium"}), ANATOMY, codes.cid7151.LeftAtrium),
    (frozenset({"heart"}), ANATOMY, codes.cid7151.Heart),
    (frozenset({"lung"}), ANATOMY, codes.cid7151.Lung),
    (frozenset({"colon"}), ANATOMY, codes.cid7151.Colon),
    (frozenset({"kidney"}), ANATOMY, codes.cid7151.Kidney),
)


def region_codes(name: str) -> tuple[Code, Code]:
    """The (segmented property category, type) coded concepts for a region name.

    Looks the name's words up in `REGION_CODES` (e.g. "edema" -> Morphologically Abnormal Structure /
    Edema, "enhancing tumour" -> ... / Neoplasm, "liver" -> Anatomical Structure / Liver); otherwise
    Tissue / Tissue.
    """
    words = set("".join(c if c.isalnum() else " " for c in name.lower()).split())
    for keys, category, kind in REGION_CODES:
        if words & keys:
            return category, kind
    return UNKNOWN_REGION


def write_seg(
    label_map: np.ndarray,
    source: SeriesInfo,
    regions: Mapping[int, str],
    out_path: str | os.PathLike,
    *,
    affine: np.ndarray | None = None,
    coded_regions: Mapping[int, tuple[Code, Code]] | None = None,
    series_number: int = 901,
    series_description: str = "visionpipes segmentation",
    algorithm_name: str = "visionpipes medical",
    algorithm_version: str = "0",
    manufacturer: str = "visionpipes",
) -> Path:
    """Write `label_map` as a BINARY DICOM Segmentation referencing every instance of `source`.

    One segment per region, numbered 1..N in ascending label value, labelled with the region's name and
    coded with `coded_regions[value]` or `region_codes(name)`; one frame per source slice holding a
    segment (empty frames omitted), each referencing its source instance.

    Args:
        label_map: integer labels `(X, Y, Z)` on the source grid, NIfTI/RAS convention (`read_series`).
        source: the image series the labels were predicted on.
        regions: `{label value: name}` for every non-zero label (e.g. dataset.json `labels` minus 0).
        out_path: the `.dcm` file to write; written to a temporary file and renamed into place.
        affine: the label map's RAS affine; when given it must match the series' grid.
        coded_regions: `{label value: (category, type)}` overriding `region_codes`.
        series_number: SeriesNumber of the new SEG series.
        series_description: SeriesDescription of the new SEG series.
        algorithm_name: AlgorithmName recorded for every segment (algorithm type AUTOMATIC).
        algorithm_version: AlgorithmVersion, e.g. the deployed model's version.
        manufacturer: Manufacturer of the writing software.

    Returns:
        `out_path` as a Path.

    Raises:
        UserError: if the source is not a readable image series, the label map's shape or affine is not
            the series' grid, it holds a non-integer or negative value or a label missing from `regions`,
            a region is unnamed, or the output folder does not exist. Nothing is written then.
    """
    out = Path(out_path)
    geometry = read_geometry(source)
    labels = _checked_label_map(label_map, geometry, affine)
    regions = {int(value): str(name) for value, name in regions.items()}
    values = _checked_regions(regions, labels, source)
    lookup = np.zeros(int(max(values[-1], labels.max())) + 1, dtype=np.uint16)
    lookup[values] = np.arange(1, len(values) + 1)
    frames = lookup[labels].transpose(2, 1, 0)  # (X, Y, Z) -> (slices, rows, columns)
    frames = frames.astype(np.uint8 if len(values) < 256 else np.uint16)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = regions[value].strip()
        category, kind = (coded_regions or {}).get(value) or region_codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"{name} (label {value})",
            )
        )
    source_images = [pydicom.dcmread(path, stop_before_pixels=True) for path in geometry.files]
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=series_description,
        content_label="SEGMENTATION",
        content_description=f"{algorithm_name} {algorithm_version}"[:64],
        omit_empty_frames=bool(frames.any()),
    )
    with atomic_path(out) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out


def read_seg(
    path: str | os.PathLike, source: SeriesInfo, regions: Mapping[int, str] | None = None
) -> np.ndarray:
    """Read a DICOM Segmentation back onto its source series' grid as a label map.

    Args:
        path: the SEG file.
        source: the image series it segments (must be the one it references).
        regions: `{label value: name}`; when given, each segment becomes the value whose name equals its
            SegmentLabel, otherwise the value is the segment number.

    Returns:
        Labels `(X, Y, Z)` int32 in the NIfTI/RAS convention of `read_series`.

    Raises:
        UserError: if `path` is not a readable DICOM Segmentation, does not reference `source`, has
            overlapping segments or frames off the source's slices, or a segment label is not in `regions`.
    """
    path = Path(path)
    geometry = read_geometry(source)
    try:
        seg = hd.seg.segread(path)
    except (InvalidDicomError, OSError, AttributeError, ValueError, KeyError) as err:
        raise UserError(f"{path} cannot be read as a DICOM Segmentation ({err}).") from err
    if seg.SOPClassUID != SegmentationStorage:
        raise UserError(f"{path} is not a DICOM Segmentation (SOPClassUID {seg.SOPClassUID}).")
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if source.uid not in referenced:
        raise UserError(f"{path} does not reference series {source} (it references {sorted(referenced)}).")
    try:
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(geometry.sop_instance_uids),
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"{path} cannot be laid on the slices of series {source} ({err}).") from err
    lookup = np.arange(max(seg.segment_numbers, default=0) + 1, dtype=np.int32)
    if regions is not None:
        by_name = {name.strip(): value for value, name in regions.items()}
        for number in seg.segment_numbers:
            label = str(seg.get_segment_description(number).SegmentLabel).strip()
            if label not in by_name:
                raise UserError(
                    f"segment {number} of {path} is labelled '{label}', which is not among the regions "
                    f"{sorted(by_name)}."
                )
            lookup[number] = by_name[label]
    return lookup[np.asarray(frames, dtype=np.int64)].transpose(2, 1, 0)


def _checked_label_map(
    label_map: np.ndarray, geometry: SeriesGeometry, affine: np.ndarray | None
) -> np.ndarray:
    source = geometry.series
    array = np.asarray(label_map)
    if array.shape != geometry.shape:
        raise UserError(
            f"the label map is {array.shape} voxels but series {source} is {geometry.shape} "
            f"(columns, rows, slices); it must be on the series' grid."
        )
    if affine is not None and not np.allclose(
        np.asarray(affine, dtype=np.float64), geometry.affine, atol=1e-3
    ):
        raise UserError(f"the label map's affine differs from the grid of series {source}.")
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))
    )
    if not integral:
        raise UserError(f"the label map for series {source} holds non-integer values.")
    if array.size and array.min() < 0:
        raise UserError(f"the label map for series {source} holds negative labels.")
    return array.astype(np.int64)


def _checked_regions(regions: Mapping[int, str], labels: np.ndarray, source: SeriesInfo) -> list[int]:
    values = sorted(int(v) for v in regions)
    if not values or values[0] < 1:
        raise UserError("the regions must name at least one label value of 1 or more (0 is background).")
    unnamed = [v for v in values if not regions[v].strip()]
    if unnamed:
        raise UserError(f"region(s) {unnamed} have no name; every segment needs a label.")
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *values})
    if unknown:
        raise UserError(f"the label map for series {source} holds label(s) {unknown} that no region names.")
    return values
