"""The pixels of one DICOM slice: stored values decoded (fast path for uncompressed data), checked
(one greyscale frame, BitsStored honoured) and rescaled to Hounsfield units.

:mod:`lungseg.io.dicom` reads headers and builds the volume; this module owns what happens to the
pixel data, for it and for :mod:`lungseg.io.anonymise` (which checks a file's pixels before copying it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from lungseg.io.errors import DicomSeriesError


class Rescalable(Protocol):
    """A slice's stored pixels with its rescale (``lungseg.io.dicom``'s per-file record)."""

    pixels: np.ndarray
    slope: float
    intercept: float


def number(value: object) -> float | None:
    return None if value is None or value == "" else float(value)  # type: ignore[arg-type]


def rescale(path: Path, ds: pydicom.Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent; zero or non-finite values are errors."""
    out = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        try:
            value = number(ds.get(keyword))
        except (TypeError, ValueError):
            raise DicomSeriesError(f"{path}: {keyword} {ds.get(keyword)!r} is not numeric") from None
        if value is None:
            value = default
        if not np.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
            raise DicomSeriesError(f"{path}: invalid {keyword} {value}")
        out.append(value)
    return out[0], out[1]


def check_format(path: Path, ds: pydicom.Dataset) -> None:
    """Refuse colour and multi-frame images: a CT slice is one greyscale frame."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(f"{path}: {ds.get('SamplesPerPixel')} samples per pixel "
                               f"({ds.get('PhotometricInterpretation', '?')}): not a greyscale CT slice")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomSeriesError(f"{path}: multi-frame image ({frames} frames, e.g. Enhanced CT); "
                               "only single-frame slices are supported: convert to one file per slice")


def _raw_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Uncompressed little-endian pixels viewed directly (faster than ``pixel_array``), with the
    bits above BitsStored masked off (unsigned) or sign-extended (signed), as PS3.5 8.1.1 says."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    nbytes = int(ds.BitsAllocated) // 8
    need = rows * cols * nbytes
    if len(ds.PixelData) < need:
        raise DicomSeriesError(f"{path}: truncated pixel data ({len(ds.PixelData)} of {need} bytes)")
    arr = np.frombuffer(ds.PixelData, dtype=f"<{'i' if signed else 'u'}{nbytes}", count=rows * cols)
    arr = arr.reshape(rows, cols)
    bits_stored = int(ds.get("BitsStored", nbytes * 8))
    if not 0 < bits_stored <= nbytes * 8:
        raise DicomSeriesError(f"{path}: BitsStored {bits_stored} with BitsAllocated {nbytes * 8}")
    if bits_stored < nbytes * 8:
        shift = nbytes * 8 - bits_stored
        # Unsigned: clear the high bits (e.g. an embedded overlay plane); signed: sign-extend.
        arr = (arr << shift) >> shift if signed else arr & ((1 << bits_stored) - 1)
    return arr


def stored_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """The stored values of one single-frame greyscale slice, (rows, cols), without rescaling.

    Raises DicomSeriesError naming ``path`` for truncated pixel data, colour or multi-frame images
    and undecodable (compressed, no plugin) pixel data.
    """
    check_format(path, ds)
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsuid is None:  # a bare data set without file meta: pydicom assumed the syntax while reading
        tsuid = ExplicitVRLittleEndian if not ds.is_implicit_VR else ImplicitVRLittleEndian
    if not tsuid.is_compressed and tsuid.is_little_endian and int(ds.get("BitsAllocated", 0)) in (8, 16, 32):
        return _raw_pixels(path, ds)
    try:
        return ds.pixel_array  # pydicom masks to BitsStored itself
    except Exception as exc:
        raise DicomSeriesError(
            f"{path}: cannot decode pixel data in transfer syntax {tsuid} "
            f"({tsuid.name if tsuid else '?'}): {exc}. For compressed syntaxes install a decoder "
            "plugin, e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or "
            "`pip install imagecodecs`"
        ) from exc


def to_hu(slices: Sequence[Rescalable]) -> np.ndarray:
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
