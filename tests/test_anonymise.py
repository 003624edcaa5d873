"""lungseg.anonymise on synthetic series: PHI found, removed in copies, sources untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from synthetic import PHI, PRIVATE_GROUP, edit, write_case, write_series

from lungseg import anonymise
from lungseg.dicom import load_series

N = 3
CASE = "Case_1"
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
            "SliceLocation", "Rows", "Columns", "RescaleSlope", "RescaleIntercept")
RETAINED_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
PRIVATE_ELEMENTS_PER_FILE = 2  # the private creator and one value
REMOVED = ("PatientBirthTime", "OtherPatientIDs", "PatientAddress")


def _digests(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file in ``folder``."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


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
    assert report.dst == dst.resolve() and report.n_files == N
    assert dict(report.phi) == {kw: N for kw in PHI}
    assert report.private_tags_removed == PRIVATE_ELEMENTS_PER_FILE * N
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in files)  # no .part left
    for path in files:
        old, new = pydicom.dcmread(path), pydicom.dcmread(dst / path.name)
        assert str(new.PatientName) == CASE and new.PatientID == CASE
        assert new.PatientBirthDate == ""
        for keyword in REMOVED:
            assert keyword not in new, keyword
        assert not any(el.tag.is_private for el in new.iterall())
        assert not any(el.tag.group == PRIVATE_GROUP for el in new)
        assert new.PatientIdentityRemoved == "YES"
        codes = {item.CodeValue for item in new.DeidentificationMethodCodeSequence}
        assert "113100" in codes  # Basic Application Confidentiality Profile
        assert new.PixelData == old.PixelData
        for keyword in (*GEOMETRY, *RETAINED_UIDS):
            assert new[keyword].value == old[keyword].value, keyword
        assert new.file_meta.TransferSyntaxUID == old.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(load_series(dst).hu, load_series(src).hu)
    assert not anonymise.scan_phi(dst).had_phi
    assert _digests(src) == before  # the source is only read


def test_other_identifiers_are_cleaned_but_not_counted_as_patient_phi(tmp_path: Path) -> None:
    files = write_series(tmp_path / CASE, n=2)
    for path in files:
        edit(path, InstitutionName="St Elsewhere", AccessionNumber="A123")
    report = anonymise.anonymise(tmp_path / CASE, tmp_path / "out")
    assert not report.had_phi
    assert dict(report.other_cleaned) == {"InstitutionName": 2, "AccessionNumber": 2}
    ds = pydicom.dcmread(tmp_path / "out" / files[0].name)
    assert "InstitutionName" not in ds and ds.AccessionNumber == ""


def test_clean_series_reports_no_phi(tmp_path: Path) -> None:
    write_series(tmp_path / CASE, n=N)
    report = anonymise.scan_phi(tmp_path / CASE)
    assert report.n_files == N and not report.had_phi and not report.phi
    assert not anonymise.anonymise(tmp_path / CASE, tmp_path / "out").had_phi


@pytest.mark.parametrize("inside", [".", "anon", "a/b"])
def test_refuses_to_write_into_the_source(phi_series: tuple[Path, list[Path]],
                                          inside: str) -> None:
    src, _ = phi_series
    before = _digests(src)
    with pytest.raises(ValueError, match="refusing"):
        anonymise.anonymise(src, src / inside)
    assert _digests(src) == before


def test_non_dicom_files_are_not_copied(phi_series: tuple[Path, list[Path]],
                                        tmp_path: Path) -> None:
    src, _ = phi_series
    (src / "README.txt").write_text("notes")
    anonymise.anonymise(src, tmp_path / "out")
    assert not (tmp_path / "out" / "README.txt").exists()


def test_missing_or_empty_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        anonymise.scan_phi(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM files"):
        anonymise.anonymise(tmp_path / "empty", tmp_path / "out")


def test_anonymise_cases_writes_one_folder_per_case(tmp_path: Path) -> None:
    write_case(tmp_path / "DATA", CASE, n=2, phi=True)
    reports = anonymise.anonymise_cases([CASE], tmp_path / "DATA", tmp_path / "anon")
    assert [r.case_id for r in reports] == [CASE] and reports[0].had_phi
    assert not anonymise.scan_phi(tmp_path / "anon" / CASE).had_phi


def test_anonymise_cases_refuses_the_data_directory(tmp_path: Path) -> None:
    write_case(tmp_path / "DATA", CASE, n=2)
    with pytest.raises(ValueError, match="data directory"):
        anonymise.anonymise_cases([CASE], tmp_path / "DATA", tmp_path / "DATA" / "anonymised")
    assert not (tmp_path / "DATA" / "anonymised").exists()
