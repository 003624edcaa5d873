"""Tiny synthetic CT series and data trees for the tests (no real data needed).

Slice ``i`` of a series lies at z = ``z0 + i * dz`` and stores ``BASE_STORED + STEP_STORED * i``
plus a small in-plane pattern (:func:`stored_slice`), so every test can compute the HU it expects.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

BASE_STORED = 1024
STEP_STORED = 10
PATTERN_PERIOD = 7
DEFAULT_SLOPE = 1.0
DEFAULT_INTERCEPT = -1024.0
DEFAULT_PIXEL_SPACING = (0.75, 0.8)  # (dy, dx) mm: different so a swap would show
DEFAULT_Z0 = -120.0
SHUFFLE_SEED = 7

# Patient data written with ``phi=True`` (all fake).
PHI: dict[str, str] = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN0012345",
    "PatientBirthDate": "19650601",
    "PatientBirthTime": "101500",
    "OtherPatientIDs": "OLD-0042",
    "PatientAddress": "1 Main Street, Springfield",
}
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "ACME 1.0"
PRIVATE_VALUE = "Jane Doe, ward 4"


def stored_slice(i: int, rows: int = 16, cols: int = 16) -> np.ndarray:
    """The stored (pre-rescale) values of slice ``i``: a constant per slice plus a small pattern."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (BASE_STORED + STEP_STORED * i + (r + 2 * c) % PATTERN_PERIOD).astype(np.int32)


def expected_hu(i: int, rows: int = 16, cols: int = 16, slope: float = DEFAULT_SLOPE,
                intercept: float = DEFAULT_INTERCEPT) -> np.ndarray:
    """HU of slice ``i`` (stored * slope + intercept), as float64."""
    return stored_slice(i, rows, cols) * slope + intercept


def _names(n: int, shuffle: bool, seed: int) -> list[str]:
    """File name of each slice index; with ``shuffle`` neither name order nor its reverse is slice
    order."""
    numbers = list(range(1, n + 1))
    if shuffle and n > 2:
        rng = random.Random(seed)
        while numbers in (sorted(numbers), sorted(numbers, reverse=True)):
            rng.shuffle(numbers)
    return [f"1-{k:03d}.dcm" for k in numbers]


def make_dataset(path: Path, i: int, *, rows: int, cols: int, z: float, series_uid: str,
                 study_uid: str, frame_uid: str, case_id: str, phi: bool, rescale: bool,
                 slope: float, intercept: float, signed: bool,
                 pixel_spacing: Sequence[float], thickness: float) -> FileDataset:
    """One uncompressed CT slice as a pydicom dataset (not yet written)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        study_uid, series_uid, frame_uid)
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    if phi:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", PRIVATE_VALUE)
    else:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = case_id, case_id, ""
    ds.InstanceNumber = i + 1
    ds.ImagePositionPatient = [-100.0, -90.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = thickness
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored_slice(i, rows, cols).astype("<i2" if signed else "<u2").tobytes()
    return ds


def write_series(folder: str | Path, n: int = 5, rows: int = 16, cols: int = 16, dz: float = 3.0,
                 shuffle: bool = True, phi: bool = False, rescale: bool = True,
                 series_uid: str | None = None, *, z0: float = DEFAULT_Z0,
                 slope: float = DEFAULT_SLOPE, intercept: float = DEFAULT_INTERCEPT,
                 signed: bool = True, pixel_spacing: Sequence[float] = DEFAULT_PIXEL_SPACING,
                 compress: bool = False, first_index: int = 0, seed: int = SHUFFLE_SEED,
                 names: Sequence[str] | None = None) -> list[Path]:
    """Write ``n`` CT slices into ``folder`` and return their paths in slice-index order.

    Slice ``i`` (``first_index <= i < first_index + n``) is at z = ``z0 + i * dz`` and stores
    :func:`stored_slice` ``(i)``. With ``shuffle`` the file names follow neither slice order nor its
    reverse; ``names`` overrides them. ``rescale=False`` omits RescaleSlope/Intercept; ``compress``
    writes RLE Lossless; ``phi`` adds the fake patient data of :data:`PHI` and a private tag.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    names = list(names) if names is not None else _names(n, shuffle, seed)
    out = []
    for k in range(n):
        i = first_index + k
        path = folder / names[k]
        ds = make_dataset(path, i, rows=rows, cols=cols, z=z0 + i * dz, series_uid=series_uid,
                          study_uid=study_uid, frame_uid=frame_uid, case_id=folder.name,
                          phi=phi, rescale=rescale, slope=slope, intercept=intercept,
                          signed=signed, pixel_spacing=pixel_spacing, thickness=abs(dz))
        if compress:
            ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def write_mask(path: str | Path, mask: np.ndarray, key: str = "masks") -> Path:
    """Save ``mask`` as a compressed .npz under ``key``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{key: mask})
    return path


def lung_mask(n: int, rows: int = 16, cols: int = 16) -> np.ndarray:
    """An int64 {0, 1} mask (the real data's dtype) with a block in every slice."""
    mask = np.zeros((n, rows, cols), dtype=np.int64)
    mask[:, rows // 4: rows // 2, cols // 4: 3 * cols // 4] = 1
    return mask


def write_case(data: str | Path, case_id: str = "Case_900", n: int = 5, rows: int = 16,
               cols: int = 16, **series_kwargs: object) -> tuple[list[Path], Path]:
    """A DATA tree with one case: ``Images/<case_id>/*.dcm`` and ``Segmentations/<id>_seg.npz``."""
    data = Path(data)
    files = write_series(data / "Images" / case_id, n=n, rows=rows, cols=cols,
                         **series_kwargs)  # type: ignore[arg-type]
    mask = write_mask(data / "Segmentations" / f"{case_id}_seg.npz", lung_mask(n, rows, cols))
    return files, mask


def edit(path: Path, **attributes: object) -> None:
    """Rewrite a DICOM file with ``attributes`` set (``None`` deletes the attribute)."""
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)

