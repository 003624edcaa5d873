"""Robustness corpus: bad inputs give a named error (or a correct result), never partial output.

Each kind of bad input is checked for three things:

(a) a named, actionable error: the exception type and a message naming the offending file or
    folder and the problem, or, where the input is only unusual, the correct result;
(b) no partial output: a failed conversion leaves no cache entry (nor a ``.tmp-`` folder), a failed
    anonymisation no copy folder or ``.part`` file, an interrupted training run a valid checkpoint,
    no ``model.pt`` and no ``.tmp`` file;
(c) the inputs unchanged: the sha256 of every input file is the same before and after.

Every kind listed here is handled; a new weakness found later should be added as a kind with
``pytest.mark.xfail(strict=True)`` and the exact behaviour observed until it is fixed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless, generate_uid
from synthetic import (
    edit,
    expected_hu,
    lung_mask,
    stored_slice,
    write_case,
    write_mask,
    write_series,
)

from lungseg import paths
from lungseg.io import anonymise, cache, writing
from lungseg.io.dicom import DicomSeriesError, DicomWarning
from lungseg.io.masks import MaskError
from lungseg.network import data, model, runs
from lungseg.train import loop

CASE = "Case_900"
N = 5
SIZE = 16
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) in little endian
MEDIA_SOP_INSTANCE_TAG = b"\x02\x00\x03\x00"  # (0002,0003), in the file meta information
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
HALF_WRITTEN = (".part", ".tmp")


# --------------------------------------------------------------------------- helpers
def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (relative path -> digest); {} when ``root`` is absent."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _entries(root: Path) -> list[str]:
    """Every file and folder below ``root`` (relative paths, hidden ones included)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _half_written(root: Path) -> list[str]:
    """Files or folders below ``root`` that look like an unfinished write."""
    return [e for e in _entries(root)
            if Path(e).name.startswith(".tmp") or Path(e).suffix in HALF_WRITTEN]


def _images(data_root: Path) -> Path:
    return paths.images_dir(data_root, CASE)


def _mask_path(data_root: Path) -> Path:
    return paths.mask_file(data_root, CASE)


def _expected(indices: range | list[int], rows: int = SIZE, cols: int = SIZE) -> np.ndarray:
    return np.stack([expected_hu(i, rows, cols) for i in indices])


def _cut(path: Path, where: str) -> None:
    """Truncate a DICOM file inside its file meta information, its header or its pixel data."""
    raw = path.read_bytes()
    pixel_tag, sop_instance_tag = raw.rfind(PIXEL_DATA_TAG), raw.find(MEDIA_SOP_INSTANCE_TAG)
    assert 0 < sop_instance_tag < pixel_tag, path
    keep = {"meta": sop_instance_tag, "header": pixel_tag // 2, "pixels": len(raw) - 100}[where]
    path.write_bytes(raw[:keep])


def _non_image_dicom(path: Path, modality: str = "RTSTRUCT") -> Path:
    """A small DICOM object without pixel data (an RT structure set header)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StructureSetLabel = modality, generate_uid(), "LUNGS"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _rewrite_each(files: list[Path], change: Callable[[Path, pydicom.Dataset], None]) -> None:
    for path in files:
        change(path, pydicom.dcmread(path))


# --------------------------------------------------------------------------- the corpus
@dataclass(frozen=True)
class Expect:
    """What ``cache.load_case(CASE, data)`` must do with a kind of bad input."""

    error: type[BaseException] | None = None
    match: str = ""
    """Regex the error message must match (it names the file or folder and the problem)."""
    warns: str | None = None
    """Regex of a DicomWarning that must be issued (skipped file, fallback used)."""
    hu: np.ndarray | None = None
    """Expected volume when the input must give a correct result."""
    mask: np.ndarray | None = None


def _correct(n: int = N, **kw: object) -> Expect:
    return Expect(hu=_expected(range(n)), mask=lung_mask(n).astype(bool), **kw)  # type: ignore[arg-type]


def _case(d: Path, n: int = N, **kw: object) -> list[Path]:
    """The default DATA tree (``n`` shuffled 16x16 slices, a matching mask); slice-index order."""
    return write_case(d, CASE, n=n, **kw)[0]


def truncated_file_meta(d: Path) -> Expect:
    victim = _case(d)[2]
    _cut(victim, "meta")
    return Expect(DicomSeriesError, rf"{re.escape(str(victim))}: .*(truncated|damaged)")


def truncated_header(d: Path) -> Expect:
    victim = _case(d)[2]
    _cut(victim, "header")
    return Expect(DicomSeriesError, rf"{re.escape(str(victim))}: .*(truncated|damaged)")


def truncated_pixel_data(d: Path) -> Expect:
    victim = _case(d)[2]
    _cut(victim, "pixels")
    return Expect(DicomSeriesError, rf"{re.escape(str(victim))}: truncated pixel data")


def non_dicom_among_slices(d: Path) -> Expect:
    _case(d)
    (_images(d) / "README.txt").write_text("scanner notes\n")
    return _correct(warns="skipping non-DICOM file .*README.txt")


def dcm_file_that_is_not_dicom(d: Path) -> Expect:
    _case(d)
    bad = _images(d) / "notes.dcm"
    bad.write_text("this is not DICOM")
    return Expect(DicomSeriesError, rf"{re.escape(str(bad))}: named like a DICOM file but not DICOM")


def zero_byte_dcm(d: Path) -> Expect:
    _case(d)
    bad = _images(d) / "empty.dcm"
    bad.write_bytes(b"")
    return Expect(DicomSeriesError, rf"{re.escape(str(bad))}: named like a DICOM file but not DICOM")


def empty_folder(d: Path) -> Expect:
    _case(d)
    shutil.rmtree(_images(d))
    _images(d).mkdir()
    return Expect(DicomSeriesError, rf"{re.escape(str(_images(d)))}: no DICOM image .*0 files")


def two_series_mixed(d: Path) -> Expect:
    uid_a, uid_b = generate_uid(), generate_uid()
    _case(d, series_uid=uid_a)
    write_series(_images(d), n=N, series_uid=uid_b, names=[f"b{i}.dcm" for i in range(N)], z0=50.0)
    return Expect(DicomSeriesError,
                  rf"{re.escape(str(_images(d)))}: more than one series and no single best CT series .*: "
                  rf".*{re.escape(uid_a)}: CT axial, {N} slices.*; choose one with --series UID")


def duplicate_slice(d: Path) -> Expect:
    files = _case(d)
    dup = Path(shutil.copy(files[2], _images(d) / "copy.dcm"))
    first, second = sorted([files[2], dup], key=lambda p: p.name)
    return Expect(DicomSeriesError,
                  rf"duplicate slice position -114\.000 mm: ({re.escape(str(first))} and "
                  rf"{re.escape(str(second))}|{re.escape(str(second))} and {re.escape(str(first))})")


def missing_slice_gap(d: Path) -> Expect:
    files = _case(d, n=6)
    files[3].unlink()
    return Expect(DicomSeriesError,
                  rf"gap \(missing slice\?\): 6\.000 mm between {files[2].name} and {files[4].name} "
                  rf"in {re.escape(str(_images(d)))}")


def uneven_spacing(d: Path) -> Expect:
    files = _case(d)
    edit(files[2], ImagePositionPatient=[-100.0, -90.0, -120.0 + 2 * 3.0 - 1.0])
    return Expect(DicomSeriesError, rf"uneven spacing: .* {files[1].name} and {files[2].name} "
                                    rf"in {re.escape(str(_images(d)))}")


def _odd_one(d: Path) -> Path:
    """The slice read last (largest name), so a consistency error blames it, not the reference."""
    return max(_case(d), key=lambda p: p.name)


def rows_columns_differ(d: Path) -> Expect:
    files = _case(d, names=[f"{k}.dcm" for k in range(1, N + 1)], shuffle=False)
    write_series(_images(d), n=1, rows=8, cols=8, series_uid=pydicom.dcmread(files[0]).SeriesInstanceUID,
                 first_index=N, names=["9.dcm"])
    odd = _images(d) / "9.dcm"
    return Expect(DicomSeriesError, rf"{re.escape(str(odd))}: Rows/Columns \(8, 8\) differ from \(16, 16\)")


def pixel_spacing_differs(d: Path) -> Expect:
    odd = _odd_one(d)
    edit(odd, PixelSpacing=[0.5, 0.5])
    return Expect(DicomSeriesError, rf"{re.escape(str(odd))}: PixelSpacing \(0\.5, 0\.5\) differs")


def orientation_differs(d: Path) -> Expect:
    odd = _odd_one(d)
    edit(odd, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    return Expect(DicomSeriesError, rf"{re.escape(str(odd))}: ImageOrientationPatient .* differs")


def missing_rescale_tags(d: Path) -> Expect:
    _case(d, rescale=False)
    return Expect(hu=np.stack([stored_slice(i) for i in range(N)]), mask=lung_mask(N).astype(bool))


def rle_lossless(d: Path) -> Expect:
    try:
        files = _case(d, compress=True)
    except (RuntimeError, NotImplementedError) as exc:  # no encoder available
        pytest.skip(f"cannot encode RLE Lossless here: {exc}")
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == RLELossless
    return _correct()


def big_endian_retired_syntax(d: Path) -> Expect:
    def to_big_endian(path: Path, ds: pydicom.Dataset) -> None:
        pixels = ds.pixel_array
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        ds.PixelData = pixels.astype(">i2").tobytes()
        pydicom.dcmwrite(path, ds, little_endian=False, implicit_vr=False, enforce_file_format=True)

    _rewrite_each(_case(d), to_big_endian)
    return _correct()


def implicit_vr(d: Path) -> Expect:
    def to_implicit(path: Path, ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)

    _rewrite_each(_case(d), to_implicit)
    return _correct()


def rtstruct_among_slices(d: Path) -> Expect:
    _case(d)
    _non_image_dicom(_images(d) / "RS.dcm")
    return _correct(warns=r"skipping .*RS\.dcm: DICOM without pixel data \(RTSTRUCT")


def only_non_image_dicom(d: Path) -> Expect:
    _case(d)
    shutil.rmtree(_images(d))
    _non_image_dicom(_images(d) / "RS.dcm")
    _non_image_dicom(_images(d) / "RP.dcm", modality="RTPLAN")
    return Expect(DicomSeriesError, rf"{re.escape(str(_images(d)))}: no DICOM image in the folder "
                                    r"\(2 files\)", warns=r"(RP|RS)\.dcm: DICOM without pixel data")


def image_without_pixel_data(d: Path) -> Expect:
    victim = _case(d)[1]
    edit(victim, PixelData=None)
    return Expect(DicomSeriesError, rf"{re.escape(str(victim))}: image file without pixel data")


def damaged_header_value(d: Path) -> Expect:
    victim = _case(d)[1]
    raw = victim.read_bytes()
    assert raw.count(b"0.75\\0.8") == 1
    victim.write_bytes(raw.replace(b"0.75\\0.8", b"ab.c\\0.8"))  # PixelSpacing, same length
    return Expect(DicomSeriesError,
                  rf"{re.escape(str(victim))}: PixelSpacing \['ab\.c', '0\.8'\] is not numeric")


def one_slice_without_position(d: Path) -> Expect:
    files = _case(d)
    edit(files[1], ImagePositionPatient=None)
    return Expect(DicomSeriesError, rf"{re.escape(str(files[1]))}: ImagePositionPatient is missing")


def mask_wrong_shape(d: Path) -> Expect:
    _case(d)
    write_mask(_mask_path(d), lung_mask(N + 1))
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: mask shape \(6, 16, 16\) does not "
                             rf"match the image volume \(5, 16, 16\) of {CASE}")


def mask_wrong_key(d: Path) -> Expect:
    _case(d)
    write_mask(_mask_path(d), lung_mask(N), key="labels")
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: no array 'masks' \(keys: \['labels'\]\)")


def mask_with_nan(d: Path) -> Expect:
    _case(d)
    write_mask(_mask_path(d), np.where(lung_mask(N) > 0, np.nan, 0.0))
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: 'masks' contains NaN")


def mask_not_binary(d: Path) -> Expect:
    _case(d)
    write_mask(_mask_path(d), lung_mask(N) * 2)
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: 'masks' is not binary \(values \[0, 2\]")


def mask_2d(d: Path) -> Expect:
    _case(d)
    write_mask(_mask_path(d), lung_mask(N)[0])
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: 'masks' has shape \(16, 16\), "
                             r"expected \(z, y, x\)")


def mask_object_array(d: Path) -> Expect:
    _case(d)
    np.savez(_mask_path(d), masks=np.array([None, 1], dtype=object))
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: not a readable \.npz file")


def mask_not_npz(d: Path) -> Expect:
    _case(d)
    _mask_path(d).write_text("not a zip archive")
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: not a readable \.npz file")


def mask_truncated_npz(d: Path) -> Expect:
    _case(d)
    raw = _mask_path(d).read_bytes()
    _mask_path(d).write_bytes(raw[: len(raw) // 2])
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: not a readable \.npz file")


def mask_zero_bytes(d: Path) -> Expect:
    _case(d)
    _mask_path(d).write_bytes(b"")
    return Expect(MaskError, rf"{re.escape(str(_mask_path(d)))}: not a readable \.npz file")


def missing_segmentations_folder(d: Path) -> Expect:
    _case(d)
    shutil.rmtree(d / "Segmentations")
    return Expect(FileNotFoundError, rf"no mask for {CASE}: {re.escape(str(_mask_path(d)))} "
                                     r"\(expected DATA/Segmentations/Case_XXX_seg\.npz\)")


def missing_mask_file(d: Path) -> Expect:
    _case(d)
    _mask_path(d).rename(d / "Segmentations" / "Case_901_seg.npz")
    return Expect(FileNotFoundError, rf"no mask for {CASE}: {re.escape(str(_mask_path(d)))}")


def missing_case_folder(d: Path) -> Expect:
    _case(d)
    shutil.rmtree(_images(d))
    return Expect(FileNotFoundError, rf"no DICOM folder for {CASE}: {re.escape(str(_images(d)))}")


def data_dir_absent(d: Path) -> Expect:
    return Expect(FileNotFoundError, rf"data directory not found: {re.escape(str(d))}\n"
                                     r"Expected DATA/Images/Case_XXX/\*\.dcm")


def nan_slice_position(d: Path) -> Expect:
    files = _case(d, n=4, shuffle=False)
    raw = files[1].read_bytes()
    assert raw.count(b"-90.0\\-117.0") == 1
    files[1].write_bytes(raw.replace(b"-90.0\\-117.0", b"-90.0\\nan   "))
    return Expect(DicomSeriesError, rf"{re.escape(str(files[1]))}: .*ImagePositionPatient")


def colour_slice_in_series(d: Path) -> Expect:
    victim = _odd_one(d)
    ds = pydicom.dcmread(victim)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((SIZE, SIZE, 3), np.uint8).tobytes()
    ds.save_as(victim, enforce_file_format=True)
    return Expect(DicomSeriesError, rf"{re.escape(str(victim))}: .*(SamplesPerPixel|RGB|colour)")


def multi_frame_file(d: Path) -> Expect:
    """An Enhanced CT: one file, 4 frames, geometry in per-frame groups (none at the top level)."""
    _case(d, n=4)
    shutil.rmtree(_images(d))
    victim = write_series(_images(d), n=1, names=["enhanced.dcm"])[0]
    ds = pydicom.dcmread(victim)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_STORAGE
    ds.NumberOfFrames = 4
    ds.PixelData = np.concatenate([stored_slice(i) for i in range(4)]).astype("<i2").tobytes()
    for keyword in ("ImagePositionPatient", "SliceLocation"):
        delattr(ds, keyword)
    ds.save_as(victim, enforce_file_format=True)
    return Expect(DicomSeriesError, rf"{re.escape(str(victim))}: .*(multi-frame|NumberOfFrames)")


KINDS = [
    truncated_file_meta,
    truncated_header,
    truncated_pixel_data,
    non_dicom_among_slices,
    dcm_file_that_is_not_dicom,
    zero_byte_dcm,
    empty_folder,
    two_series_mixed,
    duplicate_slice,
    missing_slice_gap,
    uneven_spacing,
    rows_columns_differ,
    pixel_spacing_differs,
    orientation_differs,
    missing_rescale_tags,
    rle_lossless,
    big_endian_retired_syntax,
    implicit_vr,
    rtstruct_among_slices,
    only_non_image_dicom,
    image_without_pixel_data,
    damaged_header_value,
    one_slice_without_position,
    mask_wrong_shape,
    mask_wrong_key,
    mask_with_nan,
    mask_not_binary,
    mask_2d,
    mask_object_array,
    mask_not_npz,
    mask_truncated_npz,
    missing_segmentations_folder,
    missing_mask_file,
    missing_case_folder,
    data_dir_absent,
    mask_zero_bytes,
    nan_slice_position,
    colour_slice_in_series,
    multi_frame_file,
]


def _kind_id(kind: object) -> str:
    return kind.__name__.replace("_", "-") if callable(kind) else str(kind)


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(paths.CACHE_ENV, str(root))
    return root


@contextlib.contextmanager
def _dicom_warning(pattern: str | None) -> Iterator[None]:
    """Expect a DicomWarning matching ``pattern``; with None any DicomWarning fails (pyproject)."""
    if pattern is None:
        yield
    else:
        with pytest.warns(DicomWarning, match=pattern):
            yield


@pytest.mark.parametrize("build", KINDS, ids=_kind_id)
def test_load_case(build: Callable[[Path], Expect], tmp_path: Path, cache_root: Path) -> None:
    data_root = tmp_path / "DATA"
    expect = build(data_root)
    before = _digests(data_root)
    with _dicom_warning(expect.warns):
        if expect.error is not None:
            with pytest.raises(expect.error, match=expect.match):
                cache.load_case(CASE, data_root)
            case = None
        else:
            case = cache.load_case(CASE, data_root)
    assert _digests(data_root) == before, "an input file changed"
    if case is None:
        assert not _files(cache_root), f"a failed conversion left files: {_entries(cache_root)}"
        assert not (cache_root / CASE).exists() or not any((cache_root / CASE).iterdir())
        return
    assert expect.hu is not None and expect.mask is not None
    np.testing.assert_array_equal(case.volume.hu, expect.hu)
    np.testing.assert_array_equal(case.mask, expect.mask)
    assert np.all(np.diff(case.volume.positions) > 0)
    (entry,) = (cache_root / CASE).iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["hu.npy", "mask.npy", "meta.json"]
    assert _half_written(cache_root) == []


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("how", ["argument", "environment"])
def test_data_dir_absent_explains_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             how: str) -> None:
    absent = tmp_path / "no-such-data"
    if how == "environment":
        monkeypatch.setenv(paths.DATA_ENV, str(absent))
    with pytest.raises(FileNotFoundError, match=rf"data directory not found: {re.escape(str(absent))}"
                                                r"\nExpected DATA/Images/Case_XXX/\*\.dcm .*"
                                                rf"\${paths.DATA_ENV}"):
        paths.data_dir(absent if how == "argument" else None)
    assert not absent.exists()


def test_data_dir_without_images_folder(tmp_path: Path) -> None:
    (tmp_path / "DATA" / "Segmentations").mkdir(parents=True)
    with pytest.raises(FileNotFoundError,
                       match=rf"no Images folder in the data directory: {re.escape(str(tmp_path))}"):
        cache.resolve_cases("all", tmp_path / "DATA")


# --------------------------------------------------------------------------- cache write failure
def _disk_full(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("failure", ["disk-full", "interrupt"])
def test_cache_write_failure_leaves_no_entry(tmp_path: Path, cache_root: Path,
                                             monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    data_root = tmp_path / "DATA"
    write_case(data_root, CASE, n=N)
    before = _digests(data_root)
    real_save = np.save

    def save_half_then_fail(file: object, arr: np.ndarray, *args: object, **kwargs: object) -> None:
        if not str(file).endswith("mask.npy"):
            return real_save(file, arr, *args, **kwargs)
        buf = io.BytesIO()
        real_save(buf, arr)
        Path(str(file)).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise _disk_full(file) if failure == "disk-full" else KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(cache.np, "save", save_half_then_fail)
    with pytest.raises(OSError if failure == "disk-full" else KeyboardInterrupt):
        cache.load_case(CASE, data_root)
    assert not _files(cache_root), _entries(cache_root)
    assert _half_written(cache_root) == []
    monkeypatch.setattr(cache.np, "save", real_save)
    case = cache.load_case(CASE, data_root)  # the next run converts cleanly
    np.testing.assert_array_equal(case.volume.hu, _expected(range(N)))
    assert _digests(data_root) == before


# --------------------------------------------------------------------------- anonymise
@pytest.fixture
def phi_source(tmp_path: Path) -> Path:
    return write_series(tmp_path / "src" / CASE, n=N, phi=True, shuffle=False)[0].parent


def _probe_writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.mark.parametrize("where", ["parent-is-a-file", "destination-is-a-file", "read-only-folder"])
def test_anonymise_into_unwritable_destination(phi_source: Path, tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    if where == "read-only-folder":
        blocker.mkdir()
        blocker.chmod(0o555)
        if os.access(blocker, os.W_OK) or _probe_writable(blocker):
            blocker.chmod(0o755)
            pytest.skip("running as root (or on a filesystem ignoring modes): chmod 555 does not "
                        "prevent writes; the parent-is-a-file cases cover the failure instead")
        dst, error = blocker / CASE, PermissionError
    else:
        blocker.write_text("a regular file\n")
        dst = blocker / CASE if where == "parent-is-a-file" else blocker
        error = writing.UnsafeOutputError
    before_src, before_blocker = _digests(phi_source), _entries(tmp_path / "blocker")
    try:
        with pytest.raises(error, match=re.escape(str(dst))):
            anonymise.anonymise(phi_source, dst)
    finally:
        if blocker.is_dir():
            blocker.chmod(0o755)
    assert _digests(phi_source) == before_src
    assert _entries(tmp_path / "blocker") == before_blocker  # nothing written
    if blocker.is_file():
        assert blocker.read_text() == "a regular file\n"


def test_anonymise_write_failure_leaves_no_partial_copy(phi_source: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dst = tmp_path / "anon" / CASE
    before = _digests(phi_source)
    real_save_as = Dataset.save_as
    calls = []

    def save_as_disk_full(self: Dataset, filename: object, *args: object, **kwargs: object) -> None:
        calls.append(filename)
        if len(calls) < 3:
            return real_save_as(self, filename, *args, **kwargs)
        buf = io.BytesIO()
        real_save_as(self, buf, *args, **kwargs)
        Path(str(filename)).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise _disk_full(filename)

    monkeypatch.setattr(Dataset, "save_as", save_as_disk_full)
    with pytest.raises(OSError, match="No space left"):
        anonymise.anonymise(phi_source, dst)
    assert _digests(phi_source) == before
    assert _half_written(tmp_path / "anon") == [], _entries(tmp_path / "anon")
    assert _entries(dst) == [], "a failed anonymisation left a partial copy"


@pytest.mark.parametrize("where", ["meta", "header", "pixels"])
def test_anonymise_truncated_source(tmp_path: Path, where: str) -> None:
    src = write_series(tmp_path / "src" / CASE, n=N, phi=True, shuffle=False)
    victim = src[2]
    _cut(victim, where)
    dst = tmp_path / "anon" / CASE
    before = _digests(victim.parent)
    with pytest.raises((ValueError, OSError), match=re.escape(victim.name)):
        anonymise.anonymise(victim.parent, dst)
    assert _digests(victim.parent) == before
    assert _entries(tmp_path / "anon") == [], "a failed anonymisation left a partial copy"


# --------------------------------------------------------------------------- training
TRAIN_CASES = ["Case_900", "Case_901"]
TRAIN_SIZE = 32
TRAIN_SLICES = 4


@pytest.fixture
def tiny_training(tmp_path: Path, cache_root: Path,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[Path, data.SliceDataset]:
    """A synthetic DATA tree of two 32x32 cases, their SliceDataset, and runs kept in tmp_path."""
    data_root = tmp_path / "DATA"
    for k, case_id in enumerate(TRAIN_CASES):
        write_case(data_root, case_id, n=TRAIN_SLICES, rows=TRAIN_SIZE, cols=TRAIN_SIZE, seed=k)
    cases = [cache.load_case(c, data_root) for c in TRAIN_CASES]
    assert all(isinstance(c, cache.Case) for c in cases)
    monkeypatch.setattr(runs, "RUNS", tmp_path / "runs")
    return data_root, data.SliceDataset(cases, image_size=TRAIN_SIZE)


def _train_cfg(data_root: Path) -> loop.TrainConfig:
    return loop.TrainConfig(cases=list(TRAIN_CASES), data_dir=str(data_root), split="cases",
                             test_cases=[TRAIN_CASES[1]], image_size=TRAIN_SIZE, epochs=2,
                             batch_size=2, lr=1e-3, base_channels=4, max_steps_per_epoch=2,
                             threads=1, device="cpu")


def test_interrupted_training_leaves_a_checkpoint_and_resumes(
        tiny_training: tuple[Path, data.SliceDataset], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data_root, ds = tiny_training
    before = _digests(data_root)
    monkeypatch.setattr(runs, "RUNS", tmp_path / "straight")
    straight = loop.fit(_train_cfg(data_root), dataset=ds)

    monkeypatch.setattr(runs, "RUNS", tmp_path / "killed")
    real_save = loop._save

    def save_then_die(path: Path, obj: dict) -> None:
        real_save(path, obj)
        if path.name == "checkpoint.pt" and obj["epoch"] == 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(loop, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(_train_cfg(data_root), dataset=ds)
    monkeypatch.setattr(loop, "_save", real_save)
    run_dir = tmp_path / "killed" / straight.run_dir.name
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "run.json"]
    ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 1 and len(ck["history"]["train_loss"]) == 1
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= set(ck)
    model.UNet(base_channels=4).load_state_dict(ck["model"])  # a complete, loadable state

    resumed = loop.fit(_train_cfg(data_root), dataset=ds)
    assert resumed.trained_now and resumed.run_dir == run_dir
    assert resumed.history["train_loss"][0] == ck["history"]["train_loss"][0]
    assert len(resumed.history["train_loss"]) == 2
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
        assert resumed.history[key] == straight.history[key], key
    w_straight, w_resumed = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(w_straight[k], w_resumed[k]) for k in w_straight)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.pt", "history.json", "model.pt", "run.json"]
    assert _half_written(tmp_path / "killed") == []
    assert _digests(data_root) == before


def test_checkpoint_write_failure_keeps_the_last_checkpoint(
        tiny_training: tuple[Path, data.SliceDataset], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    data_root, ds = tiny_training
    real_torch_save = torch.save

    def torch_save_disk_full(obj: dict, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            buf = io.BytesIO()
            real_torch_save(obj, buf)
            half = buf.getvalue()[: len(buf.getvalue()) // 2]
            if hasattr(f, "write"):  # an open file (lungseg.io.writing's temporary sibling)
                f.write(half)
            else:
                Path(str(f)).write_bytes(half)
            raise _disk_full(getattr(f, "name", f))
        real_torch_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(loop.torch, "save", torch_save_disk_full)
    with pytest.raises(OSError, match="No space left"):
        loop.fit(_train_cfg(data_root), dataset=ds)
    (run_dir,) = (tmp_path / "runs").iterdir()
    ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 1  # the last complete checkpoint survives
    assert not (run_dir / "model.pt").exists()
    assert _half_written(run_dir) == [], sorted(p.name for p in run_dir.iterdir())
