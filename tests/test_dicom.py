"""lungseg.io.dicom, lungseg.paths and lungseg.io.cache on small synthetic series (see synthetic.py)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid
from synthetic import (
    DEFAULT_INTERCEPT,
    DEFAULT_PIXEL_SPACING,
    DEFAULT_Z0,
    edit,
    expected_hu,
    lung_mask,
    stored_slice,
    write_case,
    write_mask,
    write_series,
)

from lungseg import paths
from lungseg.io import cache
from lungseg.io.dicom import DicomSeriesError, DicomWarning, load_series
from lungseg.io.masks import MaskError, load_mask

N = 5
DZ = 3.0
CASE = "Case_900"
MTIME_BUMP_NS = 5_000_000_000  # 5 s: a changed file gets a clearly different mtime
CHANGED_STORED = 3000


def _expected_volume(indices: list[int], **kwargs: float) -> np.ndarray:
    return np.stack([expected_hu(i, **kwargs) for i in indices])


def _last_by_name(files: list[Path]) -> Path:
    """A file that is not the first one read, so a consistency error names it (not the reference)."""
    return max(files, key=lambda p: p.name)


# --------------------------------------------------------------------------- sorting and HU
def test_shuffled_names_come_out_in_position_order(tmp_path: Path) -> None:
    files = write_series(tmp_path / "Case_1", n=N, dz=DZ, shuffle=True)
    assert [p.name for p in files] != sorted(p.name for p in files)
    vol = load_series(tmp_path / "Case_1")
    assert vol.files == tuple(str(p) for p in files)
    assert vol.filename_order_differs
    assert vol.sort_key == "ImagePositionPatient"
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, _expected_volume(list(range(N))))
    assert vol.spacing == (DZ, *DEFAULT_PIXEL_SPACING)
    np.testing.assert_allclose(vol.positions, DEFAULT_Z0 + DZ * np.arange(N))
    assert vol.origin == (-100.0, -90.0, DEFAULT_Z0)
    assert vol.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert vol.case_id == "Case_1"
    assert vol.slice_thickness == DZ
    assert vol.shape == (N, 16, 16)


def test_names_in_slice_order_do_not_differ(tmp_path: Path) -> None:
    write_series(tmp_path, n=N, shuffle=False)
    assert not load_series(tmp_path).filename_order_differs


def test_reversed_positions_are_sorted_ascending(tmp_path: Path) -> None:
    files = write_series(tmp_path, n=N, dz=-DZ, shuffle=False)  # slice i at z0 - 3 i
    vol = load_series(tmp_path)
    assert vol.files == tuple(str(p) for p in reversed(files))
    np.testing.assert_array_equal(vol.hu, _expected_volume(list(range(N - 1, -1, -1))))
    assert vol.spacing[0] == pytest.approx(DZ)
    assert np.all(np.diff(vol.positions) > 0)
    assert not vol.filename_order_differs  # names in exact reverse order still follow the slices


def test_missing_rescale_tags_mean_hu_equals_stored(tmp_path: Path) -> None:
    write_series(tmp_path, n=3, rescale=False)
    vol = load_series(tmp_path)
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu, np.stack([stored_slice(i) for i in range(3)]))


def test_unsigned_storage_gives_the_same_hu(tmp_path: Path) -> None:
    write_series(tmp_path, n=3, signed=False)
    np.testing.assert_array_equal(load_series(tmp_path).hu, _expected_volume([0, 1, 2]))


def test_non_integral_slope_gives_float32(tmp_path: Path) -> None:
    slope, intercept = 0.5, -1000.25
    write_series(tmp_path, n=3, slope=slope, intercept=intercept)
    vol = load_series(tmp_path)
    assert vol.hu.dtype == np.float32
    np.testing.assert_allclose(vol.hu, _expected_volume([0, 1, 2], slope=slope,
                                                        intercept=intercept), rtol=0, atol=1e-3)


def test_hu_beyond_int16_falls_back_to_float32(tmp_path: Path) -> None:
    write_series(tmp_path, n=2, slope=40.0, intercept=DEFAULT_INTERCEPT)  # ~1024*40 > 32767
    vol = load_series(tmp_path)
    assert vol.hu.dtype == np.float32
    np.testing.assert_allclose(vol.hu, _expected_volume([0, 1], slope=40.0))


def test_rle_lossless_series_decodes_to_the_same_hu(tmp_path: Path) -> None:
    try:
        files = write_series(tmp_path / "rle", n=3, compress=True)
    except (RuntimeError, NotImplementedError) as exc:  # no encoder available
        pytest.skip(f"cannot encode RLE Lossless here: {exc}")
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == RLELossless
    write_series(tmp_path / "plain", n=3)
    np.testing.assert_array_equal(load_series(tmp_path / "rle").hu,
                                  load_series(tmp_path / "plain").hu)


def test_single_slice_takes_dz_from_slice_thickness(tmp_path: Path) -> None:
    write_series(tmp_path, n=1, dz=2.5)
    vol = load_series(tmp_path)
    assert vol.shape == (1, 16, 16) and vol.spacing[0] == 2.5


# --------------------------------------------------------------------------- series errors
def test_mixed_series_picks_the_largest_ct_series_and_says_so(tmp_path: Path) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(tmp_path, n=3, series_uid=uid_a, names=["a1.dcm", "a2.dcm", "a3.dcm"])
    write_series(tmp_path, n=2, series_uid=uid_b, names=["b1.dcm", "b2.dcm"], z0=50.0)
    with pytest.warns(DicomWarning, match="--series") as record:
        vol = load_series(tmp_path)
    assert vol.series_uid == uid_a and vol.shape == (3, 16, 16)
    message = str(record[0].message)
    assert uid_a in message and uid_b in message and "CT axial, 2 slices" in message
    vol = load_series(tmp_path, series_uid=uid_b)
    assert vol.series_uid == uid_b and vol.shape == (2, 16, 16)
    assert [Path(f).name for f in vol.files] == ["b1.dcm", "b2.dcm"]
    with pytest.raises(DicomSeriesError, match="no slice of series"):
        load_series(tmp_path, series_uid=generate_uid())


def test_two_equally_large_series_are_an_error_listing_both(tmp_path: Path) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(tmp_path, n=2, series_uid=uid_a, names=["a1.dcm", "a2.dcm"])
    write_series(tmp_path, n=2, series_uid=uid_b, names=["b1.dcm", "b2.dcm"], z0=50.0)
    with pytest.raises(DicomSeriesError, match="--series UID") as err:
        load_series(tmp_path)
    assert uid_a in str(err.value) and uid_b in str(err.value)


def test_a_localizer_is_never_picked(tmp_path: Path) -> None:
    uid_ct, uid_scout = generate_uid(), generate_uid()
    # the scout holds more images than the CT (3, series.MIN_SLICES): only its ImageType rules it out
    write_series(tmp_path, n=3, series_uid=uid_ct, names=["a1.dcm", "a2.dcm", "a3.dcm"])
    scouts = write_series(tmp_path, n=4, series_uid=uid_scout, names=[f"s{i}.dcm" for i in range(4)], z0=80.0)
    for p in scouts:
        edit(p, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.warns(DicomWarning, match="LOCALIZER"):
        assert load_series(tmp_path).series_uid == uid_ct


def test_duplicate_position_names_both_files(tmp_path: Path) -> None:
    files = write_series(tmp_path, n=N, shuffle=False)
    dup = shutil.copy(files[2], tmp_path / "copy.dcm")
    with pytest.raises(DicomSeriesError, match="duplicate slice position") as err:
        load_series(tmp_path)
    assert files[2].name in str(err.value) and Path(dup).name in str(err.value)


def test_missing_middle_slice_is_a_gap(tmp_path: Path) -> None:
    files = write_series(tmp_path, n=6)
    files[3].unlink()
    with pytest.raises(DicomSeriesError, match="gap"):
        load_series(tmp_path)


def test_gap_in_a_short_series_blames_the_right_files(tmp_path: Path) -> None:
    files = write_series(tmp_path, n=4)
    files[2].unlink()  # steps 3, 6: an even count, where a plain median would give 4.5
    with pytest.raises(DicomSeriesError,
                       match=f"gap.*between {files[1].name} and {files[3].name}"):
        load_series(tmp_path)


def test_uneven_spacing_is_an_error(tmp_path: Path) -> None:
    files = write_series(tmp_path, n=N)
    edit(files[2], ImagePositionPatient=[-100.0, -90.0, DEFAULT_Z0 + 2 * DZ - 1.0])
    with pytest.raises(DicomSeriesError, match="uneven spacing"):
        load_series(tmp_path)


@pytest.mark.parametrize("size", [16, 64], ids=["cut-in-header", "cut-in-pixels"])
def test_truncated_file_is_named(tmp_path: Path, size: int) -> None:
    files = write_series(tmp_path, n=N, rows=size, cols=size)
    victim = files[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomSeriesError, match=victim.name):
        load_series(tmp_path)


def test_non_dicom_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    write_series(tmp_path, n=3)
    (tmp_path / "README.txt").write_text("not an image\n")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(100))  # hidden: not even looked at
    with pytest.warns(DicomWarning) as record:
        vol = load_series(tmp_path)
    messages = " ".join(str(w.message) for w in record)
    assert "README.txt" in messages and ".DS_Store" not in messages
    np.testing.assert_array_equal(vol.hu, _expected_volume([0, 1, 2]))


def test_dcm_that_is_not_dicom_is_an_error(tmp_path: Path) -> None:
    write_series(tmp_path, n=3)
    (tmp_path / "broken.dcm").write_text("hello")
    with pytest.raises(DicomSeriesError, match="broken.dcm"):
        load_series(tmp_path)


def test_empty_folder_has_no_dicom_image(tmp_path: Path) -> None:
    with pytest.raises(DicomSeriesError, match="no DICOM image"):
        load_series(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.warns(DicomWarning, match="notes.txt"), \
            pytest.raises(DicomSeriesError, match="no DICOM image"):
        load_series(tmp_path)


def test_missing_folder_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_series(tmp_path / "nowhere")


def test_inconsistent_rows_columns_names_the_file(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path, n=3, series_uid=uid, names=["1.dcm", "2.dcm", "3.dcm"])
    write_series(tmp_path, n=1, rows=8, cols=8, series_uid=uid, first_index=3, names=["4.dcm"])
    with pytest.raises(DicomSeriesError, match=r"4\.dcm: Rows/Columns \(8, 8\)"):
        load_series(tmp_path)


@pytest.mark.parametrize("keyword, value", [
    ("PixelSpacing", [0.5, 0.5]),
    ("ImageOrientationPatient", [0, 1, 0, 0, 0, -1]),
])
def test_inconsistent_geometry_names_the_file(tmp_path: Path, keyword: str, value: list) -> None:
    odd = _last_by_name(write_series(tmp_path, n=N))
    edit(odd, **{keyword: value})
    with pytest.raises(DicomSeriesError, match=f"{odd.name}: {keyword}"):
        load_series(tmp_path)


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_is_an_error_naming_file_and_tag(tmp_path: Path, keyword: str) -> None:
    files = write_series(tmp_path, n=N)
    edit(files[2], **{keyword: None})
    with pytest.raises(DicomSeriesError, match=rf"{re.escape(str(files[2]))}: {keyword} is missing"):
        load_series(tmp_path)


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int64])
def test_mask_dtypes_load_as_bool(tmp_path: Path, dtype: type) -> None:
    mask = lung_mask(3).astype(dtype)
    out = load_mask(write_mask(tmp_path / "m.npz", mask))
    assert out.dtype == bool
    np.testing.assert_array_equal(out, mask.astype(bool))


def test_mask_matching_its_volume(tmp_path: Path) -> None:
    vol = load_series(write_series(tmp_path / "Case_1", n=3)[0].parent)
    out = load_mask(write_mask(tmp_path / "m.npz", lung_mask(3)), vol)
    assert out.shape == vol.shape


def test_mask_missing_key_lists_keys(tmp_path: Path) -> None:
    path = write_mask(tmp_path / "m.npz", lung_mask(3), key="labels")
    with pytest.raises(MaskError, match="'masks'.*labels"):
        load_mask(path)


def test_mask_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    vol = load_series(write_series(tmp_path / "Case_1", n=3)[0].parent)
    path = write_mask(tmp_path / "m.npz", lung_mask(4))
    with pytest.raises(MaskError, match=r"\(4, 16, 16\).*\(3, 16, 16\)"):
        load_mask(path, vol)


@pytest.mark.parametrize("bad, message", [
    (np.where(lung_mask(2) > 0, np.nan, 0.0), "NaN"),
    (lung_mask(2) * 2, "not binary"),
    (lung_mask(2)[0], "expected"),
])
def test_bad_mask_values(tmp_path: Path, bad: np.ndarray, message: str) -> None:
    with pytest.raises(MaskError, match=message):
        load_mask(write_mask(tmp_path / "m.npz", bad))


def test_not_an_npz_is_a_mask_error(tmp_path: Path) -> None:
    (tmp_path / "m.npz").write_text("not a zip")
    with pytest.raises(MaskError, match="not a readable"):
        load_mask(tmp_path / "m.npz")


def test_missing_mask_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_mask(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- paths
def test_data_dir_missing_explains_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Images/Case_XXX/\*\.dcm"):
        paths.data_dir(tmp_path / "absent")


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    assert paths.data_dir() == tmp_path
    assert paths.data_dir("") == tmp_path  # an empty notebook parameter means "the default"


# --------------------------------------------------------------------------- cache
def _sha256(files: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def data_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Path], Path]:
    """A DATA tree with one shuffled synthetic case, and the cache redirected into tmp_path."""
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    files, mask = write_case(tmp_path / "DATA", CASE, n=N)
    return tmp_path / "DATA", files, mask


def test_cache_returns_memmaps_equal_to_the_direct_load(
        data_tree: tuple[Path, list[Path], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, files, mask_path = data_tree
    before = _sha256([*files, mask_path])
    assert not cache.is_cached(CASE, data) and not cache.is_cached("Case_999", data)
    case = cache.load_case(CASE, data)
    assert cache.is_cached(CASE, data)
    assert paths.cache_dir() == data.parent / "cache"
    assert len(list((paths.cache_dir() / CASE).iterdir())) == 1
    direct = load_series(paths.images_dir(data, CASE))
    got = case.volume
    assert isinstance(got.hu, np.memmap)
    assert isinstance(case.mask, np.memmap) and case.mask.dtype == bool
    assert got.hu.dtype == direct.hu.dtype
    np.testing.assert_array_equal(got.hu, direct.hu)
    np.testing.assert_array_equal(case.mask, load_mask(mask_path, direct))
    np.testing.assert_array_equal(got.positions, direct.positions)
    for field in ("spacing", "origin", "files", "case_id", "series_uid", "orientation",
                  "sort_key", "slice_thickness"):
        assert getattr(got, field) == getattr(direct, field), field
    assert got.filename_order_differs and case.case_id == CASE
    # A hit does not convert again.
    monkeypatch.setattr(cache.dicom, "load_series", _fail)
    np.testing.assert_array_equal(cache.load_case(CASE, data).volume.hu, direct.hu)
    assert _sha256([*files, mask_path]) == before


def _fail(*args: object, **kwargs: object) -> None:
    raise AssertionError("the cache should not have converted again")


def test_changed_source_invalidates_the_entry(data_tree: tuple[Path, list[Path], Path]) -> None:
    data, files, mask_path = data_tree
    old_entry = paths.cache_dir() / CASE / cache.case_key(paths.images_dir(data, CASE), mask_path)
    assert cache.load_case(CASE, data).volume.hu[2, 0, 0] == expected_hu(2)[0, 0]
    assert old_entry.is_dir()
    # Rewrite slice 2 with new values (same size) and a clearly different mtime.
    ds = pydicom.dcmread(files[2])
    ds.PixelData = np.full((16, 16), CHANGED_STORED, dtype="<i2").tobytes()
    ds.save_as(files[2], enforce_file_format=True)
    st = files[2].stat()
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + MTIME_BUMP_NS))
    before = _sha256([*files, mask_path])
    mtimes = {p: p.stat().st_mtime_ns for p in [*files, mask_path]}
    case = cache.load_case(CASE, data)
    assert np.all(case.volume.hu[2] == CHANGED_STORED + DEFAULT_INTERCEPT)
    assert np.all(case.volume.hu[1] == expected_hu(1))
    assert not old_entry.exists()  # the stale entry is gone, one entry per case
    assert len(list((paths.cache_dir() / CASE).iterdir())) == 1
    assert _sha256([*files, mask_path]) == before  # the sources are only read
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_touching_a_file_invalidates_and_refresh_reconverts(
        data_tree: tuple[Path, list[Path], Path]) -> None:
    data, files, mask_path = data_tree
    cache.load_case(CASE, data)
    key = cache.case_key(paths.images_dir(data, CASE), mask_path)
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + MTIME_BUMP_NS))
    assert cache.case_key(paths.images_dir(data, CASE), mask_path) != key
    case = cache.load_case(CASE, data, refresh=True)
    np.testing.assert_array_equal(case.mask, lung_mask(N).astype(bool))


def test_cache_missing_mask_is_file_not_found(data_tree: tuple[Path, list[Path], Path]) -> None:
    data, _, mask_path = data_tree
    mask_path.unlink()
    with pytest.raises(FileNotFoundError, match="Segmentations"):
        cache.load_case(CASE, data)


def test_cache_inside_the_data_directory_is_refused(
        data_tree: tuple[Path, list[Path], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data = data_tree[0]
    monkeypatch.setenv(paths.CACHE_ENV, str(data / "cache"))
    with pytest.raises(ValueError, match="must not be inside the data directory"):
        cache.load_case(CASE, data)
    assert not (data / "cache").exists()


def test_resolve_cases(data_tree: tuple[Path, list[Path], Path]) -> None:
    data = data_tree[0]
    assert cache.resolve_cases("all", data) == [CASE]
    assert cache.resolve_cases(f" {CASE}, ", data) == [CASE]
    with pytest.raises(FileNotFoundError, match="Case_999"):
        cache.resolve_cases("Case_999", data)


def test_a_sheared_series_is_refused(tmp_path: Path) -> None:
    files = write_series(tmp_path, n=N, shuffle=False)
    for i, f in enumerate(files):  # x drifts 0.5 mm per slice: a tilted gantry
        edit(f, ImagePositionPatient=[-100.0 + 0.5 * i, -90.0, DEFAULT_Z0 + i * DZ])
    with pytest.raises(DicomSeriesError, match=r"shifts 0\.500 mm in-plane.*not supported"):
        load_series(tmp_path)


def test_the_same_mask_copied_anew_keeps_the_key_and_other_bytes_change_it(
        data_tree: tuple[Path, list[Path], Path]) -> None:
    """unpack.sh copies every mask anew on each call: a new mtime, the same bytes, the same entry
    (and so the same trained runs); a mask with other bytes is another entry."""
    data, files, mask_path = data_tree
    key = cache.case_key(paths.images_dir(data, CASE), mask_path)
    st = mask_path.stat()
    os.utime(mask_path, ns=(st.st_atime_ns, st.st_mtime_ns + MTIME_BUMP_NS))
    assert cache.case_key(paths.images_dir(data, CASE), mask_path) == key
    other = data / "other_seg.npz"
    np.savez_compressed(other, mask=np.zeros((N, 16, 16), dtype=np.uint8))
    assert cache.case_key(paths.images_dir(data, CASE), other) != key
