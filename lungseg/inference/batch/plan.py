"""Batch step 2, the plan: which series are segmented and which skipped (the series rule of
:mod:`lungseg.io.series` per study), each series' output folder under OUT, and ``--part K/N``."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import PurePosixPath

from lungseg.inference.batch.discover import SeriesScan
from lungseg.inference.batch.table import FAILED, SKIPPED, Entry
from lungseg.io import imagefile, series

SERIES_PREFIX = "series-"
"""Output sub-folder ``series-UID`` where a folder holds several series."""


class BatchError(ValueError):
    """A batch that cannot start (bad ROOT, OUT or option); the message says why."""


def _describe(s: SeriesScan) -> str:
    mm = f", {s.slice_mm:g} mm slices" if s.slice_mm else ""
    return f"{s.folder} (series {s.uid}, {s.plane}{mm}, {len(s.files)} files)"


def plan(scans: Sequence[SeriesScan], all_series: bool = False) -> list[Entry]:
    """What to do with each series: skipped with a reason, or "todo" (default: one per study, the
    series :func:`lungseg.io.series.choose` prefers, as ``predict`` does; ``all_series``: every CT
    volume). Outputs are named."""
    entries = {(s.folder, s.uid): Entry(s, "todo") for s in scans}
    studies: dict[str, list[Entry]] = defaultdict(list)
    for e in entries.values():
        reason = "" if e.scan.is_file else series.not_a_volume(e.scan.facts)  # a file: read when run
        if reason:
            e.status, e.reason = SKIPPED, reason
        else:
            studies[e.scan.study or f"series:{e.scan.uid}"].append(e)
    if not all_series:
        for members in studies.values():
            _choose_in_study(members)
    names = output_names(list(scans))
    for e in entries.values():
        e.output = names[(e.scan.folder, e.scan.uid)]
        if e.status == SKIPPED and e.scan.extra_files:
            n = len(e.scan.extra_files)
            e.reason += (f"; its folder also holds {n} damaged DICOM file{'s' if n > 1 else ''} "
                         f"({e.scan.extra_files[0]}{', ...' if n > 1 else ''})")
    return list(entries.values())


def _choose_in_study(members: list[Entry]) -> None:
    """Skip every series of one study but the one the series rule prefers. When two tie, the study
    fails, as ``predict`` refuses such a folder: every series gets the reason and nothing of the study
    is segmented until the user chooses (--all-series, or ``predict --series UID``)."""
    if len(members) < 2:
        return
    try:
        best = series.choose([e.scan.facts for e in members]).uid
    except series.AmbiguousSeries as exc:
        for e in members:
            e.status, e.reason = FAILED, (f"{exc}: no single best series; --all-series segments each, "
                                          "predict --series UID the one you choose")
        return
    chosen = next(e for e in members if e.scan.uid == best)
    for e in members:
        if e is not chosen:
            e.status = SKIPPED
            e.reason = (f"another reconstruction of the same study: {_describe(chosen.scan)} is "
                        f"segmented instead ({series.RULE}); --all-series segments every CT series")


def output_names(series: Sequence[SeriesScan]) -> dict[tuple[str, str], str]:
    """Output folder of each series, relative to OUT: its folder's path relative to ROOT, or
    ``FOLDER/series-UID`` (an image file: ``FOLDER/STEM-FORMAT``) where the folder holds several
    series, is ROOT itself, or has series in folders below it (so that no output folder lies inside
    another). Nothing else goes into a
    name, so it never shows an identifier the source path does not."""
    per_folder: dict[str, int] = defaultdict(int)
    for s in series:
        per_folder[s.folder] += 1
    folders = set(per_folder)
    parents = {str(p) for f in folders for p in PurePosixPath(f).parents}
    names = {}
    for s in series:
        plain = per_folder[s.folder] == 1 and s.folder != "." and s.folder not in parents
        sub = PurePosixPath(s.folder) / (f"{imagefile.stem_of(s.files[0])}-{s.input}" if s.is_file
                                         else f"{SERIES_PREFIX}{s.uid or 'unknown'}")
        names[(s.folder, s.uid)] = s.folder if plain else sub.as_posix()
    taken = sorted(names.values())
    for a, b in zip(taken, taken[1:], strict=False):
        if a == b or b.startswith(a + "/"):
            raise BatchError(f"two series would be written to {OUT_LABEL}/{a} and {OUT_LABEL}/{b}: the "
                             f"folder {a} holds a series and a folder named like a series output; "
                             "rename one")
    return names


OUT_LABEL = "OUT"


def take_part(entries: Sequence[Entry], part: tuple[int, int] | None) -> list[Entry]:
    """The series to segment that fall to ``part`` (k, n): every n-th, starting with the k-th
    (1-based), in the order of their output names; all of them when ``part`` is None."""
    todo = sorted((e for e in entries if e.status == "todo"), key=lambda e: e.output)
    if part is None:
        return todo
    k, n = part
    return todo[k - 1::n]


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) → (K, N); BatchError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise BatchError(f"--part expects K/N with 1 <= K <= N (e.g. 3/10, or "
                         f"$SLURM_ARRAY_TASK_ID/N with --array=1-N), got {text!r}")
    return int(m.group(1)), int(m.group(2))
