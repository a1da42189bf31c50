"""DICOM in and out (#16): series found, chosen and read with nibabel's geometry; DICOM SEG round trip.

Every series is synthesised by dicom_fixtures.py (or copied from pydicom's own test files); no download.
Runs without the medical conftest: `pytest --noconftest tests/medical/test_dicom.py`.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale
from pydicom.uid import CTImageStorage, MRImageStorage, RTStructureSetStorage, SegmentationStorage

from visionpipes.core.errors import UserError
from visionpipes.medical.dicom.choice import choose_series, parse_series_overrides
from visionpipes.medical.dicom.seg import read_seg, region_codes, write_seg
from visionpipes.medical.dicom.series import (
    SeriesInfo,
    find_series,
    read_channels,
    read_geometry,
    read_series,
)


def _load_fixtures():
    """Import the sibling helper module by path (importlib import mode puts no test folder on sys.path)."""
    spec = importlib.util.spec_from_file_location(
        "dicom_fixtures", Path(__file__).with_name("dicom_fixtures.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fx = _load_fixtures()
TASK01 = list(fx.MR_DESCRIPTIONS)  # ["FLAIR", "T1w", "t1gd", "T2w"], dataset.json `modality` order
TASK01_REGIONS = {1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"}


def _pydicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    # the file ships in pydicom's wheel: its absence is a broken install, not a reason to skip
    assert path is not None, f"pydicom's test file {name} is not on disk (it is never downloaded)"
    return Path(path)


def _one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message
    return message


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct") / "dicom"
    volume, affine, datasets = fx.write_ct_series(folder)
    return folder, volume, affine, datasets


@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mr") / "study"
    volumes, affine = fx.write_mr_study(folder)
    return folder, volumes, affine


# --- reading: geometry, HU, slice order ---------------------------------------------------------------


def test_ct_series_reads_as_nibabel_reads_the_nifti(ct):
    folder, volume, affine, _ = ct
    (info,) = find_series(folder)
    assert (info.modality, info.description, info.sop_class_uid) == ("CT", "CT ABDOMEN 2.5mm", CTImageStorage)
    assert info.number_of_instances == 12 and list(info.files) == sorted(info.files)
    read, read_affine, geometry = read_series(info)
    assert read.dtype == np.float32 and read.shape == volume.shape == (32, 30, 12)
    np.testing.assert_array_equal(read, volume)
    np.testing.assert_allclose(read_affine, affine, atol=1e-5)
    np.testing.assert_allclose(geometry.spacing, (0.8, 0.8, 2.5), atol=1e-5)


def test_ct_pixels_are_rescaled_to_hounsfield_units(ct):
    folder, volume, _, _ = ct
    (info,) = find_series(folder)
    read, _, geometry = read_series(info)
    raw = pydicom.dcmread(geometry.files[0])
    assert raw.pixel_array.dtype == np.int16 and float(raw.RescaleIntercept) == fx.CT_INTERCEPT
    assert raw.pixel_array.min() >= 0  # stored values: air is about +24, not -1000
    np.testing.assert_array_equal(read[:, :, 0], raw.pixel_array.T.astype(np.float32) + fx.CT_INTERCEPT)
    assert read.min() < -950 and 20 < np.median(read[volume > 0]) < 120  # air and soft tissue in HU


def test_mr_study_reads_each_oblique_series_as_nibabel_reads_it(mr):
    folder, volumes, affine = mr
    chosen = choose_series(find_series(folder), TASK01, {})
    assert {m: s.description for m, s in chosen.items()} == fx.MR_DESCRIPTIONS
    for modality, info in chosen.items():
        read, read_affine, _ = read_series(info)
        np.testing.assert_array_equal(read, volumes[modality])
        np.testing.assert_allclose(read_affine, affine, atol=1e-5)
    stacked, stacked_affine, geometries = read_channels(chosen)
    assert stacked.shape == (4, 24, 28, 10) and len(geometries) == 4
    for channel, modality in enumerate(TASK01):
        np.testing.assert_array_equal(stacked[channel], volumes[modality])
    np.testing.assert_allclose(stacked_affine, affine, atol=1e-5)


def test_slice_order_comes_from_positions_not_file_names_or_instance_numbers(tmp_path):
    hu, affine = fx.ct_volume()
    volume, affine = fx.nifti_round_trip(tmp_path / "ct.nii.gz", hu, affine)
    datasets = fx.series_datasets(volume, affine, modality="CT", description="CT", study=fx.Study())
    order = np.random.default_rng(3).permutation(len(datasets))
    assert not np.array_equal(order, np.arange(len(datasets)))
    for ds, number in zip(datasets, order, strict=True):
        ds.InstanceNumber = int(number) + 1  # InstanceNumber now says nothing about position
    names = [f"slice_{int(n):02d}.dcm" for n in np.argsort(order)[::-1]]  # neither do file names
    fx.write_datasets(datasets, tmp_path / "dicom", names)
    read, read_affine, _ = read_series(find_series(tmp_path / "dicom")[0])
    np.testing.assert_array_equal(read, volume)
    np.testing.assert_allclose(read_affine, affine, atol=1e-5)


def test_a_slice_axis_against_the_dicom_normal_comes_back_reversed_on_the_same_world_grid(tmp_path):
    hu, affine = fx.ct_volume()
    affine = affine @ np.diag([1.0, 1.0, -1.0, 1.0])  # slices run inferior: against row x column
    volume, affine = fx.nifti_round_trip(tmp_path / "ct.nii.gz", hu, affine)
    fx.write_datasets(
        fx.series_datasets(volume, affine, modality="CT", description="CT", study=fx.Study()), tmp_path / "d"
    )
    read, read_affine, _ = read_series(find_series(tmp_path / "d")[0])
    last = volume.shape[2] - 1
    flip = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, last], [0, 0, 0, 1]])  # k -> last - k
    np.testing.assert_array_equal(read, volume[:, :, ::-1])
    np.testing.assert_allclose(read_affine, affine @ flip, atol=1e-4)


@pytest.mark.slow  # importing MONAI takes ~7 s of CPU
def test_agrees_with_monai_pydicom_reader_on_an_ordered_series(mr):
    from monai.data import PydicomReader

    folder, _, _ = mr
    chosen = choose_series(find_series(folder), TASK01, {})
    read, read_affine, geometry = read_series(chosen["T1w"])
    reader = PydicomReader()
    array, meta = reader.get_data(reader.read(geometry.files[0].parent))
    np.testing.assert_array_equal(np.asarray(array, dtype=np.float32), read)
    np.testing.assert_allclose(np.asarray(meta["affine"]), read_affine, atol=1e-5)


def test_pydicom_ct_small_is_found_rejected_as_one_slice_and_read_when_restacked(tmp_path):
    source = _pydicom_file("CT_small.dcm")
    shutil.copy(source, tmp_path / "CT_small.dcm")
    (info,) = find_series(tmp_path)
    assert info.is_image and info.modality == "CT"
    with pytest.raises(UserError, match="single slice") as err:
        read_series(info)
    assert "CT_small.dcm" in _one_sentence(err)

    original = pydicom.dcmread(source)
    fx.write_datasets(fx.restacked(original, 3, step_mm=5.0), tmp_path / "stack")
    read, affine, _ = read_series(find_series(tmp_path / "stack")[0])
    hu = apply_rescale(original.pixel_array, original).astype(np.float32)
    assert hu.min() < original.pixel_array.min()  # RescaleIntercept -1024 applied
    for k in range(3):
        np.testing.assert_array_equal(read[:, :, k], hu.T)
    x, y, z = (float(v) for v in original.ImagePositionPatient)
    spacing = float(original.PixelSpacing[0])
    expected = np.array([[-spacing, 0, 0, -x], [0, -spacing, 0, -y], [0, 0, 5.0, z], [0, 0, 0, 1]])
    np.testing.assert_allclose(affine, expected, atol=1e-5)


# --- bad input: one sentence each --------------------------------------------------------------------


def test_a_folder_without_dicom_is_one_error_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    (tmp_path / "scan.nii.gz").write_bytes(b"\x1f\x8b" + bytes(300))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "random.bin").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(UserError, match="no DICOM series found") as err:
        find_series(tmp_path)
    assert str(tmp_path) in _one_sentence(err)
    with pytest.raises(UserError, match="is not a folder"):
        find_series(tmp_path / "notes.txt")


def test_non_dicom_files_beside_a_series_are_skipped(ct, tmp_path):
    folder, _, _, _ = ct
    shutil.copytree(folder, tmp_path / "export" / "deep" / "ct")
    (tmp_path / "export" / "README.txt").write_text("exported from PACS")
    (info,) = find_series(tmp_path / "export")
    assert info.number_of_instances == 12


def _ct_datasets(tmp_path: Path) -> list[pydicom.Dataset]:
    hu, affine = fx.ct_volume()
    volume, affine = fx.nifti_round_trip(tmp_path / "ct.nii.gz", hu, affine)
    return fx.series_datasets(
        volume,
        affine,
        modality="CT",
        description="CT BAD",
        study=fx.Study(),
        rescale_intercept=fx.CT_INTERCEPT,
    )


def _drop_slice(datasets):
    del datasets[5]


def _irregular(datasets):
    for ds in datasets[6:]:
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.6


def _duplicate(datasets):
    datasets[3].ImagePositionPatient = copy.deepcopy(datasets[2].ImagePositionPatient)


def _mixed_orientation(datasets):
    datasets[4].ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, 0.0998334]


def _mixed_size(datasets):
    ds = datasets[7]
    ds.PixelData = ds.pixel_array[:-2].tobytes()
    ds.Rows = ds.Rows - 2


def _sheared(datasets):
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + 0.5 * k


def _single(datasets):
    del datasets[1:]


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (_drop_slice, r"is missing 1 slice\(s\)"),
        (_irregular, "irregular slice spacing"),
        (_duplicate, "two slices at the same position"),
        (_mixed_orientation, "mixes orientations"),
        (_mixed_size, "mixes image sizes"),
        (_sheared, "is sheared"),
        (_single, "has a single slice"),
    ],
)
def test_each_bad_series_is_one_error_naming_it(tmp_path, spoil, expected):
    datasets = _ct_datasets(tmp_path)
    spoil(datasets)
    fx.write_datasets(datasets, tmp_path / "dicom")
    (info,) = find_series(tmp_path / "dicom")
    with pytest.raises(UserError, match=expected) as err:
        read_series(info)
    message = _one_sentence(err)
    assert "'CT BAD'" in message and info.uid in message


def test_a_regular_series_with_rounded_positions_is_accepted(tmp_path):
    datasets = _ct_datasets(tmp_path)
    for k, ds in enumerate(datasets):  # scanner-style rounding noise, far below the tolerance
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + (-1) ** k * 4e-4
    fx.write_datasets(datasets, tmp_path / "dicom")
    read, affine, _ = read_series(find_series(tmp_path / "dicom")[0])
    assert read.shape == (32, 30, 12) and abs(affine[2, 2] - 2.5) < 1e-3


def test_non_image_sop_classes_are_not_readable_image_series(ct, tmp_path):
    folder, _, _, datasets = ct
    shutil.copytree(folder, tmp_path / "study" / "ct")
    fx.write_rtstruct(tmp_path / "study" / "rt", datasets)
    shutil.copy(_pydicom_file("rtstruct.dcm"), tmp_path / "study" / "pydicom_rtstruct.dcm")
    series = find_series(tmp_path / "study")
    structures = [s for s in series if s.sop_class_uid == RTStructureSetStorage]
    assert len(series) == 3 and len(structures) == 2 and not any(s.is_image for s in structures)
    for info in structures:
        with pytest.raises(UserError, match="RT Structure Set Storage object, not an image series") as err:
            read_series(info)
        assert info.uid in _one_sentence(err)
    # chosen by default: the image series; chosen by --series: the error
    assert choose_series(series, ["CT"], {})["CT"].modality == "CT"
    with pytest.raises(UserError, match="not an image series"):
        choose_series(series, ["CT"], {"CT": structures[0].uid})


def test_mixed_series_without_a_choice_is_one_error_listing_them(tmp_path):
    hu, affine = fx.ct_volume((16, 16, 4))
    for description in ("ABDOMEN 2.5mm", "ABDOMEN THIN"):
        datasets = fx.series_datasets(hu, affine, modality="CT", description=description, study=fx.Study())
        fx.write_datasets(datasets, tmp_path / description.replace(" ", "_"))
    series = find_series(tmp_path)
    with pytest.raises(UserError, match="2 image series and none is named 'CT'") as err:
        choose_series(series, ["CT"], {})
    message = _one_sentence(err)
    assert all(s.uid in message and s.description in message for s in series)
    assert "--series CT=" in message
    assert choose_series(series, ["CT"], {"CT": series[1].uid})["CT"] == series[1]


# --- channel choice ----------------------------------------------------------------------------------


def _info(description: str, uid: str, sop_class: str = MRImageStorage) -> SeriesInfo:
    return SeriesInfo(uid=uid, description=description, modality="MR", sop_class_uid=sop_class, files=())


REALISTIC = [
    _info("AX FLAIR", "1.1"),
    _info("T1w SAG 3D", "1.2"),
    _info("T1 post-contrast t1gd", "1.3"),
    _info("AX T2w", "1.4"),
    _info("localizer", "1.5"),
    _info("SEG FLAIR lesions", "1.6", SegmentationStorage),  # not an image: never a candidate
]


def test_task01_sequences_resolve_uniquely_on_realistic_descriptions():
    chosen = choose_series(REALISTIC, TASK01, {})
    assert list(chosen) == TASK01
    assert [s.uid for s in chosen.values()] == ["1.1", "1.2", "1.3", "1.4"]
    # whole words, any separator, any case: "T1w_MPRAGE" is T1w, "T2_FLAIR" is FLAIR (not T2w)
    other = [
        _info("t2_flair", "2.1"),
        _info("T1w_MPRAGE", "2.2"),
        _info("t1gd-vibe", "2.3"),
        _info("T2W TSE", "2.4"),
    ]
    assert [s.uid for s in choose_series(other, TASK01, {}).values()] == ["2.1", "2.2", "2.3", "2.4"]


def test_a_bare_t1_name_is_ambiguous_and_a_series_matching_two_channels_is_an_error():
    with pytest.raises(UserError, match="modality 'T1' is ambiguous") as err:
        choose_series([_info("T1 SAG", "3.1"), _info("T1 AX post", "3.2")], ["T1"], {})
    assert "3.1" in _one_sentence(err) and "3.2" in str(err.value)
    with pytest.raises(UserError, match="matches both modality 'T1w' and 't1gd'"):
        choose_series([*REALISTIC[:1], _info("T1w t1gd", "3.3"), REALISTIC[3]], TASK01, {})


def test_a_missing_or_ambiguous_sequence_is_one_error_naming_it():
    with pytest.raises(UserError, match="no image series for modality 'T2w'") as err:
        choose_series(REALISTIC[:3], TASK01, {})
    assert "--series T2w=DESCRIPTION_OR_UID" in _one_sentence(err)
    with pytest.raises(UserError, match="modality 'FLAIR' is ambiguous") as err:
        choose_series([*REALISTIC, _info("FLAIR 3D", "1.7")], TASK01, {})
    assert "1.1" in _one_sentence(err) and "1.7" in str(err.value)


def test_series_overrides_win_by_uid_or_description():
    candidates = [*REALISTIC, _info("FLAIR 3D", "1.7")]
    by_uid = choose_series(candidates, TASK01, {"FLAIR": "1.7"})
    assert by_uid["FLAIR"].uid == "1.7" and by_uid["T2w"].uid == "1.4"
    by_description = choose_series(candidates, TASK01, {"flair": "ax flair", "T2w": "localizer"})
    assert by_description["FLAIR"].uid == "1.1" and by_description["T2w"].uid == "1.5"
    with pytest.raises(UserError, match="names modality 'PD'"):
        choose_series(candidates, TASK01, {"PD": "1.1"})
    with pytest.raises(UserError, match="matches no SeriesInstanceUID or SeriesDescription"):
        choose_series(candidates, TASK01, {"FLAIR": "9.9"})
    twins = [*candidates, _info("AX FLAIR", "1.8")]
    with pytest.raises(UserError, match="matches 2 series"):
        choose_series(twins, TASK01, {"FLAIR": "AX FLAIR"})


def test_a_single_channel_task_takes_the_only_image_series():
    ct = SeriesInfo("5.1", "ABDOMEN", "CT", CTImageStorage, ())
    structures = SeriesInfo("5.2", "RT contours CT", "RTSTRUCT", RTStructureSetStorage, ())
    assert choose_series([ct, structures], ["CT"], None) == {"CT": ct}
    with pytest.raises(UserError, match="no image series for modality 'CT'"):
        choose_series([structures], ["CT"], {})


def test_parse_series_overrides():
    assert parse_series_overrides(["FLAIR=AX FLAIR", " t1gd = 1.2.3 "]) == {
        "FLAIR": "AX FLAIR",
        "t1gd": "1.2.3",
    }
    for bad in (["FLAIR"], ["=1.2"], ["FLAIR="], ["FLAIR=a", "flair=b"]):
        with pytest.raises(UserError, match="--series"):
            parse_series_overrides(bad)


def test_channels_on_different_grids_are_one_error(mr, tmp_path):
    folder, volumes, affine = mr
    chosen = choose_series(find_series(folder), TASK01, {})
    shifted = affine.copy()
    shifted[:3, 3] += (0.0, 0.0, 1.5)
    for name, grid_affine, volume in (
        ("shifted", shifted, volumes["T2w"]),
        ("smaller", affine, volumes["T2w"][:, :, :8]),
    ):
        datasets = fx.series_datasets(
            volume, grid_affine, modality="MR", description=f"T2w {name}", study=fx.Study()
        )
        fx.write_datasets(datasets, tmp_path / name)
        (other,) = find_series(tmp_path / name)
        with pytest.raises(UserError, match="channels 'FLAIR' and 'T2w' are on different grids") as err:
            read_channels({**chosen, "T2w": other})
        assert other.uid in _one_sentence(err)


# --- DICOM SEG out -----------------------------------------------------------------------------------


def _label_map(shape: tuple[int, int, int]) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labels = np.zeros(shape, dtype=np.int16)
    labels[(x - 8) ** 2 + (y - 10) ** 2 + (z - 4) ** 2 < 30] = 1
    labels[(x - 9) ** 2 + (y - 11) ** 2 + (z - 4) ** 2 < 8] = 3
    labels[(x < 5) & (y > 20) & (z >= 6)] = 2
    return labels


def test_seg_round_trip_on_the_mr_grid_with_segments_and_references(mr, tmp_path):
    folder, _, affine = mr
    source = choose_series(find_series(folder), TASK01, {})["FLAIR"]
    geometry = read_geometry(source)
    labels = _label_map(geometry.shape)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    out = write_seg(labels, source, TASK01_REGIONS, tmp_path / "seg.dcm", affine=affine)
    np.testing.assert_array_equal(read_seg(out, source, TASK01_REGIONS), labels)

    seg = pydicom.dcmread(out)
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == pydicom.dcmread(source.files[0]).StudyInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == source.uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(
        geometry.sop_instance_uids
    )
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(TASK01_REGIONS.values())
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["79654002", "108369006", "108369006"]  # SCT Edema, Neoplasm, Neoplasm
    categories = {s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in seg.SegmentSequence}
    assert categories == {"49755003"}  # SCT Morphologically Abnormal Structure

    # Independently of highdicom's reader: each frame is its source slice's mask for its segment.
    slice_of = {uid: k for k, uid in enumerate(geometry.sop_instance_uids)}
    positions = {
        str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient]
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in geometry.files)
    }
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    assert len(frames) == int(seg.NumberOfFrames) > 0
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient], positions[uid], atol=1e-4
        )
        np.testing.assert_array_equal(frame.astype(bool), (labels[:, :, slice_of[uid]] == number).T)


def test_seg_round_trip_on_shuffled_ct_with_non_contiguous_labels(tmp_path):
    datasets = _ct_datasets(tmp_path)
    order = np.random.default_rng(5).permutation(len(datasets))
    fx.write_datasets(
        [datasets[i] for i in order], tmp_path / "dicom", [f"x{i:02d}.dcm" for i in order[::-1]]
    )
    (source,) = find_series(tmp_path / "dicom")
    volume, affine, _ = read_series(source)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[volume > 60] = 1
    labels[volume > 800] = 4
    labels[20:24, 5:9, 3:5] = 2
    regions = {1: "liver", 2: "cancer", 4: "hepatic vessel"}
    out = write_seg(labels, source, regions, tmp_path / "ct_seg.dcm", affine=affine)
    np.testing.assert_array_equal(read_seg(out, source, regions), labels)
    np.testing.assert_array_equal(read_seg(out, source), np.where(labels == 4, 3, labels))  # numbers
    seg = pydicom.dcmread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "cancer", "hepatic vessel"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"


def test_an_empty_prediction_still_writes_a_readable_seg(ct, tmp_path):
    folder, volume, _, _ = ct
    (source,) = find_series(folder)
    out = write_seg(np.zeros(volume.shape, np.uint8), source, {1: "tumour"}, tmp_path / "empty.dcm")
    assert not read_seg(out, source).any()
    (written,) = find_series(tmp_path)  # a SEG found in a folder is a series, but not an image one
    assert written.modality == "SEG" and not written.is_image
    with pytest.raises(UserError, match="Segmentation Storage object, not an image series"):
        read_series(written)


def test_bad_seg_requests_write_nothing(ct, mr, tmp_path):
    folder, volume, _, _ = ct
    (source,) = find_series(folder)
    labels = np.zeros(volume.shape, np.uint8)
    labels[1, 1, 1] = 5
    cases = [
        (labels[:, :, :-1], {5: "tumour"}, tmp_path / "a.dcm", "it must be on the series' grid"),
        (labels, {1: "tumour"}, tmp_path / "b.dcm", r"holds label\(s\) \[5\] that no region names"),
        (labels * 0.5, {5: "tumour"}, tmp_path / "c.dcm", "non-integer values"),
        (labels, {5: "tumour"}, tmp_path / "missing" / "d.dcm", "does not exist"),
    ]
    for array, regions, out, expected in cases:
        with pytest.raises(UserError, match=expected) as err:
            write_seg(array, source, regions, out)
        _one_sentence(err)
        assert not out.exists()
    with pytest.raises(UserError, match="affine differs"):
        write_seg(labels, source, {5: "tumour"}, tmp_path / "e.dcm", affine=np.eye(4))
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file left behind

    out = write_seg(labels, source, {5: "tumour"}, tmp_path / "ok.dcm")
    mr_source = next(iter(choose_series(find_series(mr[0]), TASK01, {}).values()))
    with pytest.raises(UserError, match="does not reference series"):
        read_seg(out, mr_source)
    with pytest.raises(UserError, match=r"segment 1 of .* is labelled 'tumour'"):
        read_seg(out, source, {1: "liver"})
    with pytest.raises(
        UserError, match=r"cannot be read as a DICOM Segmentation|is not a DICOM Segmentation"
    ):
        read_seg(source.files[0], source)


def test_region_codes_for_decathlon_label_names():
    def meanings(name):
        return tuple(code.meaning for code in region_codes(name))

    assert meanings("edema") == ("Morphologically Abnormal Structure", "Edema")
    assert meanings("non-enhancing tumor") == ("Morphologically Abnormal Structure", "Neoplasm")
    assert meanings("liver") == ("Anatomical Structure", "Liver")
    assert meanings("left atrium") == ("Anatomical Structure", "Left atrium")
    assert meanings("Anterior") == ("Tissue", "Tissue")
