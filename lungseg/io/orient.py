"""Bring any axis-aligned CT volume to the orientation the model was trained in, and back.

The LCTSC training series are axial, head first supine: columns run to the patient's left (+x in
DICOM LPS), rows to the back (+y) and slices, in ascending position, to the head (+z). A series
acquired coronally, sagittally, prone or feet first holds the same anatomy along other array axes
or directions; fed as it is, a 2D axial model sees rotated or mirrored anatomy and segments it
worse without any error. :func:`canonical` permutes and flips the array (no resampling, so voxel
values and the grid are exact) into that orientation; :meth:`Reorientation.to_native` maps a mask
back onto the acquisition grid, where every export is written with the series' own geometry.
Oblique series (a slice axis more than ``series.AXIS_ALIGNED_DEG`` off every patient axis) are
refused: they would need resampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from lungseg.io.dicom import DicomSeriesError, Volume
from lungseg.io.series import AXIS_ALIGNED_DEG

AXIS_NAMES = ("x (patient left)", "y (patient back)", "z (patient head)")


def axis_directions(volume: Volume) -> np.ndarray:
    """(3, 3): the LPS unit direction in which each array axis (z, y, x) = (slice, row, column)
    of ``volume`` increases."""
    iop = np.asarray(volume.orientation, dtype=float)
    row_cos, col_cos = iop[:3], iop[3:]
    return np.stack([np.cross(row_cos, col_cos), col_cos, row_cos])


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips from a native (acquisition) array to the canonical one.

    ``axes[a]`` is the native axis that becomes canonical axis ``a`` (0 = towards the head,
    1 = towards the back, 2 = towards the patient's left); ``flips[a]`` reverses it.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """A (native z, y, x) array as (canonical z, y, x); a view when possible."""
        out = np.transpose(array, self.axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def to_native(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_canonical`."""
        flipped = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.transpose(flipped, np.argsort(self.axes))


def reorientation(volume: Volume) -> Reorientation:
    """How to bring ``volume`` to the canonical orientation; raises DicomSeriesError when oblique."""
    dirs = axis_directions(volume)
    cos_min = np.cos(np.radians(AXIS_ALIGNED_DEG))
    world = np.argmax(np.abs(dirs), axis=1)  # the patient axis each array axis runs along
    if np.min(np.abs(dirs[np.arange(3), world])) < cos_min or len(set(world.tolist())) != 3:
        raise DicomSeriesError(
            f"{volume.case_id}: oblique series (ImageOrientationPatient {list(volume.orientation)}): "
            f"its axes are more than {AXIS_ALIGNED_DEG:g} degrees from the patient axes; lungseg "
            "needs an axial, coronal or sagittal series (reformat it axially first)")
    axes = tuple(int(np.flatnonzero(world == 2 - a)[0]) for a in range(3))  # canonical z, y, x
    flips = tuple(bool(dirs[axes[a], 2 - a] < 0) for a in range(3))
    return Reorientation(axes, flips)  # type: ignore[arg-type]


def canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """``volume`` in the canonical axial orientation, and the reorientation used.

    The canonical volume has orientation (1, 0, 0, 0, 1, 0) (cosines snapped to the patient axes),
    spacing and origin of its own grid, and ``files`` only when its slices are the source slices.
    """
    reo = reorientation(volume)
    if reo.is_identity:
        return volume, reo
    native_shape = np.asarray(volume.shape)
    native_spacing = np.asarray(volume.spacing, dtype=float)
    corner = np.zeros(3, dtype=int)  # native (z, y, x) index of the canonical first voxel
    for a in range(3):
        if reo.flips[a]:
            corner[reo.axes[a]] = native_shape[reo.axes[a]] - 1
    dirs = axis_directions(volume)
    origin = np.asarray(volume.origin, dtype=float) + (corner * native_spacing) @ dirs
    spacing = tuple(float(native_spacing[reo.axes[a]]) for a in range(3))
    nz = int(native_shape[reo.axes[0]])
    files: tuple[str, ...] = ()
    if reo.axes[0] == 0:
        files = volume.files[::-1] if reo.flips[0] else volume.files
    canon = replace(volume, hu=reo.to_canonical(volume.hu), spacing=spacing,
                    origin=tuple(float(v) for v in origin),
                    positions=origin[2] + spacing[0] * np.arange(nz),
                    files=files, orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    return canon, reo


def check_square(shape: Sequence[int], name: str) -> None:
    """ValueError naming ``name`` unless the last two dims of ``shape`` are equal: the resize to
    image_size x image_size (training and inference alike) assumes square slices."""
    if shape[-1] != shape[-2]:
        raise ValueError(f"{name}: slices of {tuple(shape[-2:])} pixels are not square; "
                         "the model takes square slices (resized to image_size x image_size)")


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
