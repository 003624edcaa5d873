"""De-identify DICOM files: the whole DICOM PS3.15 Annex E basic profile, then an allowlist, then a check.

Three layers, each independent of the others:

1. **The standard's table.** Every attribute of PS3.15 Table E.1-1 (about 650 rows, with the
   repeating curve/overlay groups) gets its basic-profile action, at any depth in sequences. The
   table is not typed by hand: it is the one maintained in the ``dicom-anonymizer`` package
   (``dicomanonymizer.dicom_anonymization_databases``, generated from the standard), of which we
   use the data only, so that the options below can be applied. Options (recorded in
   DeidentificationMethodCodeSequence): **Retain UIDs** (links between a series, its masks and any
   SEG/RTSTRUCT stay valid) and **Retain Patient Characteristics** (sex, age, size, weight: lung
   volumes depend on them). Dates and times are *not* retained (blanked or removed as the table
   says): the analysis needs none.
2. **An allowlist.** What survives the table is kept only when it is on :data:`KEEP` (pixel,
   geometry, acquisition and RTSTRUCT contour attributes the pipeline or a viewer needs) or is a
   UID; every other attribute (private tags, free text the table does not list, unknown VRs) is
   removed.
   Neither layer removes an attribute that the object's IOD requires (:mod:`lungseg.io.iod`, from the
   standard's tables in highdicom): as E.1-1's "Z/D", "X/Z" and "X/D" rows say, a Type 2 attribute is
   emptied instead and a Type 1 one gets a dummy value (or, when only the allowlist would remove it,
   keeps a code or number that quotes no identifier; a sequence keeps its items, cleaned).
3. **Verification.** Every written file is read back and walked to any depth: each non-empty text
   value must be on the allowlist, a retained UID, the pseudonym, or a dummy of the profile, and no
   identifying value of the source (names, IDs, addresses, phone numbers...) may appear in any kept
   value. Anything else fails the run before the output folder appears.

File names are generated (``PSEUDONYM_0001.dcm``), never copied (a source name may carry a patient
name), and the pseudonym written into PatientName/PatientID comes from the ``pseudonym`` argument or
a case-id folder name (``Case_012``), never from an arbitrary folder name (which may be an MRN).

Why not a library end to end: ``dicognito`` re-generates every UID and randomises identifiers;
``deid`` and ``dicom-anonymizer``'s own driver do not apply the allowlist and verification above.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from lungseg import paths
from lungseg.io import iod, parallel, writing
from lungseg.io.deid_profile import (
    CODED_VRS,
    DUMMIES,
    DUMMY_TEXT,
    IDENTIFYING,
    KEEP,
    METHOD,
    METHOD_CODES,
    MIN_IDENTIFIER_LEN,
    NUMERIC_VRS,
    PRESENT_ONLY_WITH,
    PSEUDONYMISED,
    RETAINED_CHARACTERISTICS,
    STRING_VRS,
    TABLE_VERSION,
    TEXT_VRS,
    table_action,
)
from lungseg.io.dicom import DicomSeriesError, find_dicom_files, read_dataset, should_hold_image
from lungseg.io.pixels import stored_pixels

TOOL = "anonymise"
CASE_ID_PATTERN = re.compile(r"^Case_\d+$")
PSEUDONYM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_PSEUDONYM = "ANONYMOUS"

@dataclass
class AnonymisationSummary:
    """What was found and done in one source folder."""

    case_id: str
    """The pseudonym written into PatientName and PatientID."""
    n_files: int = 0
    phi: Counter = field(default_factory=Counter)
    """Patient-identifying attribute -> number of files where it carried a value."""
    actions: Counter = field(default_factory=Counter)
    """Action -> number of attributes it was applied to (all files, all depths)."""
    skipped: list[str] = field(default_factory=list)
    """Source files not copied (not DICOM, or a DICOMDIR index), with the reason."""
    verified_values: int = 0
    """Non-empty values checked in the written files by the verification pass."""
    dst: Path | None = None

    @property
    def had_phi(self) -> bool:
        return bool(self.phi)

    @property
    def private_tags_removed(self) -> int:
        return self.actions["removed (private)"]


PATIENT_PHI = ("PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
               "OtherPatientNames", "OtherPatientIDsSequence", "IssuerOfPatientID", "PatientBirthName",
               "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
               "PatientTelecomInformation", "CountryOfResidence", "RegionOfResidence", "MilitaryRank",
               "BranchOfService", "MedicalRecordLocator", "PatientReligiousPreference", "Occupation",
               "AdditionalPatientHistory", "PatientComments", "ResponsiblePerson",
               "ResponsibleOrganization", "PatientInsurancePlanCodeSequence", "AdmissionID",
               "CurrentPatientLocation", "MedicalAlerts", "Allergies", "EthnicGroup")
"""Patient attributes counted as PHI in the report when they carry a value other than the pseudonym."""


def _has_value(ds: Dataset, keyword: str, pseudonym: str) -> bool:
    if keyword not in ds:
        return False
    value = ds.data_element(keyword).value
    if value is None or value == "" or (isinstance(value, Sequence) and len(value) == 0):
        return False
    return str(value) != pseudonym


def find_phi(ds: Dataset, case_id: str) -> list[str]:
    """Patient-identifying attributes of ``ds`` (top level) that carry a value other than ``case_id``."""
    return [kw for kw in PATIENT_PHI if _has_value(ds, kw, case_id)]


def identifiers(ds: Dataset) -> set[str]:
    """Identifying strings of the source (any depth), upper-cased: whole values of
    :data:`IDENTIFYING` attributes and of every person name, and each person-name component;
    only those at least MIN_IDENTIFIER_LEN long."""
    keys = {Tag(pydicom.datadict.tag_for_keyword(k)) for k in IDENTIFYING}
    found: set[str] = set()
    for elem in ds.iterall():
        if (elem.tag not in keys and elem.VR != "PN") or elem.value in (None, "") or elem.VR == "SQ":
            continue
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        for v in values:
            text = str(v).strip()
            found.add(text)
            if elem.VR == "PN":
                found.update(re.split(r"[\^=]+", text))
    return {s.strip().upper() for s in found if len(s.strip()) >= MIN_IDENTIFIER_LEN}


def _dummy(elem: DataElement) -> object | None:
    """The "D" replacement of an element (None: remove it instead)."""
    if elem.VR == "SQ":
        return Sequence([])
    if elem.VR == "UI":
        return generate_uid(entropy_srcs=[str(elem.value)]) if elem.value else ""
    if elem.VR in DUMMIES:
        return DUMMIES[elem.VR]
    if elem.VR in TEXT_VRS:
        return DUMMY_TEXT[:16] if elem.VR in ("AE", "CS", "SH") else DUMMY_TEXT
    return None


def _type1_dummy(elem: DataElement) -> object:
    """A non-empty value of ``elem``'s VR for a required Type 1 attribute (zeros where the profile
    has no dummy: numbers, binary data)."""
    value = _dummy(elem)
    if value is not None:
        return value
    if elem.VR in NUMERIC_VRS:
        return [0] * len(elem.value) if isinstance(elem.value, (list, MultiValue)) else 0
    return bytes(max(2, len(elem.value or b"") + len(elem.value or b"") % 2))  # OB, OW, UN...


def _action(elem: DataElement, top_level: bool) -> str:
    """What to do with one element: the table's action, adjusted by the options and the allowlist.
    The pseudonym goes into the patient's own PatientName/PatientID only (``top_level``)."""
    if elem.tag.is_private:
        return "removed (private)"
    if elem.keyword in PSEUDONYMISED and top_level:
        return "pseudonym"
    if elem.keyword in RETAINED_CHARACTERISTICS:
        return "kept (Retain Patient Characteristics)"
    action = table_action(elem.tag)
    if action == "X":
        return "removed (E.1-1)"
    if action == "Z":
        return "emptied (E.1-1)"
    if action == "D":
        return "dummy (E.1-1)" if _dummy(elem) is not None else "removed (E.1-1)"
    if action in ("K", "KR") or elem.keyword in KEEP or elem.VR == "UI":
        return "kept"
    return "removed (not on the allowlist)"


def _profile_action(elem: DataElement, top_level: bool, secrets: set[str]) -> str:
    """:func:`_action`, and removal of a kept value quoting the patient's name or ID."""
    what = _action(elem, top_level)
    if what.startswith("kept") and elem.VR != "SQ" and _leaks(elem, secrets):
        return "removed (holds an identifier)"
    return what


def _conform(what: str, elem: DataElement, need: iod.Requirement | None, secrets: set[str]) -> str:
    """``what``, unless it would remove (or leave empty) an attribute the IOD requires: then, as the
    profile's "X/Z", "Z/D" and "X/D" rows say, "Z" for Type 2 and "D" for Type 1."""
    if need is None or not need.required or not what.startswith(("removed", "emptied", "dummy")):
        return what
    if not need.needs_value:  # Type 2/2C: present, may be empty
        return "emptied (required by the IOD, Type 2)" if what.startswith("removed") else what
    if elem.VR == "SQ":  # a Type 1 sequence keeps its items, which are cleaned like the rest
        return "kept (required by the IOD, Type 1)"
    if what == "removed (not on the allowlist)" and (
            elem.VR in NUMERIC_VRS or (elem.VR in CODED_VRS and not _leaks(elem, secrets))):
        return "kept (required by the IOD, Type 1)"  # a code or number, off the allowlist only
    if what == "dummy (E.1-1)":
        return what
    return "dummy (required by the IOD, Type 1)"


def _empty(elem: DataElement) -> object:
    return Sequence([]) if elem.VR == "SQ" else "" if elem.VR in TEXT_VRS else None


def _clean(ds: Dataset, pseudonym: str, secrets: set[str], counts: Counter, required: iod.Tree,
           top_level: bool = True) -> None:
    """Apply :func:`_action` to every element of ``ds`` and, recursively, of its sequence items,
    never removing what ``required`` (the IOD's tree at this level) says must be present."""
    for elem in list(ds):
        need = required.get(elem.keyword) if elem.keyword else None
        what = _conform(_profile_action(elem, top_level, secrets), elem, need, secrets)
        counts[what] += 1
        if what.startswith("removed"):
            del ds[elem.tag]
        elif what.startswith("emptied"):
            elem.value = _empty(elem)
        elif what == "pseudonym":
            elem.value = pseudonym
        elif what == "dummy (E.1-1)":
            elem.value = _dummy(elem)
        elif what.startswith("dummy"):
            elem.value = _type1_dummy(elem)
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, pseudonym, secrets, counts, need.children if need else {}, top_level=False)
    for keyword, condition in PRESENT_ONLY_WITH.items():
        if keyword in ds and condition not in ds:
            del ds[keyword]
            counts["removed (its IOD condition no longer holds)"] += 1


def required_attributes(ds: Dataset, secrets: set[str] | frozenset[str] = frozenset()) -> iod.Tree:
    """What the IOD of the source ``ds`` requires of its de-identified copy: the modules in use are
    those the copy keeps an attribute of (the Mandatory ones, and each other one holding an
    attribute that the profile and allowlist keep or any attribute this requirement keeps)."""
    sop_class = str(ds.get("SOPClassUID", ""))
    source = {el.keyword for el in ds if el.keyword}
    present = {el.keyword for el in ds
               if el.keyword and not _profile_action(el, True, set(secrets)).startswith("removed")}
    while True:  # a kept attribute may belong to a further module, which must then be complete
        tree = iod.requirements(sop_class, present)
        grown = present | {kw for kw in source if kw in tree and tree[kw].required}
        if grown == present:
            return tree
        present = grown


def _leaks(elem: DataElement, secrets: set[str]) -> bool:
    """True when a kept text value (UIDs aside) contains an identifying string of the source."""
    if elem.VR not in STRING_VRS or elem.value in (None, ""):
        return False
    text = str(elem.value).upper()
    return any(s in text for s in secrets)


def _method_codes() -> Sequence:
    items = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    return Sequence(items)


def deidentify(ds: Dataset, pseudonym: str, report: AnonymisationSummary | None = None) -> Dataset:
    """De-identify ``ds`` in place (all depths, file meta rebuilt) and count the actions in ``report``."""
    secrets = identifiers(ds) - {pseudonym.upper()}
    if report is not None:
        for kw in find_phi(ds, pseudonym):
            report.phi[kw] += 1
    counts: Counter = Counter()
    _clean(ds, pseudonym, secrets, counts, required_attributes(ds, secrets))
    ds.PatientName, ds.PatientID = pseudonym, pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.DeidentificationMethod = METHOD
    ds.DeidentificationMethodCodeSequence = _method_codes()
    old_meta = getattr(ds, "file_meta", FileMetaDataset())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", old_meta.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", old_meta.get("MediaStorageSOPInstanceUID"))
    syntax = old_meta.get("TransferSyntaxUID")
    meta.TransferSyntaxUID = syntax or (pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR
                                        else pydicom.uid.ExplicitVRLittleEndian)
    ds.file_meta = meta
    if report is not None:
        report.actions.update(counts)
    return ds


ALLOWED_VALUES = frozenset({DUMMY_TEXT, *DUMMIES.values(), "YES", "REMOVED", METHOD})


def _walk(ds: Dataset, required: iod.Tree) -> Iterator[tuple[DataElement, iod.Requirement | None]]:
    """Every element of ``ds`` at any depth, with what the IOD requires of it there."""
    for elem in ds:
        need = required.get(elem.keyword) if elem.keyword else None
        yield elem, need
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item, need.children if need else {})


def verify(path: Path, pseudonym: str, secrets: set[str]) -> int:
    """Check a written file; return the number of non-empty values checked.

    Raises DicomSeriesError for a private tag, a non-empty text value that is not on :data:`KEEP`
    (nor a UID, the pseudonym, a profile dummy, or the code or number of a Type 1 attribute the
    IOD requires), or a kept value containing a source identifier.
    """
    ds = pydicom.dcmread(path)
    checked = 0
    meta = [(elem, None) for elem in ds.file_meta]
    for elem, need in [*meta, *_walk(ds, iod.requirements_of(ds))]:
        if elem.tag.is_private:
            raise DicomSeriesError(f"{path}: private tag {elem.tag} survived de-identification")
        if elem.VR not in TEXT_VRS or elem.value in (None, "") or elem.tag.group == 0x0002:
            continue
        checked += 1
        value = str(elem.value)
        required_code = need is not None and need.needs_value and elem.VR in CODED_VRS
        if not (elem.keyword in KEEP or elem.VR == "UI" or value == pseudonym or value in ALLOWED_VALUES
                or required_code):
            raise DicomSeriesError(f"{path}: {elem.keyword or elem.tag} kept a value after "
                                   "de-identification (not on the allowlist)")
        if _leaks(elem, secrets):
            raise DicomSeriesError(f"{path}: {elem.keyword or elem.tag} contains an identifier of the source")
    return checked


def choose_pseudonym(src: Path, pseudonym: str | None) -> str:
    """The pseudonym: as given (checked), the source folder name when it is a case id
    (``Case_012``), else :data:`DEFAULT_PSEUDONYM` — never an arbitrary folder name (may be an MRN)."""
    if pseudonym is None:
        return src.name if CASE_ID_PATTERN.match(src.name) else DEFAULT_PSEUDONYM
    if not PSEUDONYM_PATTERN.match(pseudonym):
        raise ValueError(f"pseudonym {pseudonym!r}: use 1-64 ASCII letters, digits, '_', '.' or '-'")
    return pseudonym


def scan_phi(src_folder: str | os.PathLike[str], recursive: bool | None = None) -> AnonymisationSummary:
    """Detect patient PHI in a folder without writing anything (headers only)."""
    src = Path(src_folder)
    report = AnonymisationSummary(case_id=choose_pseudonym(src, None))
    files, _ = find_dicom_files(src, recursive)
    for path in files:
        ds = read_dataset(path, stop_before_pixels=True)
        report.n_files += 1
        for kw in find_phi(ds, report.case_id):
            report.phi[kw] += 1
    return report


def _read_checked(path: Path) -> Dataset:
    """Read a source file completely, refusing damaged ones (so no damaged copy is written)."""
    ds = read_dataset(path)
    if "PixelData" in ds:
        stored_pixels(path, ds)  # raises on truncated pixel data
    elif should_hold_image(ds):
        raise DicomSeriesError(f"{path}: image file without pixel data (truncated or damaged)")
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DicomSeriesError(f"{path}: BurnedInAnnotation is YES: identifiers may be burned into the "
                               "pixels, which de-identification of the header cannot remove")
    return ds


def anonymise(src_folder: str | os.PathLike[str], dst_folder: str | os.PathLike[str],
              pseudonym: str | None = None, *, overwrite: bool = False,
              recursive: bool | None = None) -> AnonymisationSummary:
    """Write de-identified copies of every DICOM file of ``src_folder`` into ``dst_folder``.

    The source is only read. ``dst_folder`` must not be, lie inside or contain the source; it must
    be new or empty, or (with ``overwrite``) hold exactly an earlier output of this command (see
    :mod:`lungseg.io.writing`). Copies are named ``PSEUDONYM_0001.dcm`` ... in path order, written into a
    temporary sibling, verified, and renamed into place only when all succeeded. Pixel data and
    geometry are unchanged. Raises DicomSeriesError naming a damaged source file or a failed check.
    """
    src, dst = Path(src_folder).absolute(), Path(dst_folder).absolute()
    if not src.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {src}")
    pseudonym = choose_pseudonym(src, pseudonym)
    writing.check_not_overlapping(dst, [src], "destination")
    writing.check_replaceable(dst, overwrite, TOOL)
    files, others = find_dicom_files(src, recursive)
    if not files:
        raise FileNotFoundError(f"no DICOM files in {src}")
    report = AnonymisationSummary(case_id=pseudonym, dst=dst)
    report.skipped = [f"{p.relative_to(src)}: not DICOM" for p in others]
    with writing.staged_folder(dst, TOOL, overwrite=overwrite, sources=[src],
                               extra={"pseudonym": pseudonym, "profile": TABLE_VERSION}) as tmp:
        for i, path in enumerate(files, start=1):
            ds = _read_checked(path)
            secrets = identifiers(ds) - {pseudonym.upper()}
            out = tmp / f"{pseudonym}_{i:04d}.dcm"
            deidentify(ds, pseudonym, report).save_as(out, enforce_file_format=True)
            report.verified_values += verify(out, pseudonym, secrets)
            report.n_files += 1
    return report


def anonymise_cases(case_ids: list[str], data: str | os.PathLike[str] | None,
                    dst_root: str | os.PathLike[str], overwrite: bool = True) -> list[AnonymisationSummary]:
    """Anonymise each case's series from ``DATA/Images/Case_XXX`` into ``dst_root/Case_XXX`` (the case
    id is the pseudonym). ``overwrite`` replaces only this command's own earlier outputs."""
    root, dst = paths.data_dir(data), paths.resolve(dst_root)
    writing.check_not_overlapping(dst, [root], "destination")
    jobs = [(paths.images_dir(root, c), dst / c, c, overwrite) for c in case_ids]
    return parallel.map_cases(_anonymise_job, jobs, "anonymise")  # one case per core at a time


def _anonymise_job(job: tuple[Path, Path, str, bool]) -> AnonymisationSummary:
    """:func:`anonymise` of one case, in a worker process (:func:`anonymise_cases`)."""
    src, dst, pseudonym, overwrite = job
    return anonymise(src, dst, pseudonym, overwrite=overwrite)
