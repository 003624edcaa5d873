"""lungseg.io.anonymise: the whole PS3.15 E.1-1 basic profile at any depth, the allowlist, the
verification pass, generated names and pseudonyms; sources never change."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from builders import SECRET, plant_secret, table_dataset
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from synthetic import PHI, PRIVATE_GROUP, edit, write_case, write_series

from lungseg.io import anonymise, deid_profile, writing
from lungseg.io.dicom import DicomSeriesError, load_series

N = 3
CASE = "Case_1"
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
            "SliceLocation", "Rows", "Columns", "RescaleSlope", "RescaleIntercept")
RETAINED_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
PRIVATE_ELEMENTS_PER_FILE = 2  # the private creator and one value
REMOVED = ("PatientBirthTime", "OtherPatientIDs", "PatientAddress")


def _digests(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file below ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _all_output(folder: Path) -> bytes:
    """Every byte and every name written below ``folder``."""
    return b"".join(p.name.encode() + (p.read_bytes() if p.is_file() else b"") for p in folder.rglob("*"))


@pytest.fixture
def phi_series(tmp_path: Path) -> tuple[Path, list[Path]]:
    files = write_series(tmp_path / "src" / CASE, n=N, phi=True)
    return files[0].parent, files


def test_scan_finds_every_phi_attribute(phi_series: tuple[Path, list[Path]]) -> None:
    src, _ = phi_series
    before = _digests(src)
    report = anonymise.scan_phi(src)
    assert report.case_id == CASE and report.n_files == N and report.had_phi
    assert dict(report.phi) == {kw: N for kw in PHI}
    assert _digests(src) == before


def test_anonymise_removes_phi_and_keeps_pixels_and_geometry(
        phi_series: tuple[Path, list[Path]], tmp_path: Path) -> None:
    src, files = phi_series
    before = _digests(src)
    dst = tmp_path / "out" / CASE
    report = anonymise.anonymise(src, dst)
    assert report.dst == dst and report.n_files == N and report.case_id == CASE
    assert dict(report.phi) == {kw: N for kw in PHI}
    assert report.private_tags_removed == PRIVATE_ELEMENTS_PER_FILE * N
    assert report.verified_values > 0 and report.actions["removed (E.1-1)"] >= len(REMOVED) * N
    copies = sorted(dst.glob("*.dcm"))
    assert [p.name for p in copies] == [f"{CASE}_{i:04d}.dcm" for i in range(1, N + 1)]
    assert sorted(p.name for p in dst.iterdir()) == sorted([*(p.name for p in copies), writing.MARKER])
    for path, new_path in zip(sorted(files), copies, strict=True):  # copies follow source path order
        old, new = pydicom.dcmread(path), pydicom.dcmread(new_path)
        assert str(new.PatientName) == CASE and new.PatientID == CASE
        assert new.PatientBirthDate == ""
        for keyword in REMOVED:
            assert keyword not in new, keyword
        assert not any(el.tag.is_private for el in new.iterall())
        assert not any(el.tag.group == PRIVATE_GROUP for el in new)
        assert new.PatientIdentityRemoved == "YES"
        codes = {item.CodeValue for item in new.DeidentificationMethodCodeSequence}
        assert codes == {"113100", "113108", "113110"}  # basic profile, patient chars, UIDs
        assert new.PixelData == old.PixelData
        for keyword in (*GEOMETRY, *RETAINED_UIDS):
            assert new[keyword].value == old[keyword].value, keyword
        assert new.file_meta.TransferSyntaxUID == old.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(load_series(dst).hu, load_series(src).hu)
    assert not anonymise.scan_phi(dst).had_phi
    assert _digests(src) == before  # the source is only read
    for value in PHI.values():
        assert value.encode() not in _all_output(dst), value


# ---- the standard's table, every row, at every depth ------------------------------------------


def _expect(tag: Tag, before: object, ds: Dataset, top_level: bool) -> None:
    keyword = pydicom.datadict.keyword_for_tag(tag)
    action = deid_profile.TABLE[tag]
    if keyword in anonymise.PSEUDONYMISED and top_level:
        assert ds[tag].value == "PSEUDO", keyword
    elif keyword in anonymise.RETAINED_CHARACTERISTICS or action in ("K", "KR"):
        # retained by an option (UIDs, patient characteristics), unless it quoted the planted name
        assert tag in ds or SECRET.upper() in str(before).upper(), keyword
    elif action == "X":
        assert tag not in ds, f"{tag} {keyword} should be removed"
    elif action == "Z":
        assert tag in ds and (ds[tag].value in ("", None) or len(ds[tag].value) == 0), keyword
    else:  # D: a dummy, or removed where the VR has none
        assert tag not in ds or ds[tag].value != before, keyword


@pytest.mark.parametrize("depth", [0, 2])
def test_every_row_of_table_e11_gets_its_action(depth: int) -> None:
    rows = table_dataset()
    before = {el.tag: el.value for el in rows}
    ds = rows
    for _ in range(depth):  # nest inside kept sequences (Retain UIDs: references are kept)
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([ds])
        ds = outer
    anonymise.deidentify(ds, "PSEUDO")
    inner = ds
    for _ in range(depth):
        inner = inner.ReferencedImageSequence[0]
    for tag in before:
        _expect(tag, before[tag], inner, top_level=depth == 0)
    assert len(deid_profile.TABLE) > 600  # the whole table, not a hand-kept subset


def test_repeating_groups_of_curves_and_overlays_are_removed() -> None:
    ds = Dataset()
    ds.add_new(Tag(0x6000, 0x3000), "OW", b"\1\0" * 8)  # Overlay Data
    ds.add_new(Tag(0x6002, 0x4000), "LT", SECRET)  # Overlay Comments, second overlay group
    ds.add_new(Tag(0x5000, 0x3000), "OW", b"\1\0" * 8)  # Curve Data
    ds.add_new(Tag(0x6000, 0x0010), "US", 4)  # Overlay Rows: not on the allowlist either
    anonymise.deidentify(ds, "PSEUDO")
    assert not any(el.tag.group in (0x5000, 0x6000, 0x6002) for el in ds)


def test_identifiers_planted_anywhere_do_not_survive(tmp_path: Path) -> None:
    files = write_series(tmp_path / CASE, n=2)
    for path in files:
        plant_secret(path)
    report = anonymise.anonymise(tmp_path / CASE, tmp_path / "out")
    out = _all_output(tmp_path / "out")
    for needle in (SECRET, SECRET.upper(), "MRN-77-31"):
        assert needle.encode() not in out, needle
    assert report.actions["removed (holds an identifier)"] == len(files)  # the kernel quoting it
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*.dcm")))
    ref = ds.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID and not ref.get("PatientName")  # references kept, names not


def test_verification_refuses_a_value_off_the_allowlist(tmp_path: Path) -> None:
    path = write_series(tmp_path / "s", n=1)[0]
    edit(path, StudyDescription="Chest of someone")
    with pytest.raises(DicomSeriesError, match="StudyDescription kept a value"):
        anonymise.verify(path, "Case_1", set())
    edit(path, StudyDescription=None, ConvolutionKernel="ZEBEDEE")
    with pytest.raises(DicomSeriesError, match="ConvolutionKernel contains an identifier"):
        anonymise.verify(path, "Case_1", {"ZEBEDEE"})


# ---- names and pseudonyms ---------------------------------------------------------------------

def test_a_folder_named_like_an_mrn_never_becomes_the_pseudonym(tmp_path: Path) -> None:
    mrn = "004711235"
    write_series(tmp_path / mrn, n=2, names=[f"Doe_Jane_{i}.dcm" for i in range(2)])
    report = anonymise.anonymise(tmp_path / mrn, tmp_path / "out")
    assert report.case_id == anonymise.DEFAULT_PSEUDONYM
    out = _all_output(tmp_path / "out")
    assert mrn.encode() not in out and b"Doe_Jane" not in out
    explicit = anonymise.anonymise(tmp_path / mrn, tmp_path / "out2", "Study7_P03")
    assert sorted(p.name for p in (tmp_path / "out2").glob("*.dcm")) == ["Study7_P03_0001.dcm",
                                                                          "Study7_P03_0002.dcm"]
    assert explicit.case_id == "Study7_P03"


@pytest.mark.parametrize("bad", ["", "../x", "Müller", "a b", "x" * 65])
def test_unsafe_pseudonyms_are_refused(tmp_path: Path, bad: str) -> None:
    write_series(tmp_path / CASE, n=1)
    with pytest.raises(ValueError, match="pseudonym"):
        anonymise.anonymise(tmp_path / CASE, tmp_path / "out", bad)
    assert not (tmp_path / "out").exists()


def test_non_latin_folder_and_file_names_give_ascii_outputs(tmp_path: Path) -> None:
    src = tmp_path / "Пациент_Иванов"
    write_series(tmp_path / "s", n=2, names=["Иванов_1.dcm", "Иванов_2"]).clear()
    (tmp_path / "s").rename(src)  # (renamed: the synthetic writer puts the folder name in PatientName)
    anonymise.anonymise(src, tmp_path / "out", "P01")
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert all(n.isascii() for n in names) and "Иванов".encode() not in _all_output(tmp_path / "out")


def test_burned_in_annotation_is_refused(tmp_path: Path) -> None:
    files = write_series(tmp_path / CASE, n=2)
    edit(files[1], BurnedInAnnotation="YES")
    with pytest.raises(DicomSeriesError, match="BurnedInAnnotation"):
        anonymise.anonymise(tmp_path / CASE, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_clean_series_reports_no_phi(tmp_path: Path) -> None:
    write_series(tmp_path / CASE, n=N)
    report = anonymise.scan_phi(tmp_path / CASE)
    assert report.n_files == N and not report.had_phi and not report.phi
    assert not anonymise.anonymise(tmp_path / CASE, tmp_path / "out").had_phi


def test_non_dicom_files_are_not_copied_and_are_reported(phi_series: tuple[Path, list[Path]],
                                                         tmp_path: Path) -> None:
    src, _ = phi_series
    (src / "README.txt").write_text("notes")
    report = anonymise.anonymise(src, tmp_path / "out")
    assert not (tmp_path / "out" / "README.txt").exists()
    assert report.skipped == ["README.txt: not DICOM"]


def test_missing_or_empty_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        anonymise.scan_phi(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM files"):
        anonymise.anonymise(tmp_path / "empty", tmp_path / "out")


def test_anonymise_cases_writes_one_folder_per_case_and_reruns(tmp_path: Path) -> None:
    write_case(tmp_path / "DATA", CASE, n=2, phi=True)
    for _ in range(2):  # a rerun replaces its own earlier output
        reports = anonymise.anonymise_cases([CASE], tmp_path / "DATA", tmp_path / "anon")
        assert [r.case_id for r in reports] == [CASE] and reports[0].had_phi
        assert not anonymise.scan_phi(tmp_path / "anon" / CASE).had_phi


def test_anonymise_cases_refuses_the_data_directory(tmp_path: Path) -> None:
    write_case(tmp_path / "DATA", CASE, n=2)
    with pytest.raises(writing.UnsafeOutputError, match="inside the input"):
        anonymise.anonymise_cases([CASE], tmp_path / "DATA", tmp_path / "DATA" / "anonymised")
    assert not (tmp_path / "DATA" / "anonymised").exists()
