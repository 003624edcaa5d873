"""Series derived from a real one, for demonstrations: a copy of some of its files under a new
series UID (each image a new SOP instance UID), optionally with attributes changed. The source files
are only read; the copies are new files in a folder of their own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pydicom.uid import generate_uid

from lungseg.io import dicom


def copy_as_series(files: Sequence[Path], folder: Path, changes: Mapping[str, object] | None = None) -> str:
    """Write ``files`` (DICOM images of one series) into ``folder`` as a new series of a new study (so
    that a tool choosing one series per study sees it apart from its source): new Study and Series
    Instance UIDs, a new SOPInstanceUID per image, the keywords in ``changes`` set to their values.
    Returns the new series UID."""
    uid, study = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for src in files:
        ds = dicom.read_dataset(Path(src))
        ds.SeriesInstanceUID, ds.StudyInstanceUID = uid, study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in (changes or {}).items():
            setattr(ds, keyword, value)
        ds.save_as(folder / Path(src).name, enforce_file_format=True)
    return uid
