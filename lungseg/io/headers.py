"""The one header scan behind every series choice: what each DICOM file's header says (pixel data
skipped), grouped into the facts the series rule reads (:class:`lungseg.io.series.SeriesFacts`).
``predict``, ``qc``, ``convert`` (:func:`lungseg.io.dicom.load_series`) and ``batch``'s discovery
all build their facts here, from the same files (:func:`walk`), so they choose the same series."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from lungseg.io import series

DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (a DICOMDIR)
DUPLICATE_ATOL_MM = 1e-3
"""Two slices closer than this along the normal are duplicates (not a step)."""


@dataclass(frozen=True)
class Header:
    """What one file's header tells the series rule (no patient attribute)."""

    uid: str
    study: str
    modality: str
    image: bool
    """The file declares an image (an image SOP class or Rows)."""
    image_type: str
    """ImageType values joined by backslashes, upper case."""
    orientation: tuple[float, ...] | None
    position: float | None
    """ImagePositionPatient along the slice normal (mm)."""
    thickness: float | None
    """SliceThickness (mm) when it is one positive number, else None."""
    description: str = ""
    """SeriesDescription (for the notes that list a folder's series)."""


def numbers(value: object) -> tuple[float, ...] | None:
    """The finite numbers of a (multi-)value, None when absent or not numeric."""
    if value is None or value == "":
        return None
    many = isinstance(value, Sequence) and not isinstance(value, str | bytes)
    try:
        values = tuple(float(v) for v in (value if many else [value]))
    except (TypeError, ValueError):
        return None
    return values if values and all(np.isfinite(values)) else None


def is_directory(ds: pydicom.Dataset) -> bool:
    """True for a DICOMDIR index (not a data file)."""
    return str(ds.get("SOPClassUID", "")) == DIRECTORY_SOP_CLASS


def should_hold_image(ds: pydicom.Dataset) -> bool:
    """True when the header declares an image (image SOP class or Rows), pixel data or not."""
    meta = getattr(ds, "file_meta", None)
    uids = (ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta else None)
    return "Rows" in ds or any(u is not None and "Image Storage" in pydicom.uid.UID(u).name for u in uids)


def header_of(ds: pydicom.Dataset) -> Header:
    """The :class:`Header` of one data set (read with or without its pixels)."""
    iop = numbers(ds.get("ImageOrientationPatient"))
    iop = iop if iop is not None and len(iop) == 6 else None
    pos = numbers(ds.get("ImagePositionPatient"))
    along = (float(np.dot(pos, np.cross(iop[:3], iop[3:])))
             if iop is not None and pos is not None and len(pos) == 3 else None)
    thick = numbers(ds.get("SliceThickness"))  # a malformed multi-value or 0/negative: not a thickness
    return Header(uid=str(ds.get("SeriesInstanceUID", "") or ""),
                  study=str(ds.get("StudyInstanceUID", "") or ""),
                  modality=str(ds.get("Modality", "") or ""), image=should_hold_image(ds),
                  image_type="\\".join(str(v) for v in (ds.get("ImageType") or [])).upper(),
                  orientation=iop, position=along,
                  thickness=thick[0] if thick is not None and len(thick) == 1 and thick[0] > 0 else None,
                  description=str(ds.get("SeriesDescription", "") or ""))


def facts_of(uid: str, headers: Sequence[Header]) -> series.SeriesFacts:
    """The rule's facts of one series from its files' headers."""
    steps = np.diff(np.sort([h.position for h in headers if h.position is not None]))
    steps = steps[steps > DUPLICATE_ATOL_MM]
    thick = [h.thickness for h in headers if h.thickness]
    orientations = {tuple(round(v, 3) for v in h.orientation) for h in headers if h.orientation}
    first = next((h.orientation for h in headers if h.orientation), None)
    return series.SeriesFacts(
        uid=uid, modality=headers[0].modality, images=len(headers), orientation=first,
        localizer=any("LOCALIZER" in h.image_type for h in headers) or len(orientations) > 1,
        derived=series.is_derived(sorted({h.image_type for h in headers})),
        thickness=float(np.median(thick)) if thick else None,
        step=float(np.median(steps)) if len(steps) else None,
        has_pixels=any(h.image for h in headers))


def walk(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder relative to ``root`` in POSIX form, sorted names of its files) for every folder
    below ``root`` holding files; hidden names skipped; linked folders followed, each real folder
    once."""
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(f for f in files if not f.startswith("."))
        if names:
            yield Path(top).relative_to(root).as_posix(), names
