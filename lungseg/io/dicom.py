"""Module 1: read one DICOM CT series into a 3D volume in Hounsfield units (HU) (its lung mask: ``masks``).

Slices are sorted by their position along the slice normal (file names do not follow slice order in
every case), the slice step ``dz`` is measured from those positions, and every inconsistency is an
error that names the file and the problem, so no silently wrong volume reaches training.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from lungseg.io import headers, pixels, series
from lungseg.io.errors import DicomSeriesError, DicomWarning

# A slice step may deviate from the series' median step by this much before it counts as a gap or
# an uneven series (CT positions are written with ~1e-3 mm precision; a missing slice doubles a step).
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.01
# In-plane drift allowed between consecutive slice positions (gantry tilt / sheared series otherwise).
SHEAR_ATOL_MM = 0.01
# Two slices closer than this along the normal are duplicates.
DUPLICATE_ATOL_MM = headers.DUPLICATE_ATOL_MM
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
    """(DICOM files, other files) in ``folder`` and every folder below it (the one walk of every
    command, :func:`lungseg.io.headers.walk`: linked folders followed, hidden names skipped), each
    sorted by path; ``recursive=False``: the folder's own files only. The DICOMDIR index itself is
    not a data file and is left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    listing = (headers.walk(folder) if recursive is not False
               else [(".", sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")))])
    files = sorted(p for rel, names in listing for p in (folder / rel / n for n in names)
                   if p.is_file() and p.name.upper() != "DICOMDIR")
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


should_hold_image = headers.should_hold_image


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


def _listing(groups: dict[str, list[tuple[Path, headers.Header]]],
             facts: dict[str, series.SeriesFacts]) -> str:
    """One entry per series, the largest first: UID, modality, plane, slices, image type, description."""
    out = []
    for uid, f in sorted(facts.items(), key=lambda kv: (-kv[1].images, kv[0])):
        h = groups[uid][0][1]
        out.append(f"{uid or '<no SeriesInstanceUID>'}: {f.modality or '?'} {f.plane}, {f.images} slices"
                   + (f", {h.image_type}" if h.image_type else "")
                   + (f", '{h.description}'" if h.description else ""))
    return "; ".join(out)


def choose_files(folder: Path, files: Sequence[Path], series_uid: str | None = None,
                 volume_only: bool = False) -> list[Path]:
    """The files of the series to read among ``files``, from their headers alone (pixel data not
    read; :mod:`lungseg.io.headers`, as ``batch`` chooses): ``series_uid``, else the CT volume the
    series rule prefers (:func:`lungseg.io.series.choose`; said in a DicomWarning when there are
    several series). DicomSeriesError when no series is a CT volume (a scout, a single image, another
    modality: :func:`lungseg.io.series.not_a_volume`), when the volumes belong to several studies, or
    when two tie; ``volume_only`` (what is segmented: ``predict``, ``qc``, ``batch``) also refuses a
    lone series or ``series_uid`` that is not a CT volume, which a plain read accepts."""
    groups: dict[str, list[tuple[Path, headers.Header]]] = {}
    for p in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on odd values: the full read validates
            ds = read_dataset(p, stop_before_pixels=True)
        if headers.is_directory(ds):
            continue
        h = headers.header_of(ds)
        if not h.image:
            warnings.warn(f"skipping {p}: DICOM without pixel data ({h.modality or '?'}, not an image)",
                          DicomWarning, stacklevel=3)
            continue
        groups.setdefault(h.uid, []).append((p, h))
    if not groups:
        raise DicomSeriesError(f"{folder}: no DICOM image in the folder ({len(files)} files)")
    if "" in groups and len(groups) > 1:  # beside series with UIDs: a header cut short (as batch says)
        raise DicomSeriesError(f"{groups[''][0][0]}: no SeriesInstanceUID "
                               "(truncated or damaged DICOM file)")
    facts = {uid: headers.facts_of(uid, [h for _, h in g]) for uid, g in groups.items()}
    listing = _listing(groups, facts)
    if series_uid is not None:
        if series_uid not in facts:
            raise DicomSeriesError(f"{folder}: no slice of series {series_uid}; found {listing}")
        chosen = facts[series_uid]
        if volume_only and series.not_a_volume(chosen):
            raise DicomSeriesError(f"{folder}: {chosen.describe()} is not a CT volume to segment: "
                                   f"{series.not_a_volume(chosen)}")
        return [p for p, _ in groups[series_uid]]
    if len(facts) == 1 and not volume_only:
        return [p for p, _ in next(iter(groups.values()))]
    volumes = [f for f in facts.values() if not series.not_a_volume(f)]
    if not volumes:
        why = "; ".join(f"{f.uid or '<no SeriesInstanceUID>'}: {series.not_a_volume(f)}"
                        for f in facts.values())
        raise DicomSeriesError(f"{folder}: no CT volume to segment among {listing} ({why}); choose one "
                               "with --series UID")
    try:
        chosen = series.choose(volumes)
    except series.AmbiguousSeries as exc:
        raise DicomSeriesError(f"{folder}: more than one series and no single best CT series ({exc}): "
                               f"{listing}; choose one with --series UID") from None
    studies = {groups[f.uid][0][1].study for f in volumes}
    if len(studies) > 1:
        raise DicomSeriesError(f"{folder}: CT volumes of {len(studies)} studies ({listing}); predict "
                               "segments one series: give it one study's folder, choose with --series "
                               "UID, or segment every study with `lungseg batch`")
    if len(facts) > 1:
        warnings.warn(f"{folder}: {len(facts)} series; using {chosen.describe()} by the rule ({series.RULE}) "
                      f"(all: {listing}); choose another with --series UID", DicomWarning, stacklevel=3)
    return [p for p, _ in groups[chosen.uid]]


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


def _dicom_files(folder: Path, recursive: bool | None) -> list[Path]:
    """The DICOM files of ``folder`` (see :func:`find_dicom_files`); non-DICOM files are skipped with
    a warning, a non-DICOM file named ``*.dcm`` is an error."""
    files, others = find_dicom_files(folder, recursive)
    for p in others:
        if p.suffix.lower() in DICOM_SUFFIXES:
            raise mislabelled(p)
        warnings.warn(f"skipping non-DICOM file {p}", DicomWarning, stacklevel=3)
    if not files:
        raise DicomSeriesError(f"{folder}: no DICOM image in the folder ({len(others)} files)")
    return files


def _read_series(files: Sequence[Path], where: Path) -> list[_Slice]:
    # A plain loop: parsing is pure Python under the GIL, and measured threads or processes slower.
    slices = [s for s in map(_read_one, files) if s is not None]
    if not slices:
        raise DicomSeriesError(f"{where}: no DICOM image among {len(files)} files")
    return slices


def load_series(folder: str | os.PathLike[str], series_uid: str | None = None,
                recursive: bool | None = None, volume_only: bool = False) -> Volume:
    """Read a DICOM CT series folder into a :class:`Volume` (z, y, x) in HU, sorted by slice position.

    The folder and its subfolders (``recursive=False``: the folder alone) are scanned header by
    header and the series chosen (:func:`choose_files`, with ``volume_only``) before any pixel is
    read. The volume stays
    in the acquisition's own orientation (see :mod:`lungseg.io.orient` to bring it to the axial
    orientation the model was trained in). Slices are sorted by ImagePositionPatient projected on
    the slice normal. Raises :class:`DicomSeriesError` naming the file and tag for unreadable files,
    no image, a non-CT modality, missing or invalid PixelSpacing / ImageOrientationPatient /
    ImagePositionPatient / rescale values, several series with no clear choice (``series_uid``
    picks one), inconsistent geometry, duplicate positions, gaps or uneven steps beyond
    ``SPACING_RTOL``/``SPACING_ATOL_MM``, and sheared (gantry-tilt) series.
    """
    folder = Path(folder)
    chosen = choose_files(folder, _dicom_files(folder, recursive), series_uid, volume_only)
    return _volume(_read_series(chosen, folder), folder.name)


def load_files(files: Sequence[str | os.PathLike[str]], name: str, series_uid: str | None = None) -> Volume:
    """:func:`load_series` of an explicit list of DICOM files (one series found by
    ``python -m lungseg batch``), with the same validation and the same errors; ``name`` becomes
    the volume's ``case_id`` (the folder's name, as ``load_series`` would give it)."""
    paths = [Path(f) for f in files]
    for p in paths:
        if p.suffix.lower() in DICOM_SUFFIXES and not is_dicom(p):
            raise mislabelled(p)
    where = paths[0].parent if paths else Path(name)
    return _volume(_read_series(choose_files(where, paths, series_uid, True), where), name)


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
