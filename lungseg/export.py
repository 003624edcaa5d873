"""Exports of a predicted lung mask: NIfTI (with the scanner geometry), DICOM SEG, overview figure.

Geometry: DICOM patient coordinates are LPS (x to the patient's left, y to the back, z to the head),
NIfTI's are RAS, so the first two world axes change sign. A :class:`~lungseg.dicom.Volume` is indexed
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
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pydicom.sr.codedict import codes

from . import __version__, plots
from .cache import Case
from .dicom import Volume

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
ALGORITHM_NAME = "lungseg 2D UNet"
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110
SEG_SERIES_NUMBER = 9901
MANUFACTURER = "lungseg"
# Type 2 attributes highdicom copies from the source images into the SEG; absent in some series.
_TYPE2_STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                           "AccessionNumber", "StudyID", "StudyDate", "StudyTime")

OVERVIEW_SIZE_IN = (11.0, 6.0)


def voxel_to_lps(volume: Volume) -> np.ndarray:
    """(4, 4) affine from voxel indices (i, j, k) = (column, row, slice) to DICOM LPS mm.

    Column ``i`` steps ``dx`` along the row direction cosine, row ``j`` steps ``dy`` along the column
    cosine, slice ``k`` steps ``dz`` along their cross product (the order the volume is sorted in);
    voxel (0, 0, 0) is the first slice's ImagePositionPatient.
    """
    iop = np.asarray(volume.orientation, dtype=float)
    row_cos, col_cos = iop[:3], iop[3:]
    dz, dy, dx = volume.spacing
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dx
    affine[:3, 1] = col_cos * dy
    affine[:3, 2] = np.cross(row_cos, col_cos) * dz
    affine[:3, 3] = volume.origin
    return affine


def nifti_affine(volume: Volume) -> np.ndarray:
    """(4, 4) RAS affine of the (x, y, z)-ordered NIfTI array, see :func:`voxel_to_lps`."""
    return LPS_TO_RAS @ voxel_to_lps(volume)


def nifti_image(mask: np.ndarray, volume: Volume) -> nib.Nifti1Image:
    """A NIfTI-1 image of a (z, y, x) mask (stored uint8, axes transposed to x, y, z), in mm."""
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the volume {volume.shape}")
    data = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8).transpose(2, 1, 0))
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
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.files]
    for ds in sources:
        for keyword in _TYPE2_STUDY_ATTRIBUTES:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return sources


def segment_description() -> hd.seg.SegmentDescription:
    """The one segment: both lungs, found automatically by this package's UNet."""
    algorithm = hd.AlgorithmIdentificationSequence(ALGORITHM_NAME, ALGORITHM_FAMILY, __version__)
    return hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER, segment_label=SEGMENT_LABEL,
        segmented_property_category=SEGMENT_CATEGORY, segmented_property_type=SEGMENT_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)


def segmentation(mask: np.ndarray, sources: Sequence[pydicom.Dataset]) -> hd.seg.Segmentation:
    """A BINARY DICOM Segmentation of a (z, y, x) mask; ``sources[k]`` is the header of slice ``k``.

    Frames of empty slices are omitted (highdicom's default); the SEG references the source series.
    """
    if len(sources) != mask.shape[0]:
        raise ValueError(f"{len(sources)} source images for a mask of {mask.shape[0]} slices")
    with warnings.catch_warnings():
        # Anonymised names such as "Case_000" have one component; highdicom warns, DICOM allows it.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return hd.seg.Segmentation(
            source_images=list(sources), pixel_array=np.asarray(mask, dtype=bool),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment_description()],
            series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME, software_versions=__version__,
            device_serial_number="0", series_description="lungseg lung mask")


def write_seg(mask: np.ndarray, volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write the DICOM SEG of ``mask`` referencing ``volume``'s source files; return the path."""
    segmentation(mask, read_sources(volume)).save_as(path, enforce_file_format=True)
    return Path(path)


def lung_volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a (z, y, x) bool mask in mL, from the voxel spacing (dz, dy, dx) in mm."""
    return float(np.count_nonzero(mask) * float(np.prod(spacing)) / MM3_PER_ML)


def _overlay(ax: Axes, image: np.ndarray, mask: np.ndarray, extent: list[float], origin: str) -> None:
    lo, hi = plots.DISPLAY_WINDOW_HU
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, extent=extent, origin=origin,
              interpolation="nearest")
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*plots.MASK_COLOUR, plots.MASK_ALPHA)
    ax.imshow(rgba, extent=extent, origin=origin, interpolation="nearest")


def overview_figure(volume: Volume, mask: np.ndarray, title: str = "") -> Figure:
    """Middle axial (y, x) and middle coronal (z, x) slices with ``mask`` overlaid, in mm (true aspect).

    Built without pyplot (no global figure state, no display backend needed).
    """
    fig = Figure(figsize=OVERVIEW_SIZE_IN, layout="constrained")
    ax_axial, ax_coronal = fig.subplots(1, 2)
    nz, ny, nx = volume.shape
    dz, dy, dx = volume.spacing
    k = nz // 2
    # Axial: row 0 (anterior for standard orientation) at the top, as radiology displays it.
    _overlay(ax_axial, np.asarray(volume.hu[k]), np.asarray(mask[k], dtype=bool),
             [0.0, nx * dx, ny * dy, 0.0], "upper")
    ax_axial.set_title(f"axial slice {k} (position {volume.positions[k]:.1f} mm)")
    ax_axial.set_xlabel("x (mm)")
    ax_axial.set_ylabel("y (mm)")
    image, cor_mask, extent = plots.coronal_slice(Case(volume, np.asarray(mask, dtype=bool)))
    _overlay(ax_coronal, image, cor_mask, extent, "lower")
    ax_coronal.set_title(f"coronal row {ny // 2}")
    ax_coronal.set_xlabel("x (mm)")
    ax_coronal.set_ylabel("z (mm)")
    fig.suptitle(title or f"{volume.case_id}: predicted lung mask")
    return fig


def write_overview(volume: Volume, mask: np.ndarray, path: str | os.PathLike[str],
                   title: str = "") -> Path:
    """Write :func:`overview_figure` as PNG via :func:`lungseg.plots.save_figure`."""
    return plots.save_figure(overview_figure(volume, mask, title), path)
