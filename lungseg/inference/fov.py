"""A square field of view for any slice: onto the model's S x S input, and the logits back.

The network was trained on square axial slices with square pixels (512 x 512, resized to S x S). A
series reoriented from a coronal or sagittal MPR, or an axial series with a rectangular field of
view, has slices of R x C pixels spaced (dy, dx) mm with R != C or dy != dx (a coronal MPR of 60
slices of 5 mm: 60 x 512 pixels of 5 x 0.68 mm). Such a slice is padded with air (-1024 HU) to a
square field of view *in mm*, centred, and each axis is resampled to S on its own; the logits are
resampled back to the padded grid and cropped to the original pixels, so every output lies exactly
on the series' own grid. Resampling follows the training path: area averaging when an axis shrinks,
bilinear (half-pixel centres) when it grows, in both directions.

Slices square in pixels and in mm (every LCTSC series) do not come here: :func:`is_plain` sends
them along the unchanged path, bit for bit what it was before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lungseg.inference import resample
from lungseg.inference.resample import area_matrix, bilinear_matrix

AIR_HU = -1024
"""The padding value in HU (air), whatever the input mode (normalised with the slice)."""
SQUARE_RTOL = 1e-3
"""Pixel spacings (dy, dx) this close count as square pixels."""


def is_plain(shape_hw: Sequence[int], spacing_yx: Sequence[float] | None) -> bool:
    """True when slices of ``shape_hw`` pixels (rows, columns) spaced ``spacing_yx`` mm (dy, dx; None:
    unknown, taken as square pixels) are square in pixels and in mm: the model's own case."""
    rows, cols = int(shape_hw[-2]), int(shape_hw[-1])
    if rows != cols:
        return False
    return spacing_yx is None or bool(np.isclose(spacing_yx[0], spacing_yx[1], rtol=SQUARE_RTOL, atol=0))


def _resampler(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): area averaging when shrinking (as the training inputs were made), bilinear
    when growing or equal (identity when equal)."""
    return area_matrix(n_in, n_out) if n_in > n_out else bilinear_matrix(n_in, n_out)


@dataclass(frozen=True)
class Field:
    """How slices of ``shape`` (rows, columns) reach the model's ``size`` x ``size`` input: padded
    by ``before``/``after`` pixels of air per axis to ``padded`` (a square field of view in mm, to
    within one pixel), then resampled per axis."""

    shape: tuple[int, int]
    padded: tuple[int, int]
    before: tuple[int, int]
    size: int

    @property
    def after(self) -> tuple[int, int]:
        return (self.padded[0] - self.shape[0] - self.before[0],
                self.padded[1] - self.shape[1] - self.before[1])

    def pad(self, hu: np.ndarray) -> np.ndarray:
        """(N, rows, columns) HU → (N, padded rows, padded columns), air around."""
        (b0, b1), (a0, a1) = self.before, self.after
        widths = ((0, 0), (b0, a0), (b1, a1))
        return np.pad(hu, widths, mode="constant", constant_values=AIR_HU)

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """(N, padded rows, padded columns) float32 → (N, size, size) float32."""
        rows = _resampler(self.padded[0], self.size)
        cols = _resampler(self.padded[1], self.size)
        return resample.resample(x, rows, cols)

    def from_model(self, y: np.ndarray) -> np.ndarray:
        """(N, size, size) logits → (N, rows, columns) on the original pixels (the padding cropped
        by using only the matrix rows of the original pixels)."""
        (r0, c0), (nr, nc) = self.before, self.shape
        rows = _resampler(self.size, self.padded[0])[r0:r0 + nr]
        cols = _resampler(self.size, self.padded[1])[c0:c0 + nc]
        return resample.resample(y, rows, cols)


def field(shape_hw: Sequence[int], spacing_yx: Sequence[float] | None, size: int) -> Field:
    """The :class:`Field` of slices of ``shape_hw`` pixels spaced ``spacing_yx`` mm (None: square
    pixels) for a model input of ``size`` x ``size``: the shorter side in mm is padded, centred."""
    rows, cols = int(shape_hw[-2]), int(shape_hw[-1])
    dy, dx = (1.0, 1.0) if spacing_yx is None else (float(spacing_yx[0]), float(spacing_yx[1]))
    fov_mm = max(rows * dy, cols * dx)
    padded = (max(rows, int(round(fov_mm / dy))), max(cols, int(round(fov_mm / dx))))
    before = ((padded[0] - rows) // 2, (padded[1] - cols) // 2)
    return Field((rows, cols), padded, before, int(size))
