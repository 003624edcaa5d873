"""Batch step 4, the cohort table ``OUT/cohort.csv``: its one definition (columns, statuses, the row
of a series, the reader and the writer), rewritten atomically and merged under a lock across ``--part``s."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lungseg.inference import predict, qc
from lungseg.inference.batch.discover import SeriesScan
from lungseg.io import writing

COHORT = "cohort.csv"


COLUMNS = ("source", "series_uid", "status", "message", "output", "slices", "right_lung_ml", "left_lung_ml",
           "lung_volume_ml", "lungs_touching", "qc_status", "qc_reasons", "seconds", "model", "modality",
           "plane", "slice_mm", "input")
"""The cohort table's columns; ``qc_*``: the verdict of :mod:`lungseg.inference.qc` (empty unless done)."""


DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass
class Entry:
    """One series found: what batch does with it (``status`` "todo", skipped, or failed before it
    starts: a study whose series tie under the series rule, as ``predict`` refuses it) and where."""

    scan: SeriesScan
    status: str
    reason: str = ""
    output: str = ""



_COHORT_TMP = re.compile(rf"^\.{re.escape(COHORT)}\.tmp-\d+-[0-9a-f]{{8}}$")


WRITE_EVERY_ROWS = 2000
"""Up to this many rows the table is rewritten after every series; beyond, when the last rewrite
took under a tenth of the time since (finished outputs are on disk and found again on a rerun)."""


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def model_name(stats: dict) -> str:
    """The cohort's ``model`` column: the model's name when stats.json names it, else the checkpoint."""
    model = stats.get("model")
    if isinstance(model, dict) and model.get("name"):
        return str(model["name"])
    return str(stats.get("checkpoint", ""))


def row(entry: Entry, status: str, message: str = "", stats: dict | None = None,
        seconds: float | None = None, model: str = "") -> dict[str, str]:
    """A cohort row (every column, as text); ``model`` for a row without stats (a failure)."""
    s = entry.scan
    r = dict.fromkeys(COLUMNS, "")
    r.update(source=s.source, series_uid="" if s.is_file else s.uid, status=status, message=message,
             modality=s.modality, plane=s.plane, slice_mm=_fmt(s.slice_mm, 3).rstrip("0").rstrip("."),
             input=s.input)
    if s.is_file:  # what the header says is known once the file is read
        r.update(modality="", plane="")
    if entry.status not in (SKIPPED, FAILED):  # a series the plan sent to work has an output folder
        r["output"] = entry.output
        r["model"] = model
    if stats:
        r.update(slices=_fmt(stats.get("slices")), right_lung_ml=_fmt(stats.get("right_lung_ml"), 1),
                 left_lung_ml=_fmt(stats.get("left_lung_ml"), 1),
                 lung_volume_ml=_fmt(stats.get("lung_volume_ml"), 1),
                 lungs_touching=_fmt(stats.get("lungs_touching")), model=model_name(stats),
                 **qc.qc_columns(stats))
    if seconds is not None:
        r["seconds"] = _fmt(seconds, 1)
    return r


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a cohort.csv, in file order (the one reader: batch and the cohort report)."""
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def read_cohort(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Rows of an earlier cohort.csv by (source, series_uid); empty when there is none."""
    try:
        rows = read_rows(path)
    except OSError:
        return {}
    return {(r.get("source", ""), r.get("series_uid", "")): r for r in rows}


def cohort_text(rows: Iterable[dict[str, str]]) -> str:
    """cohort.csv's text (the one writer): :data:`COLUMNS`, rows sorted by source and series."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in sorted(rows, key=lambda r: (r["source"], r["series_uid"])):
        w.writerow(r)
    return buf.getvalue()


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock on the folder itself: no lock file), shared by every
    batch process writing into it; a no-op where the file system has no locks."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


class Cohort:
    """The table of one run: rows of this process's series merged, under :func:`locked`, with the
    rows other processes (``--part``) wrote and with outputs found complete on disk."""

    def __init__(self, out: Path, entries: Sequence[Entry], fingerprints: dict[str, dict],
                 mine: Iterable[str] = ()) -> None:
        self.out, self.entries, self.fingerprints = out, list(entries), fingerprints
        self.mine = set(mine)
        """Outputs of this process's series (the others belong to other ``--part`` processes)."""
        self.rows: dict[str, dict[str, str]] = {}
        """This run's rows by output (or by source for skipped and orphan rows)."""
        self.extra: list[dict[str, str]] = []
        """Rows of folders holding damaged files and no series."""
        self._last_write, self._write_s = 0.0, 0.0

    @property
    def path(self) -> Path:
        return self.out / COHORT

    def merged(self, previous: dict[tuple[str, str], dict[str, str]]) -> list[dict[str, str]]:
        rows = []
        for e in self.entries:
            key = (e.scan.folder, e.scan.uid)
            if e.status in (SKIPPED, FAILED) and e.reason:  # decided by the plan, before any work
                rows.append(row(e, e.status, e.reason))
            elif e.output in self.rows:
                rows.append(self.rows[e.output])
            elif key in previous and previous[key].get("status") in (DONE, FAILED):
                rows.append(previous[key])
            elif e.output not in self.mine and is_complete(self.out / e.output, self.fingerprints[e.output]):
                rows.append(row(e, DONE, stats=read_stats(self.out / e.output)))  # another part's
        return rows + self.extra

    def write(self, force: bool = True) -> None:
        """Rewrite cohort.csv atomically (throttled for large cohorts unless ``force``)."""
        now = time.perf_counter()
        if not force and len(self.entries) > WRITE_EVERY_ROWS and now - self._last_write < 10 * self._write_s:
            return
        with locked(self.out):
            text = cohort_text(self.merged(read_cohort(self.path)))
            writing.atomic_write_text(self.path, text)
        self._last_write, self._write_s = time.perf_counter(), time.perf_counter() - now


def remove_stale_cohort_files(out: Path) -> None:
    """Temporary files of cohort.csv left by a killed batch (batch's own names only)."""
    with locked(out):
        for p in out.iterdir():
            if _COHORT_TMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)


def is_complete(folder: Path, fingerprint: dict) -> bool:
    """True when ``folder`` holds every output its stats.json lists (predict's five files for a DICOM
    series; no SEG or RTSTRUCT for an image file), marked by lungseg, made with ``fingerprint``
    (model, settings, input files)."""
    marker = writing.read_marker(folder)
    if marker is None or marker.get("tool") != predict.TOOL or marker.get("batch") != fingerprint:
        return False
    outputs = read_stats(folder).get("outputs") or predict.OUTPUT_NAMES
    return (folder / predict.STATS_NAME).is_file() and all((folder / n).is_file() for n in outputs)


def read_stats(folder: Path) -> dict:
    """The stats.json of a finished series folder; {} when missing or damaged."""
    try:
        return json.loads((folder / predict.STATS_NAME).read_text())
    except (OSError, ValueError):
        return {}
