"""De-identify DICOM series: DICOM PS3.15 Annex E basic profile, written as copies.

Why our own table rather than a library: ``deid`` and ``dicognito`` were considered. dicognito
replaces identifiers with random look-alikes and re-generates every UID (which breaks the link
between a series, its cache entry and its mask); deid needs a recipe file and pulls in a large
dependency set for the same ~40 attribute actions. Here the actions are one explicit, reviewable
table on top of pydicom, with the profile options we keep recorded in the files themselves:
Retain UIDs, Retain Longitudinal Temporal Information (full dates) and Retain Patient
Characteristics (sex, age, size, weight) — the analysis needs none of what is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from tqdm import tqdm

from . import paths
from .dicom import DICOM_SUFFIXES, DicomSeriesError, should_hold_image, stored_pixels

# Patient-identifying attributes (Annex E basic profile) and their action:
# "ID" = replace with the case id, "Z" = empty value, "X" = remove.
PATIENT_ACTIONS: dict[str, str] = {
    "PatientName": "ID",
    "PatientID": "ID",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "OtherPatientIDs": "X",
    "OtherPatientNames": "X",
    "OtherPatientIDsSequence": "X",
    "IssuerOfPatientID": "X",
    "PatientBirthName": "X",
    "PatientMotherBirthName": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "MedicalRecordLocator": "X",
    "PatientReligiousPreference": "X",
    "Occupation": "X",
    "AdditionalPatientHistory": "X",
    "PatientComments": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "PatientInsurancePlanCodeSequence": "X",
}
# Other identifying attributes of the basic profile (staff, institution, accession): cleaned in
# every file but not counted as patient PHI in the report.
OTHER_ACTIONS: dict[str, str] = {
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "ReferringPhysicianName": "Z",
    "InstitutionName": "X",
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "StationName": "X",
    "PhysiciansOfRecord": "X",
    "PerformingPhysicianName": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "OperatorsName": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
}
# DeidentificationMethod is LO (64 chars at most): the details go in the code sequence.
METHOD = "lungseg: PS3.15 Annex E basic profile, options in (0012,0064)"
# (code, meaning) of DICOM CID 7050 for what was applied.
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113110", "Retain UIDs Option"),
)


@dataclass
class AnonymisationReport:
    """What was found and done in one series folder."""

    case_id: str
    n_files: int = 0
    phi: Counter = field(default_factory=Counter)
    """Patient-identifying attribute -> number of files where it carried a value."""
    other_cleaned: Counter = field(default_factory=Counter)
    private_tags_removed: int = 0
    dst: Path | None = None

    @property
    def had_phi(self) -> bool:
        return bool(self.phi)


def _identifying(ds: Dataset, keyword: str, case_id: str) -> bool:
    """True when ``keyword`` is present with a value other than empty or the case id."""
    if keyword not in ds:
        return False
    value = ds.data_element(keyword).value
    if value is None or value == "" or (isinstance(value, Sequence) and len(value) == 0):
        return False
    return str(value) != case_id


def find_phi(ds: Dataset, case_id: str) -> list[str]:
    """Patient-identifying attributes of ``ds`` that carry a value (other than the case id)."""
    return [kw for kw in PATIENT_ACTIONS if _identifying(ds, kw, case_id)]


def _apply(ds: Dataset, keyword: str, action: str, case_id: str) -> None:
    if keyword not in ds:
        return
    if action == "X":
        delattr(ds, keyword)
    elif action == "Z":
        ds.data_element(keyword).value = ""
    else:
        ds.data_element(keyword).value = case_id


def deidentify(ds: Dataset, case_id: str, report: AnonymisationReport | None = None) -> Dataset:
    """De-identify ``ds`` in place (attributes, private tags) and record what was done."""
    for kw in find_phi(ds, case_id):
        if report is not None:
            report.phi[kw] += 1
    for kw, action in PATIENT_ACTIONS.items():
        _apply(ds, kw, action, case_id)
    for kw, action in OTHER_ACTIONS.items():
        if report is not None and _identifying(ds, kw, case_id):
            report.other_cleaned[kw] += 1
        _apply(ds, kw, action, case_id)
    n_private = sum(1 for el in ds.iterall() if el.tag.is_private)
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    codes = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    if report is not None:
        report.private_tags_removed += n_private
    return ds


def _dicom_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DICOM_SUFFIXES)


def scan_phi(src_folder: str | os.PathLike[str]) -> AnonymisationReport:
    """Detect patient PHI in a series folder without writing anything (headers only)."""
    src = Path(src_folder)
    report = AnonymisationReport(case_id=src.name)
    for path in _dicom_files(src):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        report.n_files += 1
        for kw in find_phi(ds, report.case_id):
            report.phi[kw] += 1
    return report


def _read_checked(path: Path) -> pydicom.Dataset:
    """Read a source file completely, refusing damaged ones (so no damaged copy is written)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DicomSeriesError(f"{path}: unreadable or truncated DICOM file ({exc})") from exc
    if "PixelData" in ds:
        stored_pixels(path, ds)  # raises on truncated pixel data
    elif should_hold_image(ds):
        raise DicomSeriesError(f"{path}: image file without pixel data (truncated or damaged)")
    return ds


def anonymise(src_folder: str | os.PathLike[str],
              dst_folder: str | os.PathLike[str]) -> AnonymisationReport:
    """Write de-identified copies of every DICOM file of ``src_folder`` into ``dst_folder``.

    The source is only read. Pixel data and geometry are copied unchanged. All copies are written
    into a temporary sibling folder that replaces ``dst_folder`` only when every file succeeded, so
    a failure (damaged source file, full disk) leaves no partial output. The case id is the source
    folder's name. Raises DicomSeriesError naming a damaged source file.
    """
    src, dst = Path(src_folder).resolve(), Path(dst_folder).resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"refusing to write de-identified copies into the source folder {src}")
    files = _dicom_files(src)
    if not files:
        raise FileNotFoundError(f"no DICOM files in {src}")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"destination exists and is not a folder: {dst}")
    blocker = next((p for p in dst.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(f"cannot create {dst}: {blocker} is a file, not a folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    report = AnonymisationReport(case_id=src.name, dst=dst)
    try:
        for path in files:
            deidentify(_read_checked(path), report.case_id, report).save_as(
                tmp / path.name, enforce_file_format=True)
            report.n_files += 1
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def anonymise_cases(case_ids: list[str], data: str | os.PathLike[str] | None,
                    dst_root: str | os.PathLike[str]) -> list[AnonymisationReport]:
    """Anonymise each case's series from ``DATA/Images/Case_XXX`` into ``dst_root/Case_XXX``."""
    root, dst = paths.data_dir(data), paths.resolve(dst_root)
    if paths.is_within(dst, root):
        raise ValueError(f"refusing to write de-identified copies into the data directory {root}")
    return [anonymise(paths.images_dir(root, c), dst / c)
            for c in tqdm(case_ids, desc="anonymise", unit="case")]
