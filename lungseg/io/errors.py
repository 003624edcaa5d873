"""The errors and warnings of reading DICOM, in a module of their own so that every reader in
:mod:`lungseg.io` raises the same ones without importing each other (``lungseg.io.dicom`` re-exports
them, where callers have always found them)."""

from __future__ import annotations


class DicomSeriesError(ValueError):
    """A folder that cannot be turned into one consistent volume; the message names file and problem."""


class DicomWarning(UserWarning):
    """Something was skipped or a fallback was used while reading a series."""
