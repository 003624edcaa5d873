"""RTSTRUCT export and import (lungseg.io.rtstruct) on synthetic CT series and one real case."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import synthetic
from pydicom.dataset import FileDataset
from pydicom.uid import CTImageStorage, RTStructureSetStorage
from scipy import ndimage

from lungseg import paths
from lungseg.inference import sides
from lungseg.io import rtstruct
from lungseg.io.dicom import Volume, load_series
from lungseg.io.masks import load_mask
from lungseg.io.orient import voxel_to_lps

N, ROWS, COLS = 6, 40, 48
COS30, SIN30 = math.cos(math.radians(30)), math.sin(math.radians(30))
ORIENTATIONS = {
    "standard": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "mirrored": [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "oblique": [COS30, SIN30, 0.0, -SIN30, COS30, 0.0],
}
MIN_DICE = 0.98
REAL_CASES = ("Case_011", "Case_000", "Case_005")  # preferred: touching lungs, shuffled file names


def make_volume(folder: Path, orientation: list[float] | None = None) -> Volume:
    """A small synthetic CT series (non-square 0.75 x 0.8 mm pixels), read back with load_series."""
    for f in synthetic.write_series(folder, n=N, rows=ROWS, cols=COLS):
        if orientation is not None:
            synthetic.edit(f, ImageOrientationPatient=orientation)
    return load_series(folder)


def disk(centre: tuple[float, float], radius: float) -> np.ndarray:
    j, i = np.mgrid[0:ROWS, 0:COLS]
    return (j - centre[0]) ** 2 + (i - centre[1]) ** 2 <= radius ** 2


def make_labels() -> np.ndarray:
    """Right lung (1): a disk on slices 1-4, with a hole holding an island on slice 2. Left lung (2):
    a block touching the image edge on slices 1-4, plus a separate island on slice 3."""
    labels = np.zeros((N, ROWS, COLS), dtype=np.uint8)
    labels[1:5][:, disk((20, 14), 11)] = 1
    labels[2][disk((20, 14), 6)] = 0  # hole
    labels[2][disk((20, 14), 2)] = 1  # island inside the hole
    labels[1:5, 6:34, 34:] = 2  # reaches the last column
    labels[3, 36:39, 30:40] = 2  # second island of the same label on one slice
    return labels


@pytest.fixture
def case(tmp_path: Path) -> tuple[Volume, np.ndarray, Path]:
    volume = make_volume(tmp_path / "ct")
    labels = make_labels()
    return volume, labels, rtstruct.write_rtstruct(labels, volume, tmp_path / "rt.dcm")


def contours_by_roi(ds: pydicom.Dataset) -> dict[int, list[pydicom.Dataset]]:
    return {int(r.ReferencedROINumber): list(r.get("ContourSequence", [])) for r in ds.ROIContourSequence}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.count_nonzero(a & b)) / (np.count_nonzero(a) + np.count_nonzero(b))


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """Voxels within one voxel (in-plane, 8-neighbourhood) of the mask's edge, inside or outside."""
    ring = np.zeros((3, 3, 3), dtype=bool)
    ring[1] = True
    return ndimage.binary_dilation(mask, ring) & ~ndimage.binary_erosion(mask, ring)


def test_written_file_is_an_rtstruct_referencing_the_ct(case: tuple[Volume, np.ndarray, Path]) -> None:
    volume, labels, path = case
    ds = pydicom.dcmread(path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.files]
    source_uids = [s.SOPInstanceUID for s in sources]
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == RTStructureSetStorage
    assert ds.file_meta.MediaStorageSOPClassUID == RTStructureSetStorage
    assert [(r.ROINumber, r.ROIName) for r in ds.StructureSetROISequence] == [(1, "Lung_R"), (2, "Lung_L")]
    frame_uids = {r.ReferencedFrameOfReferenceUID for r in ds.StructureSetROISequence}
    assert frame_uids == {sources[0].FrameOfReferenceUID}
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "ORGAN"]
    colours = [tuple(r.ROIDisplayColor) for r in ds.ROIContourSequence]
    assert len(set(colours)) == 2
    # Patient and study copied; Type 2 attributes the source lacks are present and empty.
    assert (ds.PatientID, ds.PatientName, ds.StudyInstanceUID) == (
        sources[0].PatientID, sources[0].PatientName, sources[0].StudyInstanceUID)
    assert "StudyDate" in ds and ds.StudyDate == "" and "AccessionNumber" in ds
    assert ds.SOPInstanceUID not in source_uids and ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    study = frame.RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert frame.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert study.ReferencedSOPInstanceUID == sources[0].StudyInstanceUID
    assert series.SeriesInstanceUID == volume.series_uid
    assert [c.ReferencedSOPInstanceUID for c in series.ContourImageSequence] == source_uids
    for value, contours in contours_by_roi(ds).items():
        slices = set()
        for c in contours:
            ref = c.ContourImageSequence[0]
            k = source_uids.index(ref.ReferencedSOPInstanceUID)  # raises when not a source UID
            assert ref.ReferencedSOPClassUID == CTImageStorage
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == c.NumberOfContourPoints
            np.testing.assert_allclose(points[:, 2], float(sources[k].ImagePositionPatient[2]), atol=1e-3)
            slices.add(k)
        assert slices == set(np.flatnonzero((labels == value).any(axis=(1, 2))))


def test_patient_and_study_attributes_are_copied(tmp_path: Path) -> None:
    attributes = {"StudyDate": "20200102", "StudyTime": "101500", "StudyDescription": "Chest",
                  "PatientSex": "F", "AccessionNumber": "A17"}
    for f in synthetic.write_series(tmp_path / "ct", n=3, rows=8, cols=8):
        synthetic.edit(f, **attributes)
    volume = load_series(tmp_path / "ct")
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[1, 2:5, 2:5] = 1
    ds = pydicom.dcmread(rtstruct.write_rtstruct(labels, volume, tmp_path / "rt.dcm"))
    assert {k: ds.get(k) for k in attributes} == attributes


def test_holes_and_islands_are_separate_contours(case: tuple[Volume, np.ndarray, Path]) -> None:
    volume, _, path = case
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.files]
    per_slice: dict[tuple[int, int], int] = {}
    for value, contours in contours_by_roi(pydicom.dcmread(path)).items():
        for c in contours:
            key = (value, uids.index(c.ContourImageSequence[0].ReferencedSOPInstanceUID))
            per_slice[key] = per_slice.get(key, 0) + 1
    assert per_slice[(1, 1)] == 1 and per_slice[(1, 2)] == 3  # outer, hole, island in the hole
    assert per_slice[(2, 1)] == 1 and per_slice[(2, 3)] == 2  # block and the second island


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_round_trip_gives_back_the_labels(tmp_path: Path, orientation: str) -> None:
    volume = make_volume(tmp_path / "ct", ORIENTATIONS[orientation])
    labels = make_labels()
    path = rtstruct.write_rtstruct(labels, volume, tmp_path / "rt.dcm")
    structures = rtstruct.read_rtstruct(path, volume)
    assert list(structures) == ["Lung_R", "Lung_L"]
    back = rtstruct.labels_from_structures(structures)
    for value in (1, 2):
        assert dice(back == value, labels == value) >= MIN_DICE
    # Stronger than "within one voxel": contours never pass through a pixel centre, so it is exact.
    np.testing.assert_array_equal(back, labels)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_contour_points_lie_on_the_label_edges_in_patient_space(tmp_path: Path, orientation: str) -> None:
    """Independent of read_rtstruct: each LPS point, mapped back through the CT's own geometry, lies
    half-way between an inside and an outside pixel centre of its slice."""
    volume = make_volume(tmp_path / "ct", ORIENTATIONS[orientation])
    labels = make_labels()
    ds = pydicom.dcmread(rtstruct.write_rtstruct(labels, volume, tmp_path / "rt.dcm"))
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.files]
    inverse = np.linalg.inv(voxel_to_lps(volume))
    for value, contours in contours_by_roi(ds).items():
        padded = np.pad(labels == value, ((0, 0), (1, 1), (1, 1)))
        for c in contours:
            k = uids.index(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
            lps = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            ijk = lps @ inverse[:3, :3].T + inverse[:3, 3]
            np.testing.assert_allclose(ijk[:, 2], k, atol=1e-3)
            # Neighbouring pixel centres of a point on an edge midpoint: (floor, ceil) per axis.
            i0, j0 = np.floor(ijk[:, 0] + 1e-3).astype(int), np.floor(ijk[:, 1] + 1e-3).astype(int)
            i1, j1 = np.ceil(ijk[:, 0] - 1e-3).astype(int), np.ceil(ijk[:, 1] - 1e-3).astype(int)
            a, b = padded[k, j0 + 1, i0 + 1], padded[k, j1 + 1, i1 + 1]
            assert np.all(a != b), f"label {value} slice {k}: a point is not between inside and outside"


def test_mirroring_moves_the_contours_to_the_other_side_of_the_patient(tmp_path: Path) -> None:
    labels = make_labels()
    mean_x = {}
    for name in ("standard", "mirrored"):
        volume = make_volume(tmp_path / name, ORIENTATIONS[name])
        ds = pydicom.dcmread(rtstruct.write_rtstruct(labels, volume, tmp_path / f"{name}.dcm"))
        points = np.concatenate([np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
                                 for c in contours_by_roi(ds)[1]])
        affine = voxel_to_lps(volume)
        mean_x[name] = points[:, 0].mean() - affine[0, 3]  # relative to the first voxel's x
    # Same pixels, opposite row direction: mirrored about the first column's x.
    assert mean_x["standard"] > 0 > mean_x["mirrored"]
    assert mean_x["standard"] == pytest.approx(-mean_x["mirrored"], abs=1e-3)


def test_contours_without_image_references_go_by_position(case: tuple[Volume, np.ndarray, Path]) -> None:
    volume, labels, path = case
    ds = pydicom.dcmread(path)
    for contours in contours_by_roi(ds).values():
        for i, c in enumerate(contours):
            if i % 2:
                del c.ContourImageSequence
            else:
                c.ContourImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"  # not in this series
    ds.save_as(path)
    back = rtstruct.labels_from_structures(rtstruct.read_rtstruct(path, volume))
    np.testing.assert_array_equal(back, labels)


def test_an_empty_label_is_an_roi_without_contours(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "ct")
    labels = np.where(make_labels() == 1, 1, 0).astype(np.uint8)
    path = rtstruct.write_rtstruct(labels, volume, tmp_path / "rt.dcm")
    assert "ContourSequence" not in pydicom.dcmread(path).ROIContourSequence[1]
    structures = rtstruct.read_rtstruct(path, volume)
    assert not structures["Lung_L"].any() and np.array_equal(structures["Lung_R"], labels == 1)


def _edited(path: Path, edit: object) -> Path:
    ds = pydicom.dcmread(path)
    edit(ds)  # type: ignore[operator]
    ds.save_as(path)
    return path


def _shift_first_contour(ds: pydicom.Dataset, offset_mm: tuple[float, float, float]) -> None:
    c = ds.ROIContourSequence[0].ContourSequence[0]
    points = np.asarray(c.ContourData, dtype=float).reshape(-1, 3) + np.asarray(offset_mm)
    c.ContourData = [f"{v:.4f}" for v in points.ravel()]


def _set_frame(ds: pydicom.Dataset) -> None:
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4.5"


def test_unreadable_inputs_are_errors_naming_the_file(case: tuple[Volume, np.ndarray, Path],
                                                      tmp_path: Path) -> None:
    volume, _, path = case
    ct = Path(volume.files[0])
    with pytest.raises(ValueError, match=f"{ct.name}.*not an RT Structure Set"):
        rtstruct.read_rtstruct(ct, volume)
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM")
    with pytest.raises(ValueError, match="notes.dcm.*not a DICOM file"):
        rtstruct.read_rtstruct(text, volume)
    with pytest.raises(FileNotFoundError):
        rtstruct.read_rtstruct(tmp_path / "missing.dcm", volume)


@pytest.mark.parametrize(("edit", "message"), [
    (_set_frame, "frame of reference 1.2.3.4.5"),
    (lambda ds: _shift_first_contour(ds, (1000.0, 0.0, 0.0)), "off the image grid"),
    (lambda ds: _shift_first_contour(ds, (0.0, 0.0, 6.0)), "not on its referenced slice"),
    (lambda ds: _shift_first_contour(ds, (0.0, 0.0, 1.0)), None),  # a third of a slice: accepted
])
def test_structures_that_do_not_fit_the_ct_are_errors(case: tuple[Volume, np.ndarray, Path],
                                                      edit: object, message: str | None) -> None:
    volume, labels, path = case
    _edited(path, edit)
    if message is None:
        assert rtstruct.read_rtstruct(path, volume)["Lung_R"].any()
        return
    with pytest.raises(ValueError, match=f"rt.dcm.*{message}"):
        rtstruct.read_rtstruct(path, volume)


def test_point_contours_are_skipped_with_a_warning(case: tuple[Volume, np.ndarray, Path]) -> None:
    volume, labels, path = case

    def to_point(ds: pydicom.Dataset) -> None:
        c = ds.ROIContourSequence[1].ContourSequence[0]
        c.ContourGeometricType, c.NumberOfContourPoints, c.ContourData = "POINT", 1, c.ContourData[:3]

    _edited(path, to_point)
    with pytest.warns(rtstruct.RTStructWarning, match="POINT"):
        structures = rtstruct.read_rtstruct(path, volume)
    assert np.array_equal(structures["Lung_R"], labels == 1)
    assert structures["Lung_L"].sum() < (labels == 2).sum()


def test_repeated_roi_names_are_kept_apart(case: tuple[Volume, np.ndarray, Path]) -> None:
    volume, labels, path = case
    _edited(path, lambda ds: setattr(ds.StructureSetROISequence[1], "ROIName", "Lung_R"))
    structures = rtstruct.read_rtstruct(path, volume)
    assert list(structures) == ["Lung_R", "Lung_R (2)"]
    assert np.array_equal(structures["Lung_R (2)"], labels == 2)


def test_bad_labels_write_nothing(tmp_path: Path) -> None:
    volume = make_volume(tmp_path / "ct")
    labels = make_labels()
    labels[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"label values \[3\]"):
        rtstruct.write_rtstruct(labels, volume, tmp_path / "rt.dcm")
    with pytest.raises(ValueError, match="shape"):
        rtstruct.write_rtstruct(labels[1:], volume, tmp_path / "rt.dcm")
    assert not (tmp_path / "rt.dcm").exists()


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = make_volume(tmp_path / "ct")
    target = tmp_path / "out" / "rt.dcm"
    target.parent.mkdir()
    target.write_bytes(b"previous")

    def half_then_fail(self: FileDataset, filename: object, **kwargs: object) -> None:
        if hasattr(filename, "write"):  # an open file: lungseg.io.writing's temporary sibling
            filename.write(b"DICM partial")
        else:
            Path(str(filename)).write_bytes(b"DICM partial")
        raise OSError("disk full")

    monkeypatch.setattr(FileDataset, "save_as", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        rtstruct.write_rtstruct(make_labels(), volume, target)
    assert target.read_bytes() == b"previous" and list(target.parent.iterdir()) == [target]


def test_slice_contours_cut_pixel_corners_and_reach_the_image_edge() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[0:3, 2:6] = True  # touches the top edge
    (contour,) = rtstruct.slice_contours(mask)
    assert len(contour) == 8  # 4 sides + 4 cut corners, collinear points dropped
    assert contour[:, 1].min() == -0.5 and contour[:, 1].max() == 2.5
    assert contour[:, 0].min() == 1.5 and contour[:, 0].max() == 5.5
    np.testing.assert_array_equal(rtstruct.rasterise([contour], mask.shape), mask)


def test_rasterise_fills_by_the_even_odd_rule() -> None:
    outer = np.array([[1.5, 1.5], [8.5, 1.5], [8.5, 8.5], [1.5, 8.5]])
    inner = np.array([[3.5, 3.5], [6.5, 3.5], [6.5, 6.5], [3.5, 6.5]])
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:9, 2:9] = True
    np.testing.assert_array_equal(rtstruct.rasterise([outer], (10, 10)), expected)
    expected[4:7, 4:7] = False  # the nested contour is a hole
    np.testing.assert_array_equal(rtstruct.rasterise([outer, inner], (10, 10)), expected)
    np.testing.assert_array_equal(rtstruct.rasterise([inner, outer], (10, 10)), expected)
    # Overlapping contours: the overlap is outside (XOR), as even-odd readers do it.
    shifted = outer + [4.0, 0.0]
    both = rtstruct.rasterise([outer, shifted], (10, 12))
    single = rtstruct.rasterise([outer], (10, 12)) ^ rtstruct.rasterise([shifted], (10, 12))
    np.testing.assert_array_equal(both, single)
    assert not rtstruct.rasterise([], (4, 4)).any()
    huge = np.array([[-1e9, -1e9], [1e9, -1e9], [1e9, 1e9], [-1e9, 1e9]])  # only grid rows are visited
    assert rtstruct.rasterise([huge], (4, 4)).all()


def test_rasterise_uses_the_top_left_rule_for_centres_on_an_edge() -> None:
    """Vertices on pixel centres (rt-utils' convention): top and left edges in, bottom and right out."""
    square = np.array([[2.0, 3.0], [6.0, 3.0], [6.0, 7.0], [2.0, 7.0]])
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:7, 2:6] = True
    np.testing.assert_array_equal(rtstruct.rasterise([square], (10, 10)), expected)


def test_labels_from_structures_accepts_tg263_spellings() -> None:
    a = np.zeros((2, 3, 3), dtype=bool)
    a[0] = True
    b = np.zeros_like(a)
    b[:, 0] = True  # overlaps a on slice 0, row 0
    labels = rtstruct.labels_from_structures({"Heart": ~a, "LUNG_RIGHT": a, "Left Lung": b})
    assert labels.dtype == np.uint8
    assert np.all(labels[0] == 1)  # the overlap goes to the first name, Lung_R
    assert np.all(labels[1, 0] == 2) and not labels[1, 1:].any()
    assert rtstruct.find_structure({"lung_r": a, "Lung_L": b}, "Lung_R") == "lung_r"
    assert rtstruct.find_structure({"RightLung": a}, "Lung_R") == "RightLung"
    with pytest.raises(KeyError, match="no structure"):
        rtstruct.labels_from_structures({"Lung_R": a})
    with pytest.raises(KeyError, match="several structures"):
        rtstruct.find_structure({"Lung_R": a, "Lung_Right": a}, "Lung_R")


def _real_case() -> tuple[Path, str]:
    """The first of REAL_CASES with images and a mask; skips when none is there."""
    try:
        data = paths.data_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc).splitlines()[0] + " (see ../shared/data/lctsc12/unpack.sh)")
    for case_id in REAL_CASES:
        if paths.images_dir(data, case_id).is_dir() and paths.mask_file(data, case_id).is_file():
            return data, case_id
    pytest.skip(f"none of {REAL_CASES} is unpacked in {data}")


@pytest.mark.realdata
def test_real_case_split_lungs_round_trip(tmp_path: Path) -> None:
    data, case_id = _real_case()
    volume = load_series(paths.images_dir(data, case_id))
    labels = sides.split_lungs(load_mask(paths.mask_file(data, case_id), volume), volume)
    path = rtstruct.write_rtstruct(labels, volume, tmp_path / f"{case_id}_rtstruct.dcm")
    ds = pydicom.dcmread(path)
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.files}
    refs = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
            for contours in contours_by_roi(ds).values() for c in contours}
    assert refs <= uids and [r.ROIName for r in ds.StructureSetROISequence] == ["Lung_R", "Lung_L"]
    back = rtstruct.labels_from_structures(rtstruct.read_rtstruct(path, volume))
    for value in (sides.RIGHT, sides.LEFT):
        written, read = labels == value, back == value
        assert dice(read, written) >= MIN_DICE, f"{case_id} label {value}"
        assert not np.any((read != written) & ~boundary_band(written)), f"{case_id} label {value}"
