"""The lung masks of the data set: ``Segmentations/Case_XXX_seg.npz``, one bool (z, y, x) array under
the key ``masks`` on the ascending-position grid of its case's DICOM series (see the data README)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from lungseg.io.dicom import Volume


class MaskError(ValueError):
    """A mask file that is missing its array, is not binary, or does not match its volume."""


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
