"""Which series of a study to segment: the one rule, used by ``predict``, ``convert``, ``batch`` and
the viewer.

A study folder often holds several series: a scout, the axial original, coronal and sagittal
reformats (MPR), thin and thick reconstructions, another kernel. The network was trained on axial
originals, so the rule (:func:`preference`) is:

1. axial before any other plane (a coronal MPR may hold *more* images than the axial series, yet it is
   interpolated from it and lies in the plane the network never saw);
2. an original (ImageType ORIGINAL) before a derived reconstruction (DERIVED: MPR, MIP, reformat);
3. the thinnest slices, the finest detail in z (the larger of SliceThickness and the measured step:
   thin slices written far apart are as coarse as their step);
4. the most slices (the longest coverage).

What is not a CT volume at all (:func:`not_a_volume`: no pixels, another modality, a scout, fewer than
:data:`MIN_SLICES` images) is never chosen. Two series equal on every point are a tie that no rule
settles honestly (two kernels of one acquisition, say): :func:`choose` then refuses, naming both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_SLICES = 3
"""Fewer images are a scout or a single image, not a chest volume."""
MIN_PIXELS = 8
"""Fewer rows or columns are an icon, not a CT slice (CT matrices are 256-1024; the tests' synthetic
series are 12-16 pixels a side)."""
RULE = "axial before other planes, originals before reformats, then the thinnest slices, then the most slices"
"""The rule of :func:`preference` in words (for notes and skip reasons)."""
AXIS_ALIGNED_DEG = 5.0
"""A slice normal within this angle (degrees) of a patient axis names its plane; further away the
series is oblique (and :mod:`lungseg.io.orient` refuses it)."""


class AmbiguousSeries(ValueError):
    """Two or more candidate series are equal under the rule: the user must choose one."""


def plane_name(orientation: Sequence[float] | None) -> str:
    """"axial", "coronal" or "sagittal" from the slice normal of an ImageOrientationPatient; "oblique"
    when the normal is more than :data:`AXIS_ALIGNED_DEG` from every patient axis; "unknown" without
    one."""
    if orientation is None or len(orientation) != 6:
        return "unknown"
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    axis = int(np.argmax(np.abs(normal)))
    if np.abs(normal[axis]) < np.cos(np.radians(AXIS_ALIGNED_DEG)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def is_derived(image_types: Sequence[str]) -> bool:
    """True when every ImageType value of a series (backslash-joined strings) starts with DERIVED."""
    return bool(image_types) and all(t.upper().startswith("DERIVED") for t in image_types)


@dataclass(frozen=True)
class SeriesFacts:
    """What the rule reads of one series (header values only)."""

    uid: str
    modality: str
    images: int
    """How many images (files or slices) the series holds."""
    orientation: tuple[float, ...] | None = None
    localizer: bool = False
    """ImageType LOCALIZER, or images in several orientations (a three-plane scout)."""
    derived: bool = False
    """ImageType DERIVED (a reformat, MIP or other reconstruction from another series)."""
    thickness: float | None = None
    """Median SliceThickness (mm), None when absent."""
    step: float | None = None
    """Median distance between consecutive slice positions along the normal (mm)."""
    has_pixels: bool = True

    @property
    def plane(self) -> str:
        return plane_name(self.orientation)

    @property
    def slice_mm(self) -> float | None:
        """How fine the series is in z, for the "thinnest" point: the larger of SliceThickness and the
        measured step (thin slices far apart are as coarse as their step), else whichever is known."""
        known = [v for v in (self.thickness, self.step) if v]
        return max(known) if known else None

    def describe(self) -> str:
        kind = "derived" if self.derived else "original"
        mm = f", {self.slice_mm:g} mm slices" if self.slice_mm else ""
        return f"series {self.uid} ({self.modality or '?'} {self.plane} {kind}{mm}, {self.images} images)"


def not_a_volume(f: SeriesFacts) -> str:
    """Why a series is not a CT volume to segment, or ""."""
    if not f.has_pixels:
        return f"no image (Modality {f.modality or '?'}): not a CT image series"
    if f.modality != "CT":
        return f"Modality {f.modality or '(none)'}, not CT: lungseg segments CT in Hounsfield units only"
    if f.localizer:
        return "localizer (scout) series: ImageType LOCALIZER or slices in several orientations"
    return _too_few_slices(f.images)


def too_small(shape: Sequence[int]) -> str:
    """Why a (z, y, x) volume of ``shape`` cannot be a chest CT to segment (too few slices, rows or
    columns), or "": the same minimum for a DICOM series and an image file."""
    z, y, x = (int(v) for v in shape)
    if z < MIN_SLICES:
        return _too_few_slices(z)
    if min(y, x) < MIN_PIXELS:
        return f"slices of {y}x{x} pixels: an icon, not a CT image (at least {MIN_PIXELS} per side)"
    return ""


def _too_few_slices(n: int) -> str:
    """The one slice minimum (:data:`MIN_SLICES`) of a series' headers and of a loaded volume."""
    return f"{n} slice(s): a scout or single image, not a chest volume" if n < MIN_SLICES else ""


def preference(f: SeriesFacts) -> tuple:
    """Sort key of the rule (smaller is preferred); the UID last, so sorting is deterministic."""
    mm = round(f.slice_mm, 2) if f.slice_mm else math.inf
    return (f.plane != "axial", f.derived, mm, -f.images, f.uid)


def choose(candidates: Sequence[SeriesFacts]) -> SeriesFacts:
    """The series to segment among ``candidates`` (CT volumes, see :func:`not_a_volume`).
    ValueError when there is none; :class:`AmbiguousSeries` when the best two tie on every point."""
    if not candidates:
        raise ValueError("no CT volume among the series")
    ranked = sorted(candidates, key=preference)
    if len(ranked) > 1 and preference(ranked[0])[:-1] == preference(ranked[1])[:-1]:
        raise AmbiguousSeries(f"{ranked[0].describe()} and {ranked[1].describe()} are equal under the rule "
                              f"({RULE})")
    return ranked[0]
