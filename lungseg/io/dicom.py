"""Module 1: read one DICOM CT series into a 3D volume in Hounsfield units (HU) (its lung mask: ``masks``).

Slices are sorted by their position along the slice normal (file names do not follow slice order in
every case), the slice step ``dz`` is measured from those positions, and every inconsistency is an
error that names the file and the problem, so no silently wrong volume reaches training.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.uid import UID

from lungseg.io import pixels, series
from lungseg.io.errors import DicomSeriesError, DicomWarning

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
# ImageOrientationPatient cosines must be unit vectors and orthogonal to this precision.
ORIENTATION_ATOL = 1e-3


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
    """Which attribute ordered the slices: always ImagePositionPatient (positions are required)."""
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
    """What one file contributes: plain header values (parsed and validated once) and its pixels."""

    path: Path
    series_uid: str
    modality: str
    description: str
    image_type: str
    size: tuple[int, int]
    pixel_spacing: tuple[float, float]
    orientation: tuple[float, ...]
    position: tuple[float, float, float]
    slope: float
    intercept: float
    thickness: float | None
    pixels: np.ndarray


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """The one rule for "is this file DICOM?", used by every command.

    True for a Part 10 file ('DICM' after the 128-byte preamble) and for a bare data set without the
    preamble whose first element is a File Meta (0002,xxxx) or Identifying (0008,xxxx) element in
    little endian, explicit or implicit VR (what some older exports write). Decided by content, never
    by the file name.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return struct.unpack("<I", head[4:8])[0] < 0x10000  # implicit VR: a plausible value length


def find_dicom_files(folder: str | os.PathLike[str], recursive: bool | None = None
                     ) -> tuple[list[Path], list[Path]]:
    """(DICOM files, other files) in ``folder``, each sorted by path; hidden files are ignored.

    ``recursive=None`` looks into subfolders when the folder holds a ``DICOMDIR`` or no file but
    subfolders (a media export). The DICOMDIR index itself is not a data file and is left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    top = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if recursive is None:
        recursive = any(p.name.upper() == "DICOMDIR" for p in top) or (
            not any(p.is_file() for p in top) and any(p.is_dir() for p in top))
    candidates = folder.rglob("*") if recursive else top
    files = sorted(p for p in candidates if p.is_file() and p.name.upper() != "DICOMDIR"
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    dicom = [p for p in files if is_dicom(p)]
    return dicom, [p for p in files if p not in set(dicom)]


def read_dataset(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """``pydicom.dcmread`` of a file that :func:`is_dicom`; any parse failure is a DicomSeriesError."""
    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DicomSeriesError(f"{path}: unreadable or truncated DICOM file ({exc})") from exc


def _tag_values(path: Path, ds: pydicom.Dataset, keyword: str, n: int | None) -> tuple[float, ...] | None:
    """The finite numbers of a multi-valued tag (``n`` of them when given), None when absent/empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, MultiValue | list | tuple) else [value]))
    except (TypeError, ValueError):
        raise DicomSeriesError(f"{path}: {keyword} {value!r} is not numeric") from None
    if n is not None and len(values) != n:
        raise DicomSeriesError(f"{path}: {keyword} has {len(values)} values {list(values)}, expected {n}")
    if not all(np.isfinite(values)):
        raise DicomSeriesError(f"{path}: {keyword} {list(values)} is not finite")
    return values


def _required(path: Path, ds: pydicom.Dataset, keyword: str, n: int) -> tuple[float, ...]:
    values = _tag_values(path, ds, keyword, n)
    if values is None:
        raise DicomSeriesError(f"{path}: {keyword} is missing; without it the geometry is unknown")
    return values


def _optional_number(ds: pydicom.Dataset, keyword: str) -> float | None:
    """A single optional number; unparsable or non-finite values are ignored (None)."""
    try:
        value = pixels.number(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if value is not None and np.isfinite(value) else None


def _check_geometry(path: Path, spacing: tuple[float, ...], iop: tuple[float, ...]) -> None:
    """PixelSpacing positive; ImageOrientationPatient two orthogonal unit vectors."""
    if min(spacing) <= 0:
        raise DicomSeriesError(f"{path}: PixelSpacing {list(spacing)} must be two positive values (mm)")
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    if (abs(np.linalg.norm(row) - 1) > ORIENTATION_ATOL or abs(np.linalg.norm(col) - 1) > ORIENTATION_ATOL
            or abs(row @ col) > ORIENTATION_ATOL):
        raise DicomSeriesError(f"{path}: ImageOrientationPatient {list(iop)} is not two orthogonal "
                               "unit vectors")


def should_hold_image(ds: pydicom.Dataset) -> bool:
    """True when the header declares an image (image SOP class or Rows), pixel data or not."""
    meta = getattr(ds, "file_meta", None)
    uids = (ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta else None)
    return "Rows" in ds or any(u is not None and "Image Storage" in UID(u).name for u in uids)


def _header(path: Path, ds: pydicom.Dataset) -> dict:
    """The validated header values of one image file (errors name the file and the tag)."""
    spacing = _required(path, ds, "PixelSpacing", 2)
    iop = _required(path, ds, "ImageOrientationPatient", 6)
    _check_geometry(path, spacing, iop)
    slope, intercept = pixels.rescale(path, ds)
    return dict(
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        image_type="\\".join(str(v) for v in (ds.get("ImageType") or [])),
        size=(int(ds.Rows), int(ds.Columns)),
        pixel_spacing=(spacing[0], spacing[1]),
        orientation=iop,
        position=_required(path, ds, "ImagePositionPatient", 3),
        slope=slope, intercept=intercept,
        thickness=_optional_number(ds, "SliceThickness"),
    )


def _read_one(path: Path) -> _Slice | None:
    """Read one DICOM file; None (with a warning) for a DICOM file that holds no image."""
    ds = read_dataset(path)
    if "PixelData" not in ds:
        if should_hold_image(ds):  # pydicom stops quietly at the end of a cut-off file
            raise DicomSeriesError(f"{path}: image file without pixel data (truncated or damaged)")
        warnings.warn(f"skipping {path}: DICOM without pixel data "
                      f"({ds.get('Modality', '?')}, not an image)", DicomWarning, stacklevel=2)
        return None
    try:
        pixels.check_format(path, ds)  # an Enhanced CT file has no per-file geometry: say what it is
        header = _header(path, ds)
        return _Slice(path=path, pixels=pixels.stored_pixels(path, ds), **header)
    except DicomSeriesError:
        raise
    except Exception as exc:  # a damaged header value (e.g. a truncated DS string)
        raise DicomSeriesError(f"{path}: unreadable or truncated DICOM file ({exc})") from exc


def describe_series(slices: list[_Slice]) -> str:
    """One line per series: UID, modality, plane, slices, image type and description."""
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    return "; ".join(
        f"{uid or '<no SeriesInstanceUID>'}: {g[0].modality or '?'} {series.plane_name(g[0].orientation)}, "
        f"{len(g)} slices" + (f", {g[0].image_type}" if g[0].image_type else "")
        + (f", '{g[0].description}'" if g[0].description else "")
        for uid, g in sorted(groups.items(), key=lambda kv: -len(kv[1])))


def series_facts(slices: list[_Slice]) -> list[series.SeriesFacts]:
    """What :mod:`lungseg.io.series` reads of each series among ``slices`` (in order of appearance)."""
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    facts = []
    for uid, g in groups.items():
        iop = g[0].orientation
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float)) if len(iop) == 6 else None
        steps = np.diff(np.sort([float(np.dot(s.position, normal)) for s in g])) if normal is not None else []
        steps = [d for d in steps if d > DUPLICATE_ATOL_MM]
        thick = [s.thickness for s in g if s.thickness]
        facts.append(series.SeriesFacts(
            uid=uid, modality=g[0].modality, images=len(g), orientation=tuple(iop) if len(iop) == 6 else None,
            localizer=any("LOCALIZER" in s.image_type.upper() for s in g)
            or len({tuple(np.round(s.orientation, 3)) for s in g}) > 1,
            derived=series.is_derived([s.image_type for s in g]),
            thickness=float(np.median(thick)) if thick else None,
            step=float(np.median(steps)) if len(steps) else None))
    return facts


def _pick_series(slices: list[_Slice], folder: Path, series_uid: str | None) -> list[_Slice]:
    """The slices of ``series_uid``; without it, the only series, or the one
    :func:`lungseg.io.series.choose` prefers (said in a DicomWarning)."""
    uids = Counter(s.series_uid for s in slices)
    if series_uid is not None:
        chosen = [s for s in slices if s.series_uid == series_uid]
        if not chosen:
            raise DicomSeriesError(f"{folder}: no slice of series {series_uid}; found "
                                   f"{describe_series(slices)}")
        return chosen
    if len(uids) == 1:
        return slices
    candidates = [f for f in series_facts(slices) if not series.not_a_volume(f)]
    try:
        best = series.choose(candidates)
    except series.AmbiguousSeries as exc:
        raise DicomSeriesError(f"{folder}: more than one series and no single best CT series ({exc}): "
                               f"{describe_series(slices)}; choose one with --series UID") from None
    except ValueError:
        raise DicomSeriesError(f"{folder}: more than one series and no CT volume among them: "
                               f"{describe_series(slices)}; choose one with --series UID") from None
    warnings.warn(f"{folder}: {len(uids)} series; using {best.describe()} by the rule ({series.RULE}) "
                  f"(all: {describe_series(slices)}); choose another with --series UID",
                  DicomWarning, stacklevel=3)
    return [s for s in slices if s.series_uid == best.uid]


def _check_consistent(slices: list[_Slice]) -> None:
    first = slices[0]
    if first.modality and first.modality != "CT":
        raise DicomSeriesError(f"{first.path}: Modality {first.modality}, not CT: lungseg reads CT "
                               "in Hounsfield units only")
    for s in slices[1:]:
        if s.size != first.size:
            raise DicomSeriesError(f"{s.path}: Rows/Columns {s.size} differ from {first.size} "
                                   f"in {first.path}")
        for name, label in (("pixel_spacing", "PixelSpacing"), ("orientation", "ImageOrientationPatient")):
            a, b = getattr(s, name), getattr(first, name)
            if not np.allclose(a, b, atol=GEOMETRY_ATOL):
                raise DicomSeriesError(f"{s.path}: {label} {a} differs from {b} in {first.path}")


def _sort_positions(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Slices ordered by ImagePositionPatient along the slice normal, and those positions (mm)."""
    iop = np.asarray(slices[0].orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.asarray([s.position for s in slices], dtype=float) @ normal
    order = np.argsort(pos, kind="stable")
    return [slices[i] for i in order], pos[order]


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


def mislabelled(path: Path) -> DicomSeriesError:
    """The error for a file named like DICOM (:data:`DICOM_SUFFIXES`) that is not DICOM."""
    return DicomSeriesError(f"{path}: named like a DICOM file but not DICOM (no DICM marker and no "
                            "DICOM header): damaged or mislabelled")


def read_slices(folder: str | os.PathLike[str], recursive: bool | None = None) -> list[_Slice]:
    """Read every image file in ``folder`` (see :func:`find_dicom_files`); non-DICOM files are
    skipped with a warning, a non-DICOM file named ``*.dcm`` is an error."""
    folder = Path(folder)
    files, others = find_dicom_files(folder, recursive)
    for p in others:
        if p.suffix.lower() in DICOM_SUFFIXES:
            raise mislabelled(p)
        warnings.warn(f"skipping non-DICOM file {p}", DicomWarning, stacklevel=2)
    # A plain loop: parsing is pure Python under the GIL, and measured threads or processes slower.
    slices = [s for s in map(_read_one, files) if s is not None]
    if not slices:
        raise DicomSeriesError(f"{folder}: no DICOM image in the folder ({len(files) + len(others)} files)")
    return slices


def load_series(folder: str | os.PathLike[str], series_uid: str | None = None,
                recursive: bool | None = None) -> Volume:
    """Read a DICOM CT series folder into a :class:`Volume` (z, y, x) in HU, sorted by slice position.

    The volume stays in the acquisition's own orientation (see :mod:`lungseg.io.orient` to bring it to
    the axial orientation the model was trained in). Slices are sorted by ImagePositionPatient
    projected on the slice normal. Raises :class:`DicomSeriesError` naming the file and tag for
    unreadable files, no image, a non-CT modality, missing or invalid PixelSpacing /
    ImageOrientationPatient / ImagePositionPatient / rescale values, several series with no clear
    choice (``series_uid`` picks one), inconsistent geometry, duplicate positions, gaps or uneven
    steps beyond ``SPACING_RTOL``/``SPACING_ATOL_MM``, and sheared (gantry-tilt) series.
    """
    folder = Path(folder)
    return _volume(_pick_series(read_slices(folder, recursive), folder, series_uid), folder.name)


def load_files(files: Sequence[str | os.PathLike[str]], name: str, series_uid: str | None = None) -> Volume:
    """:func:`load_series` of an explicit list of DICOM files (one series found by
    ``python -m lungseg batch``), with the same validation and the same errors; ``name`` becomes
    the volume's ``case_id`` (the folder's name, as ``load_series`` would give it)."""
    paths = [Path(f) for f in files]
    for p in paths:
        if p.suffix.lower() in DICOM_SUFFIXES and not is_dicom(p):
            raise mislabelled(p)
    slices = [s for s in map(_read_one, paths) if s is not None]
    if not slices:
        raise DicomSeriesError(f"{paths[0].parent if paths else name}: no DICOM image among "
                               f"{len(paths)} files")
    return _volume(_pick_series(slices, paths[0].parent, series_uid), name)


def _volume(slices: list[_Slice], case_id: str) -> Volume:
    """The validated, position-sorted :class:`Volume` of the slices of one series."""
    _check_consistent(slices)
    slices, pos = _sort_positions(slices)
    first = slices[0]
    if len(slices) > 1:
        dz = _check_steps(slices, pos)
        _check_along_normal(slices)
    else:
        dz = first.thickness or 1.0
    dy, dx = first.pixel_spacing
    return Volume(
        hu=pixels.to_hu(slices),
        spacing=(dz, float(dy), float(dx)),
        origin=first.position,
        positions=np.asarray(pos, dtype=float),
        files=tuple(str(s.path) for s in slices),
        case_id=case_id,
        series_uid=first.series_uid,
        orientation=first.orientation,
        sort_key="ImagePositionPatient",
        slice_thickness=first.thickness,
    )
