"""Hospital-export variants of a CT volume for the hostile-input corpora (orientation, bit depth).

:func:`base_volume` is a crop of real slices of Case_000 when the data is unpacked (so the variants
are "real slices in another export") and a synthetic phantom otherwise; :func:`write_oriented`
writes it as a DICOM series acquired in any axis-aligned orientation, with the geometry tags a
scanner would write, so that reading it back and bringing it to the canonical orientation must
give the very same voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lungseg import paths
from lungseg.io import orient
from lungseg.io.dicom import Volume, load_series

CROP = (slice(60, 72), slice(176, 336), slice(176, 336))  # 12 slices of 160 x 160 through both lungs
ORIENTATIONS: dict[str, tuple[float, ...]] = {
    "axial-HFS": (1, 0, 0, 0, 1, 0),
    "axial-HFP": (-1, 0, 0, 0, -1, 0),
    "axial-FFS": (-1, 0, 0, 0, 1, 0),
    "axial-FFP": (1, 0, 0, 0, -1, 0),
    "coronal": (1, 0, 0, 0, 0, -1),
    "sagittal": (0, 1, 0, 0, 0, -1),
}


def base_volume() -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float], str]:
    """(hu (z, y, x) int16 canonical, spacing (dz, dy, dx) mm, origin (x, y, z) LPS mm, source)."""
    folder = paths.DEFAULT_DATA / "Images" / "Case_000"
    if folder.is_dir():
        vol = load_series(folder)
        hu = np.ascontiguousarray(vol.hu[CROP])
        z0, y0, x0 = (s.start for s in CROP)
        dz, dy, dx = vol.spacing
        origin = (vol.origin[0] + x0 * dx, vol.origin[1] + y0 * dy, float(vol.positions[z0]))
        return hu, vol.spacing, origin, "Case_000 crop"
    z, y, x = np.mgrid[0:8, 0:48, 0:48]
    hu = np.where((np.abs(x - 14) < 8) & (np.abs(y - 24) < 14), -850, 40).astype(np.int16)
    hu[(np.abs(x - 34) < 6) & (np.abs(y - 20) < 10)] = -800
    hu += (z * 3).astype(np.int16)
    return hu, (2.5, 0.7, 0.7), (-20.0, -30.0, 100.0), "synthetic phantom"


def _native_geometry(shape: tuple[int, ...], spacing: tuple[float, ...], origin: tuple[float, ...],
                     iop: tuple[float, ...]) -> tuple[orient.Reorientation, tuple[int, ...], np.ndarray,
                                                      np.ndarray, tuple[float, ...]]:
    """Reorientation of an acquisition with ``iop``; its shape, origin, normal and spacing."""
    probe = Volume(hu=np.zeros((1, 1, 1)), spacing=(1, 1, 1), origin=(0, 0, 0), positions=np.zeros(1),
                   files=(), case_id="probe", series_uid="", orientation=iop, sort_key="")
    reo = orient.reorientation(probe)
    native_axes = np.argsort(reo.axes)  # canonical axis of each native axis
    native_shape = tuple(shape[a] for a in native_axes)
    corner = np.array([shape[a] - 1 if reo.flips[a] else 0 for a in range(3)])  # canonical z, y, x
    world = np.asarray(origin) + np.asarray(spacing)[::-1] * corner[::-1]  # x, y, z
    dirs = orient.axis_directions(probe)
    native_spacing = tuple(spacing[a] for a in native_axes)
    return reo, native_shape, world, dirs[0], native_spacing


def write_oriented(folder: Path, hu: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...],
                   iop: tuple[float, ...], *, unsigned_bits: int | None = None,
                   overlay_bit: bool = False, names: str = "IM{:04d}") -> list[Path]:
    """Write the canonical ``hu`` as a CT series acquired with ImageOrientationPatient ``iop``.

    ``unsigned_bits`` stores HU + 1024 unsigned in that many bits (RescaleIntercept -1024);
    ``overlay_bit`` then also sets the top bit of BitsAllocated in a corner block (an embedded
    overlay plane, which a reader must mask off). Returns the paths in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    reo, shape, world0, normal, nsp = _native_geometry(hu.shape, spacing, origin, iop)
    native = reo.to_native(hu)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / names.format(k + 1)
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Case_950", "Case_950"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [round(float(v), 5) for v in world0 + k * nsp[0] * normal]
        ds.PixelSpacing = [nsp[1], nsp[2]]
        ds.SliceThickness = nsp[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = native.shape[1:]
        ds.BitsAllocated, ds.RescaleSlope = 16, 1
        pixels = native[k].astype(np.int32)
        if unsigned_bits:
            stored = (pixels + 1024).astype(np.uint16)
            if overlay_bit:
                stored[:4, :4] |= np.uint16(1 << 15)
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = unsigned_bits, unsigned_bits - 1, 0
            ds.RescaleIntercept = -1024
            ds.PixelData = stored.astype("<u2").tobytes()
        else:
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
            ds.RescaleIntercept = 0
            ds.PixelData = pixels.astype("<i2").tobytes()
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out
