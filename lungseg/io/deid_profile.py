"""The de-identification profile: DICOM PS3.15 Table E.1-1's basic-profile actions with the options
lungseg applies (Retain UIDs, Retain Patient Characteristics), the allowlist of attributes kept after
it, and the values written in place of removed ones. :mod:`lungseg.io.anonymise` applies it and checks
every written file against it.
"""

from __future__ import annotations

from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table_e11
from pydicom.tag import BaseTag, Tag

TABLE_VERSION = "PS3.15 Table E.1-1 (2026c, via dicom-anonymizer 2.1.0)"

# The table's action categories (dicom-anonymizer names) -> what we do with the options chosen:
# "D" dummy value, "Z" empty value, "X" remove, "K" keep (Retain UIDs), "KR" keep and clean inside.
CATEGORY_ACTIONS = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "K", "Z_D_TAGS": "Z", "X_Z_TAGS": "X",
    "X_D_TAGS": "X", "X_Z_D_TAGS": "X", "X_Z_U_STAR_TAGS": "KR",
}
RETAINED_CHARACTERISTICS = ("PatientSex", "PatientAge", "PatientSize", "PatientWeight")
"""Retain Patient Characteristics Option (the table removes or blanks these otherwise)."""
PSEUDONYMISED = ("PatientName", "PatientID")
"""Replaced by the pseudonym (the profile allows a dummy value for these)."""
DUMMY_TEXT = "ANONYMISED"
DUMMIES = {"AS": "000Y", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "IS": "0", "DS": "0"}
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                      "UC", "UR", "UT", "UI"})
STRING_VRS = TEXT_VRS - {"DA", "DS", "DT", "IS", "TM", "UI"}
"""Text that can spell a name or an ID (numbers, dates and UIDs cannot hold letters)."""
CODED_VRS = frozenset({"CS", "IS", "DS"})
"""Text VRs of codes and numbers: a required Type 1 attribute that only the allowlist would remove
keeps such a value (a dummy would break its enumerated values or references), unless it quotes an
identifier; free text, dates and ages get a dummy."""
NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})
PRESENT_ONLY_WITH = {
    "ClinicalTrialProtocolEthicsCommitteeName": "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
}
"""Type 1C attributes that PS3.3 allows only beside another attribute which E.1-1 removes (its "D"
would leave them present with their condition false). highdicom's tables carry no conditions; this
is the conflict that ``dciodvfy`` finds in a CT holding every row of the table (tests/test_conformance.py)."""
# Values of these (source) attributes identify the patient: none may reappear in a kept value.
IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
               "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber",
               "MedicalRecordLocator", "AdmissionID", "IssuerOfPatientID", "PatientBirthDate",
               "ReferringPhysicianName", "InstitutionName", "InstitutionAddress", "StudyID")
MIN_IDENTIFIER_LEN = 4  # shorter fragments ("M", "CT", initials) would match everywhere

KEEP: frozenset[str] = frozenset({
    # identity of the data, as the de-identification leaves it
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Modality", "ImageType", "Manufacturer", "ManufacturerModelName",
    "SeriesNumber", "InstanceNumber", "AcquisitionNumber", *PSEUDONYMISED, *RETAINED_CHARACTERISTICS,
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
    "LongitudinalTemporalInformationModified", "BurnedInAnnotation",
    # image pixel module and rescale
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames", "PixelData",
    "PixelPaddingValue", "SmallestImagePixelValue", "LargestImagePixelValue", "PixelAspectRatio",
    "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    # geometry
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "SliceLocation", "PatientPosition",
    # CT acquisition and reconstruction (technical, no free text)
    "KVP", "DataCollectionDiameter", "ReconstructionDiameter", "DistanceSourceToDetector",
    "DistanceSourceToPatient", "GantryDetectorTilt", "TableHeight", "RotationDirection", "ExposureTime",
    "XRayTubeCurrent", "Exposure", "ExposureInuAs", "FilterType", "GeneratorPower", "FocalSpots",
    "ConvolutionKernel", "BodyPartExamined", "ScanOptions", "RevolutionTime", "SingleCollimationWidth",
    "TotalCollimationWidth", "TableSpeed", "TableFeedPerRotation", "SpiralPitchFactor", "CTDIvol",
    # references between objects (UIDs only)
    "ReferencedImageSequence", "SourceImageSequence", "ReferencedSOPClassUID",
    "ReferencedSOPInstanceUID", "ReferencedFrameOfReferenceUID", "ReferencedSeriesSequence",
    "ReferencedInstanceSequence",
    # RT structure sets: contours are geometry, ROIs are referenced by number (names are emptied: E.1-1)
    "ReferencedFrameOfReferenceSequence", "RTReferencedStudySequence", "RTReferencedSeriesSequence",
    "ContourImageSequence", "StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence",
    "ContourSequence", "ROINumber", "ReferencedROINumber", "ObservationNumber", "ROIDisplayColor",
    "ContourNumber", "ContourGeometricType", "NumberOfContourPoints", "ContourData", "ROIGenerationAlgorithm",
    "RTROIInterpretedType",
})
# DeidentificationMethod is LO (64 chars at most): the details go in the code sequence.
METHOD = "lungseg: PS3.15 E.1-1 basic profile, allowlist; see (0012,0064)"
# (code, meaning) of DICOM CID 7050 for what was applied.
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113110", "Retain UIDs Option"),
)


def _load_table() -> tuple[dict[BaseTag, str], list[tuple[int, int, int, int, str]]]:
    """The table as {tag: action} plus masked rows (group, element, group mask, element mask, action)
    for the repeating groups (curves 50xx, overlays 60xx)."""
    exact: dict[BaseTag, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in CATEGORY_ACTIONS.items():
        for row in getattr(table_e11, category):
            if len(row) == 2:
                exact[Tag(row[0], row[1])] = action
            else:
                masked.append((*row, action))
    return exact, masked


TABLE, MASKED_ROWS = _load_table()


def table_action(tag: BaseTag) -> str | None:
    """The basic-profile action for ``tag`` with our options, or None when the table has no row."""
    if tag in TABLE:
        return TABLE[tag]
    for group, element, gmask, emask, action in MASKED_ROWS:
        if tag.group & gmask == group and tag.element & emask == element & emask:
            return action
    return None
