"""Batch step 1, discovery: every folder under ROOT scanned (one header per file), files grouped into
series by SeriesInstanceUID; runs in this process or on the workers (paths and header summaries only)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from lungseg.io import dicom, headers, imagefile, series

SCAN_IN_PROCESS_FILES = 5000
"""Trees with fewer files are scanned in this process (~1-2 ms a file), larger ones on the workers."""


@dataclass
class SeriesScan:
    """What the headers of one series say (no patient attribute): its files relative to ``folder``
    (relative to ROOT, POSIX, "." for ROOT itself)."""

    folder: str
    uid: str
    study: str
    modality: str
    image: bool
    """The files declare images (an image SOP class or Rows)."""
    localizer: bool
    """ImageType holds LOCALIZER, or the files lie in several orientations (a 3-plane scout)."""
    orientation: tuple[float, ...] | None
    thickness: float | None
    """Median SliceThickness (mm), None when absent."""
    step: float | None
    """Median distance between consecutive slice positions along the normal (mm)."""
    files: list[str]
    key: str
    """Hash of the files' names, sizes and modification times: the input's identity on a rerun."""
    extra_files: list[str] = field(default_factory=list)
    """Damaged files of the same folder: reading the series fails on them, as predict's would."""
    derived: bool = False
    """Every ImageType says DERIVED (a reformat: MPR, MIP)."""
    input: str = "dicom"
    """"dicom" (a series of files), or the format of one image file (:data:`lungseg.io.imagefile.FORMATS`:
    the file is ``files[0]`` and ``uid`` its name; it is read, and refused if it is not CT in HU, when
    segmented)."""

    @property
    def is_file(self) -> bool:
        return self.input != "dicom"

    @property
    def source(self) -> str:
        """The input relative to ROOT: the series' folder, or the image file."""
        return (PurePosixPath(self.folder) / self.files[0]).as_posix() if self.is_file else self.folder

    @property
    def facts(self) -> series.SeriesFacts:
        """What the series rule (:mod:`lungseg.io.series`) reads of this series."""
        return series.SeriesFacts(uid=self.uid, modality=self.modality, images=len(self.files),
                                  orientation=self.orientation, localizer=self.localizer,
                                  derived=self.derived, thickness=self.thickness, step=self.step,
                                  has_pixels=self.image)

    @property
    def plane(self) -> str:
        return self.facts.plane

    @property
    def slice_mm(self) -> float | None:
        return self.facts.slice_mm

    def paths(self, root: Path) -> list[Path]:
        return [root / self.folder / f for f in [*self.files, *self.extra_files]]


@dataclass
class FolderScan:
    """The series of one folder and its damaged DICOM files ``(name, message)``."""

    folder: str
    series: list[SeriesScan]
    bad: list[tuple[str, str]]


walk = headers.walk  # the one file walk of every command


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def scan_folder(root: str, folder: str, names: Sequence[str]) -> FolderScan:
    """Read one header per file of ``root/folder`` (pixel data skipped) and group the DICOM files
    into series. Runs on a worker: takes and returns paths and header summaries only."""
    base = Path(root) / folder
    groups: dict[str, dict] = {}
    bad: list[tuple[str, str]] = []
    files: list[SeriesScan] = []
    for name in names:
        path = base / name
        if name.upper() == "DICOMDIR" or not path.is_file():  # an index; a broken link, a socket...
            continue
        if imagefile.is_image_file(name):
            files.append(_file_scan(base, folder, name, names))
            continue
        if not dicom.is_dicom(path):
            if path.suffix.lower() in dicom.DICOM_SUFFIXES:
                bad.append((name, str(dicom.mislabelled(path))))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's notes on odd values: the reader validates
                ds = dicom.read_dataset(path, stop_before_pixels=True)
                if headers.is_directory(ds):
                    continue
                st = path.stat()
                h = headers.header_of(ds)
        except dicom.DicomSeriesError as exc:
            bad.append((name, str(exc)))
            continue
        except Exception as exc:  # a damaged header value
            bad.append((name, f"{path}: unreadable or truncated DICOM file ({exc})"))
            continue
        g = groups.setdefault(h.uid, {"files": [], "stat": [], "headers": []})
        g["files"].append(name)
        g["stat"].append((name, st.st_size, st.st_mtime_ns))
        g["headers"].append(h)
    if "" in groups and len(groups) > 1:  # beside series with UIDs: headers cut short, or damaged
        bad += [(name, f"{base / name}: no SeriesInstanceUID (truncated or damaged DICOM file)")
                for name in groups.pop("")["files"]]
    found = []
    for uid, g in groups.items():
        f = headers.facts_of(uid, g["headers"])
        key = hashlib.sha256(json.dumps(sorted(g["stat"])).encode()).hexdigest()[:16]
        found.append(SeriesScan(
            folder=folder, uid=uid, study=g["headers"][0].study, modality=f.modality, image=f.has_pixels,
            localizer=f.localizer, derived=f.derived, orientation=f.orientation, thickness=f.thickness,
            step=f.step, files=g["files"], key=key))
    return FolderScan(folder, found + files, bad)


def _file_scan(base: Path, folder: str, name: str, names: Sequence[str]) -> SeriesScan:
    """One image file as a series of its own (its header is read when it is segmented). The key
    covers the files that share its stem (a .mhd/.nhdr header's data file)."""
    stem = imagefile.stem_of(name)
    mine = [n for n in names if n == name or (n.startswith(stem + ".") and not imagefile.is_image_file(n))]
    stat = [(n, (base / n).stat().st_size, (base / n).stat().st_mtime_ns) for n in sorted(mine)]
    return SeriesScan(folder=folder, uid=name, study=f"file:{folder}/{name}", modality="CT", image=True,
                      localizer=False, orientation=None, thickness=None, step=None, files=[name],
                      key=hashlib.sha256(json.dumps(stat).encode()).hexdigest()[:16],
                      input=imagefile.format_of(name))


def merge_scans(scans: Iterable[FolderScan]) -> tuple[list[SeriesScan], list[FolderScan]]:
    """Series of every folder, one per SeriesInstanceUID (a series split over folders is read from
    their common folder); damaged files join the series of their folder. Also returns the folders
    holding damaged files but no series (each a failed row)."""
    by_uid: dict[str, list[SeriesScan]] = defaultdict(list)
    orphans = []
    files = []
    for scan in scans:
        for s in scan.series:
            if s.is_file:
                files.append(s)
                continue
            s.extra_files = [name for name, _ in scan.bad]
            by_uid[s.uid].append(s)
        if scan.bad and not scan.series:
            orphans.append(scan)
    merged = []
    for parts in by_uid.values():
        if len(parts) == 1:
            merged.append(parts[0])
            continue
        common = os.path.commonpath([p.folder if p.folder != "." else "" for p in parts] or [""]) or "."

        def rel(p: SeriesScan, names: list[str], common: str = common) -> list[str]:
            return [PurePosixPath(os.path.relpath(PurePosixPath(p.folder) / n, common)).as_posix()
                    for n in names]

        first = parts[0]
        merged.append(replace(
            first, folder=common, files=[f for p in parts for f in rel(p, p.files)],
            extra_files=[f for p in parts for f in rel(p, p.extra_files)],
            image=any(p.image for p in parts), localizer=any(p.localizer for p in parts),
            thickness=_median([p.thickness for p in parts if p.thickness]),
            step=min((p.step for p in parts if p.step), default=None),
            key=hashlib.sha256("".join(sorted(p.key for p in parts)).encode()).hexdigest()[:16]))
    return sorted(merged + files, key=lambda s: (s.folder, s.uid)), orphans


def scan_item(item: tuple[str, str, list[str]]) -> FolderScan:
    return scan_folder(*item)
