"""Module 1: read one DICOM CT series into a 3D volume in Hounsfield units (HU), and its lung mask.

Slices are sorted by their position along the slice normal (file names do not follow slice order in
every case), the slice step ``dz`` is measured from those positions, and every inconsistency is an
error that names the file and the problem, so no silently wrong volume reaches training.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

# A slice step may deviate from the series' median step by this much before it counts as a gap or
# an uneven series (CT positions are written with ~1e-3 mm precision; a missing slice doubles a step).
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.01
# In-plane drift allowed between consecutive slice positions (gantry tilt / sheared series otherwise).
SHEAR_ATOL_MM = 0.01
# Two slices closer than this along the normal are duplicates.
DUPLICATE_ATOL_MM = 1e-3
# Tolerance for PixelSpacing (mm) and orientation cosines agreeing between slices of one series.
GEOMETRY_ATOL = 1e-4
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


class DicomSeriesError(ValueError):
    """A folder that cannot be turned into one consistent volume; the message names file and problem."""


class MaskError(ValueError):
    """A mask file that is missing its array, is not binary, or does not match its volume."""


class DicomWarning(UserWarning):
    """Something was skipped or a fallback was used while reading a series."""


@dataclass(frozen=True)
class Volume:
    """A CT volume. ``hu`` is (z, y, x) in HU, z ascending along the slice normal."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    """(dz, dy, dx) in mm; dz measured from the slice positions."""
    origin: tuple[float, float, float]
    """ImagePositionPatient (x, y, z, mm) of the first slice."""
    positions: np.ndarray
    """(z,) position of each slice along the slice normal, ascending, in mm."""
    files: tuple[str, ...]
    """Source file of each slice, in slice order."""
    case_id: str
    series_uid: str
    orientation: tuple[float, ...]
    """ImageOrientationPatient: row then column direction cosines."""
    sort_key: str
    """Which attribute ordered the slices: ImagePositionPatient, SliceLocation or InstanceNumber."""
    slice_thickness: float | None = None
    """SliceThickness as written in the files (mm), for reference; geometry uses ``spacing``."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def filename_order_differs(self) -> bool:
        """True when sorting the files by name would not give the slice order (either direction)."""
        names = [Path(f).name for f in self.files]
        by_name = sorted(names)
        return names != by_name and names != by_name[::-1]


@dataclass
class _Slice:
    """What one file contributes: plain header values (parsed once) and its stored pixels."""

    path: Path
    series_uid: str
    size: tuple[int, int]
    pixel_spacing: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    slice_location: float | None
    instance_number: int
    slope: float
    intercept: float
    thickness: float | None
    pixels: np.ndarray


def _floats(value: object) -> tuple[float, ...] | None:
    return None if value is None or value == "" else tuple(float(v) for v in value)  # type: ignore[attr-defined]


def _number(value: object) -> float | None:
    return None if value is None or value == "" else float(value)  # type: ignore[arg-type]


def _slope(path: Path, ds: pydicom.Dataset) -> float:
    """RescaleSlope (1 when absent); 0 or non-finite is an error, not a silent 1."""
    slope = _number(ds.get("RescaleSlope"))
    if slope is None:
        return 1.0
    if slope == 0 or not np.isfinite(slope):
        raise DicomSeriesError(f"{path}: invalid RescaleSlope {slope}")
    return slope


def stored_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """The stored values of one single-frame greyscale slice, (rows, cols), without rescaling.

    Raises DicomSeriesError naming ``path`` for truncated pixel data, colour or multi-frame images
    and undecodable (compressed, no plugin) pixel data.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(f"{path}: {ds.get('SamplesPerPixel')} samples per pixel "
                               f"({ds.get('PhotometricInterpretation', '?')}): not a greyscale CT slice")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomSeriesError(f"{path}: multi-frame image ({frames} frames, e.g. Enhanced CT); "
                               "only single-frame slices are supported: convert to one file per slice")
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsuid is not None and not tsuid.is_compressed and tsuid.is_little_endian:
        # Uncompressed little endian: view the bytes directly (pydicom's pixel_array is slower).
        kind = "i" if int(ds.get("PixelRepresentation", 0)) else "u"
        nbytes = int(ds.BitsAllocated) // 8
        buf = ds.PixelData
        need = rows * cols * nbytes
        if len(buf) < need:
            raise DicomSeriesError(f"{path}: truncated pixel data ({len(buf)} of {need} bytes)")
        arr = np.frombuffer(buf, dtype=f"<{kind}{nbytes}", count=rows * cols).reshape(rows, cols)
        bits_stored = int(ds.get("BitsStored", nbytes * 8))
        if kind == "i" and bits_stored < nbytes * 8:  # sign-extend values stored in fewer bits
            shift = nbytes * 8 - bits_stored
            arr = (arr << shift) >> shift
        return arr
    try:
        return ds.pixel_array
    except Exception as exc:
        raise DicomSeriesError(
            f"{path}: cannot decode pixel data in transfer syntax {tsuid} "
            f"({tsuid.name if tsuid else '?'}): {exc}. For compressed syntaxes install a decoder "
            "plugin, e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or "
            "`pip install imagecodecs`"
        ) from exc


def should_hold_image(ds: pydicom.Dataset) -> bool:
    """True when the header declares an image (image SOP class or Rows), pixel data or not."""
    meta = getattr(ds, "file_meta", None)
    uids = (ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta else None)
    return "Rows" in ds or any(u is not None and "Image Storage" in UID(u).name for u in uids)


def _read_one(path: Path) -> _Slice | None:
    """Read one file; None (with a warning) for a non-DICOM file or a DICOM file without an image."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise DicomSeriesError(f"{path}: not a valid DICOM file (no DICM preamble)") from None
        warnings.warn(f"skipping non-DICOM file {path}", DicomWarning, stacklevel=2)
        return None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DicomSeriesError(f"{path}: unreadable or truncated DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        if should_hold_image(ds):  # pydicom stops quietly at the end of a cut-off file
            raise DicomSeriesError(f"{path}: image file without pixel data (truncated or damaged)")
        warnings.warn(f"skipping {path}: DICOM without pixel data "
                      f"({ds.get('Modality', '?')}, not an image)", DicomWarning, stacklevel=2)
        return None
    try:
        return _Slice(
            path=path,
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            size=(int(ds.Rows), int(ds.Columns)),
            pixel_spacing=_floats(ds.get("PixelSpacing")),
            orientation=_floats(ds.get("ImageOrientationPatient")),
            position=_floats(ds.get("ImagePositionPatient")),
            slice_location=_number(ds.get("SliceLocation")),
            instance_number=int(ds.get("InstanceNumber") or 0),
            slope=_slope(path, ds),
            intercept=_number(ds.get("RescaleIntercept")) or 0.0,
            thickness=_number(ds.get("SliceThickness")),
            pixels=stored_pixels(path, ds),
        )
    except DicomSeriesError:
        raise
    except Exception as exc:  # a damaged header value (e.g. a truncated DS string)
        raise DicomSeriesError(f"{path}: unreadable or truncated DICOM file ({exc})") from exc


def _list_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file())


def _pick_series(slices: list[_Slice], folder: Path, series_uid: str | None) -> list[_Slice]:
    counts = Counter(s.series_uid for s in slices)
    if series_uid is not None:
        chosen = [s for s in slices if s.series_uid == series_uid]
        if not chosen:
            raise DicomSeriesError(f"{folder}: no slice of series {series_uid}; found {dict(counts)}")
        return chosen
    if len(counts) > 1:
        listing = ", ".join(f"{uid or '<missing>'} ({n} files)" for uid, n in counts.most_common())
        raise DicomSeriesError(
            f"{folder}: more than one series ({listing}); pass series_uid= to pick one"
        )
    return slices


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        if s.size != first.size:
            raise DicomSeriesError(f"{s.path}: Rows/Columns {s.size} differ from {first.size} "
                                   f"in {first.path}")
        for name in ("pixel_spacing", "orientation"):
            a, b = getattr(s, name), getattr(first, name)
            if (a is None) != (b is None) or (a is not None and not np.allclose(a, b, atol=GEOMETRY_ATOL)):
                label = "PixelSpacing" if name == "pixel_spacing" else "ImageOrientationPatient"
                raise DicomSeriesError(f"{s.path}: {label} {a} differs from {b} in {first.path}")


def _sort_positions(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray | None, str]:
    """Order slices; return them, their positions along the normal (mm) or None, and the key used."""
    if all(s.position is not None and s.orientation is not None for s in slices):
        iop = np.asarray(slices[0].orientation, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        pos = np.asarray([s.position for s in slices], dtype=float) @ normal
        key = "ImagePositionPatient"
        for s, p in zip(slices, pos, strict=True):
            if not np.isfinite(p):
                raise DicomSeriesError(f"{s.path}: non-finite ImagePositionPatient {s.position}")
    elif all(s.slice_location is not None for s in slices):
        warnings.warn(f"{slices[0].path.parent}: no ImagePositionPatient/ImageOrientationPatient; "
                      "sorting by SliceLocation", DicomWarning, stacklevel=3)
        pos = np.array([s.slice_location for s in slices], dtype=float)
        key = "SliceLocation"
    else:
        warnings.warn(f"{slices[0].path.parent}: no slice positions; sorting by InstanceNumber and "
                      "taking dz from SliceThickness", DicomWarning, stacklevel=3)
        order = np.argsort([s.instance_number for s in slices], kind="stable")
        return [slices[i] for i in order], None, "InstanceNumber"
    order = np.argsort(pos, kind="stable")
    return [slices[i] for i in order], pos[order], key


def _check_along_normal(slices: list[_Slice]) -> None:
    """Consecutive ImagePositionPatient must differ only along the slice normal: a sheared series
    (gantry tilt) would get a wrong dz and affine, so it is refused rather than silently resampled."""
    iop = np.asarray(slices[0].orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    steps = np.diff(np.asarray([s.position for s in slices], dtype=float), axis=0)
    in_plane = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    for i in np.flatnonzero(in_plane > SHEAR_ATOL_MM):
        raise DicomSeriesError(
            f"{slices[i + 1].path}: slice position shifts {in_plane[i]:.3f} mm in-plane from "
            f"{slices[i].path.name} (gantry tilt or sheared series; not supported)")


def _check_steps(slices: list[_Slice], pos: np.ndarray) -> float:
    """Median slice step (mm); raises on duplicates, gaps and uneven steps."""
    steps = np.diff(pos)
    for i in np.flatnonzero(steps < DUPLICATE_ATOL_MM):
        raise DicomSeriesError(f"duplicate slice position {pos[i]:.3f} mm: {slices[i].path} and "
                               f"{slices[i + 1].path}")
    # Lower median: with an even number of steps and one gap, the plain median would average the
    # true step with the gap and blame the wrong pair of files.
    dz = float(np.sort(steps)[(len(steps) - 1) // 2])
    tol = max(SPACING_ATOL_MM, SPACING_RTOL * dz)
    for i in np.flatnonzero(np.abs(steps - dz) > tol):
        what = "gap (missing slice?)" if steps[i] > dz else "uneven spacing"
        raise DicomSeriesError(
            f"{what}: {steps[i]:.3f} mm between {slices[i].path.name} and {slices[i + 1].path.name} "
            f"in {slices[i].path.parent}, where the series steps {dz:.3f} mm "
            f"(tolerance {tol:.3f} mm)"
        )
    return dz


def _to_hu(slices: list[_Slice]) -> np.ndarray:
    """Stack and rescale: HU = stored * RescaleSlope + RescaleIntercept (1 and 0 when absent).

    Returns (z, y, x) int16 when every rescale is integral and the HU range fits int16 (CT almost
    always), else float32. Slices are written straight into one preallocated array.
    """
    integral = all(v == round(v) for s in slices for v in (s.slope, s.intercept))
    if integral:
        out = np.empty((len(slices), *slices[0].pixels.shape), dtype=np.int16)
        for i, s in enumerate(slices):
            lo, hi = sorted((int(s.pixels.min()) * s.slope + s.intercept,
                             int(s.pixels.max()) * s.slope + s.intercept))
            if lo < -32768 or hi > 32767:  # does not fit: fall back to float32 below
                break
            if s.slope == 1:
                np.add(s.pixels, np.int32(s.intercept), out=out[i], casting="unsafe")
            else:
                out[i] = s.pixels.astype(np.int32) * int(s.slope) + int(s.intercept)
        else:
            return out
    return np.stack([s.pixels.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
                     for s in slices])


def read_slices(folder: str | os.PathLike[str]) -> list[_Slice]:
    """Read every image file in ``folder`` (not recursive); non-DICOM files are skipped with a warning."""
    folder = Path(folder)
    files = _list_files(folder)
    # A plain loop: parsing is pure Python under the GIL, and measured threads or processes slower.
    slices = [s for s in map(_read_one, files) if s is not None]
    if not slices:
        raise DicomSeriesError(f"{folder}: no DICOM image in the folder ({len(files)} files)")
    return slices


def load_series(folder: str | os.PathLike[str], series_uid: str | None = None) -> Volume:
    """Read a DICOM series folder into a :class:`Volume` (z, y, x) in HU, sorted by slice position.

    Sorting uses ImagePositionPatient projected on the slice normal (cross product of the two
    ImageOrientationPatient cosines), falling back to SliceLocation, then InstanceNumber, with a
    :class:`DicomWarning`. Raises :class:`DicomSeriesError` naming the file for unreadable files, no
    image, several series (unless ``series_uid`` picks one), inconsistent geometry, duplicate
    positions and gaps or uneven steps beyond ``SPACING_RTOL``/``SPACING_ATOL_MM``.
    """
    folder = Path(folder)
    slices = _pick_series(read_slices(folder), folder, series_uid)
    _check_consistent(slices)
    slices, pos, key = _sort_positions(slices)
    first = slices[0]
    if pos is not None and len(slices) > 1:
        dz = _check_steps(slices, pos)
        if key == "ImagePositionPatient":
            _check_along_normal(slices)
    else:
        dz = first.thickness or 1.0
        pos = np.arange(len(slices), dtype=float) * dz
    dy, dx = first.pixel_spacing or (1.0, 1.0)
    return Volume(
        hu=_to_hu(slices),
        spacing=(dz, float(dy), float(dx)),
        origin=first.position or (0.0, 0.0, float(pos[0])),
        positions=np.asarray(pos, dtype=float),
        files=tuple(str(s.path) for s in slices),
        case_id=folder.name,
        series_uid=first.series_uid,
        orientation=first.orientation or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        sort_key=key,
        slice_thickness=first.thickness,
    )


MASK_KEY = "masks"


def load_mask(npz_path: str | os.PathLike[str], volume: Volume | None = None) -> np.ndarray:
    """Load the lung mask (z, y, x) as bool from ``npz_path`` (array under the key ``masks``).

    The masks line up with the ascending-position volume without any flip (see the data README).
    Raises FileNotFoundError, or :class:`MaskError` for a missing key, a non-binary or NaN array, a
    non-3D array, or a shape different from ``volume.hu.shape``.
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"mask file not found: {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            if MASK_KEY not in npz.files:
                raise MaskError(f"{npz_path}: no array '{MASK_KEY}' (keys: {npz.files})")
            arr = npz[MASK_KEY]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        if isinstance(exc, MaskError):
            raise
        raise MaskError(f"{npz_path}: not a readable .npz file ({exc})") from exc
    if arr.ndim != 3:
        raise MaskError(f"{npz_path}: '{MASK_KEY}' has shape {arr.shape}, expected (z, y, x)")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise MaskError(f"{npz_path}: '{MASK_KEY}' contains NaN")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        values = np.unique(arr)[:10]
        raise MaskError(f"{npz_path}: '{MASK_KEY}' is not binary (values {values.tolist()} ...)")
    if volume is not None and arr.shape != volume.hu.shape:
        raise MaskError(f"{npz_path}: mask shape {arr.shape} does not match the image volume "
                        f"{volume.hu.shape} of {volume.case_id}")
    return arr.astype(bool, copy=False)
