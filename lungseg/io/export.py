"""Exports of a predicted lung mask: NIfTI (with the scanner geometry) and DICOM SEG (the overview
image: :mod:`lungseg.io.overlay`; RTSTRUCT: :mod:`lungseg.io.rtstruct`).

Geometry: DICOM patient coordinates are LPS (x to the patient's left, y to the back, z to the head),
NIfTI's are RAS, so the first two world axes change sign. A :class:`~lungseg.io.dicom.Volume` is indexed
(z, y, x) = (slice, row, column); the NIfTI array is written (x, y, z) = (column, row, slice), the
order of ITK and 3D Slicer, so the mask overlays the CT series loaded from DICOM in those viewers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from lungseg import __version__
from lungseg.io.dicom import Volume
from lungseg.io.orient import voxel_to_lps

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""(4, 4): flips the signs of x and y, DICOM LPS ↔ NIfTI RAS (its own inverse)."""
NIFTI_XFORM_SCANNER = 1
"""qform/sform code "scanner anatomical": world coordinates are the scanner's (DICOM) ones, in RAS."""
MM3_PER_ML = 1000.0

# DICOM SEG: one binary segment, SNOMED CT codes (CID 7150 category, CID 7151 type).
SEGMENT_NUMBER = 1
SEGMENT_LABEL = "Lung"
SEGMENT_CATEGORY = codes.SCT.AnatomicalStructure  # SCT 91723000
SEGMENT_TYPE = codes.SCT.Lung  # SCT 39607008, both lungs as one label
# Per-lung segments (label value -> label, SNOMED CT type from CID 7151), lungmask's convention.
LUNG_SEGMENTS: dict[int, tuple[str, hd.sr.CodedConcept]] = {
    1: ("Right lung", hd.sr.CodedConcept("3341006", "SCT", "Right lung")),
    2: ("Left lung", hd.sr.CodedConcept("44029006", "SCT", "Left lung")),
}
ALGORITHM_NAME = "lungseg 2D UNet"
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110
SEG_SERIES_NUMBER = 9901
MANUFACTURER = "lungseg"
# Type 2 attributes highdicom copies from the source images into the SEG; absent in some series.
_TYPE2_STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                           "AccessionNumber", "StudyID", "StudyDate", "StudyTime")



def nifti_affine(volume: Volume) -> np.ndarray:
    """(4, 4) RAS affine of the (x, y, z)-ordered NIfTI array, see :func:`voxel_to_lps`."""
    return LPS_TO_RAS @ voxel_to_lps(volume)


def nifti_image(mask: np.ndarray, volume: Volume) -> nib.Nifti1Image:
    """A NIfTI-1 image of a (z, y, x) mask or label map (stored uint8: 0 background, 1 = right and
    2 = left lung; axes transposed to x, y, z), in mm."""
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the volume {volume.shape}")
    # A transposed view of a C-ordered copy: Fortran-ordered (x, y, z), as NIfTI stores voxels, so
    # writing needs no reordering copy.
    data = np.array(mask, dtype=np.uint8).transpose(2, 1, 0)
    affine = nifti_affine(volume)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=NIFTI_XFORM_SCANNER)
    img.set_sform(affine, code=NIFTI_XFORM_SCANNER)
    img.header.set_xyzt_units("mm")
    return img


def write_nifti(mask: np.ndarray, volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write :func:`nifti_image` to ``path`` (``.nii.gz``: gzip-compressed); return the path."""
    nib.save(nifti_image(mask, volume), path)
    return Path(path)


def read_sources(volume: Volume) -> list[pydicom.Dataset]:
    """The headers of ``volume.files`` (slice order, pixel data skipped), ready to reference in a SEG.

    Missing Type 2 patient/study attributes are added empty to these in-memory copies, as DICOM
    allows and highdicom requires; the files themselves are never written.
    """
    sources = [pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in volume.files]
    for ds in sources:
        for keyword in _TYPE2_STUDY_ATTRIBUTES:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return sources


def segment_description(number: int = SEGMENT_NUMBER, label: str = SEGMENT_LABEL,
                        kind: hd.sr.CodedConcept = SEGMENT_TYPE) -> hd.seg.SegmentDescription:
    """One segment found automatically by this package's UNet (default: both lungs as one)."""
    algorithm = hd.AlgorithmIdentificationSequence(ALGORITHM_NAME, ALGORITHM_FAMILY, __version__)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=SEGMENT_CATEGORY, segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)


def segmentation(mask: np.ndarray, sources: Sequence[pydicom.Dataset]) -> hd.seg.Segmentation:
    """A BINARY DICOM Segmentation of a (z, y, x) mask; ``sources[k]`` is the header of slice ``k``.

    A bool mask is one segment "Lung"; integer labels (1 = right, 2 = left lung) are two segments
    with their SNOMED CT codes (:data:`LUNG_SEGMENTS`).

    Frames of empty slices are omitted (highdicom's default); the SEG references the source series.
    """
    if len(sources) != mask.shape[0]:
        raise ValueError(f"{len(sources)} source images for a mask of {mask.shape[0]} slices")
    mask = np.asarray(mask)
    if mask.dtype == bool:
        descriptions, pixels = [segment_description()], mask
    else:
        descriptions = [segment_description(n, label, kind) for n, (label, kind) in LUNG_SEGMENTS.items()]
        pixels = mask.astype(np.uint8)
    with warnings.catch_warnings():
        # Anonymised names such as "Case_000" have one component; highdicom warns, DICOM allows it.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return hd.seg.Segmentation(
            source_images=list(sources), pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME, software_versions=__version__,
            device_serial_number="0", series_description="lungseg lung mask")


def write_seg(mask: np.ndarray, volume: Volume, path: str | os.PathLike[str],
              sources: Sequence[pydicom.Dataset] | None = None) -> Path:
    """Write the DICOM SEG of ``mask`` referencing ``volume``'s source files; return the path.
    ``sources``: :func:`read_sources` of ``volume`` when the caller has them already."""
    segmentation(mask, read_sources(volume) if sources is None else sources).save_as(
        path, enforce_file_format=True)
    return Path(path)


def lung_volume_ml(mask: np.ndarray, spacing: Sequence[float], label: int | None = None) -> float:
    """Volume in mL of a (z, y, x) mask (non-zero voxels, or those equal to ``label``), from the voxel
    spacing (dz, dy, dx) in mm."""
    voxels = np.count_nonzero(mask if label is None else np.asarray(mask) == label)
    return float(voxels * float(np.prod(spacing)) / MM3_PER_ML)
