"""Segment a whole cohort: ``python -m lungseg batch ROOT --out OUT``.

Four steps, each a small function:

1. **Discovery** (:func:`walk`, :func:`scan_folder`, :func:`merge_scans`): every folder under ROOT
   (any depth, links followed once, hidden names skipped) is scanned by reading one header per file
   with the content rule of :func:`lungseg.io.dicom.is_dicom`; files are grouped into series by
   SeriesInstanceUID. Non-DICOM files are ignored; damaged ones (unreadable headers, a non-DICOM
   file named ``*.dcm``) go with the series of their folder, whose reading then fails with the very
   message ``predict`` gives.
2. **Plan** (:func:`plan`): localizers, non-CT and non-image series are ``skipped`` with their
   reason; of the CT volumes of one study, the series :func:`lungseg.io.series.choose` prefers (the
   rule ``predict`` applies to a folder: axial, original, thinnest, most slices) is segmented and the
   other reconstructions are ``skipped`` naming it (``all_series`` segments every one).
   Each series gets its output folder under OUT, named from its folder relative to ROOT
   (:func:`output_names`).
3. **Run** (:func:`run_task`, executed in-process or on Dask workers): reads the series
   (:func:`lungseg.io.dicom.load_files`), segments it with the network the worker loaded once
   (:func:`worker_network`) and writes ``predict``'s five files through
   :func:`lungseg.inference.predict.segment_series`, in a temporary sibling renamed into place. A folder that
   is already complete with the same model, settings and input files is not recomputed, so a task
   run twice (a worker died after writing) writes its series once.
4. **Cohort table** (:func:`write_cohort`): ``OUT/cohort.csv``, one row per series found, rewritten
   atomically as series finish, merged under a lock with what other ``--part`` processes wrote.

Tasks carry paths and settings only (:class:`Task`): never pixel data or patient attributes.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from lungseg.inference import postprocess, predict, qc, runtime
from lungseg.io import dicom, series, writing
from lungseg.network import runs

COHORT = "cohort.csv"
COLUMNS = ("source", "series_uid", "status", "message", "output", "slices", "right_lung_ml", "left_lung_ml",
           "lung_volume_ml", "lungs_touching", "qc_status", "qc_reasons", "seconds", "model", "modality",
           "plane", "slice_mm")
"""The cohort table's columns; ``qc_*``: the verdict of :mod:`lungseg.inference.qc` (empty unless done)."""
DONE, FAILED, SKIPPED = "done", "failed", "skipped"
STAGE_LABEL = "batch-"
"""Temporary series folders are ``.NAME.batch-partial-PID-HEX`` (and ``-old-``): batch's own."""
_STAGED = re.compile(r"^\.(?P<name>.+)\.batch-(partial|old)-\d+-[0-9a-f]{8}$")
_COHORT_TMP = re.compile(rf"^\.{re.escape(COHORT)}\.tmp-\d+-[0-9a-f]{{8}}$")
SERIES_PREFIX = "series-"
"""Output sub-folder ``series-UID`` where a folder holds several series."""
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (a DICOMDIR)
SCAN_IN_PROCESS_FILES = 5000
"""Trees with fewer files are scanned in this process (~1-2 ms a file), larger ones on the workers."""
WRITE_EVERY_ROWS = 2000
"""Up to this many rows the table is rewritten after every series; beyond, when the last rewrite
took under a tenth of the time since (finished outputs are on disk and found again on a rerun)."""


class BatchError(ValueError):
    """A batch that cannot start (bad ROOT, OUT or option); the message says why."""


# ---- discovery -----------------------------------------------------------------------------------

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


def walk(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder relative to ``root`` in POSIX form, sorted names of its files) for every folder
    below ``root`` holding files; hidden names skipped; linked folders followed, each real folder
    once."""
    seen: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(f for f in files if not f.startswith("."))
        if names:
            yield Path(top).relative_to(root).as_posix(), names


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def _numbers(value: object) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str)
                                          else [value]))
    except (TypeError, ValueError):
        return None
    return values if all(np.isfinite(values)) else None


def scan_folder(root: str, folder: str, names: Sequence[str]) -> FolderScan:
    """Read one header per file of ``root/folder`` (pixel data skipped) and group the DICOM files
    into series. Runs on a worker: takes and returns paths and header summaries only."""
    base = Path(root) / folder
    groups: dict[str, dict] = {}
    bad: list[tuple[str, str]] = []
    for name in names:
        path = base / name
        if name.upper() == "DICOMDIR" or not path.is_file():  # an index; a broken link, a socket...
            continue
        if not dicom.is_dicom(path):
            if path.suffix.lower() in dicom.DICOM_SUFFIXES:
                bad.append((name, str(dicom.mislabelled(path))))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's notes on odd values: the reader validates
                ds = dicom.read_dataset(path, stop_before_pixels=True)
                if str(ds.get("SOPClassUID", "")) == DIRECTORY_SOP_CLASS:
                    continue
                st = path.stat()
                uid = str(ds.get("SeriesInstanceUID", "") or "")
                g = groups.setdefault(uid, {
                    "files": [], "stat": [], "study": str(ds.get("StudyInstanceUID", "") or ""),
                    "modality": str(ds.get("Modality", "") or ""), "image": False, "types": set(),
                    "iops": set(), "iop": None, "pos": [], "thick": []})
                g["files"].append(name)
                g["stat"].append((name, st.st_size, st.st_mtime_ns))
                g["image"] |= dicom.should_hold_image(ds)
                g["types"].add("\\".join(str(v) for v in (ds.get("ImageType") or [])).upper())
                iop = _numbers(ds.get("ImageOrientationPatient"))
                if iop is not None and len(iop) == 6:
                    g["iops"].add(tuple(round(v, 3) for v in iop))
                    g["iop"] = g["iop"] or iop
                    pos = _numbers(ds.get("ImagePositionPatient"))
                    if pos is not None and len(pos) == 3:
                        g["pos"].append(float(np.dot(pos, np.cross(iop[:3], iop[3:]))))
                thick = _numbers(ds.get("SliceThickness"))
                if thick and thick[0] > 0:
                    g["thick"].append(thick[0])
        except dicom.DicomSeriesError as exc:
            bad.append((name, str(exc)))
        except Exception as exc:  # a damaged header value
            bad.append((name, f"{path}: unreadable or truncated DICOM file ({exc})"))
    if "" in groups and len(groups) > 1:  # beside series with UIDs: headers cut short, or damaged
        bad += [(name, f"{base / name}: no SeriesInstanceUID (truncated or damaged DICOM file)")
                for name in groups.pop("")["files"]]
    found = []
    for uid, g in groups.items():
        steps = np.diff(np.sort(g["pos"]))
        steps = steps[steps > dicom.DUPLICATE_ATOL_MM]
        key = hashlib.sha256(json.dumps(sorted(g["stat"])).encode()).hexdigest()[:16]
        found.append(SeriesScan(
            folder=folder, uid=uid, study=g["study"], modality=g["modality"], image=g["image"],
            localizer=any("LOCALIZER" in t for t in g["types"]) or len(g["iops"]) > 1,
            derived=series.is_derived(sorted(g["types"])),
            orientation=g["iop"], thickness=_median(g["thick"]), step=_median(steps), files=g["files"],
            key=key))
    return FolderScan(folder, found, bad)


def merge_scans(scans: Iterable[FolderScan]) -> tuple[list[SeriesScan], list[FolderScan]]:
    """Series of every folder, one per SeriesInstanceUID (a series split over folders is read from
    their common folder); damaged files join the series of their folder. Also returns the folders
    holding damaged files but no series (each a failed row)."""
    by_uid: dict[str, list[SeriesScan]] = defaultdict(list)
    orphans = []
    for scan in scans:
        for s in scan.series:
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
    return sorted(merged, key=lambda s: (s.folder, s.uid)), orphans


# ---- plan --------------------------------------------------------------------------------------

@dataclass
class Entry:
    """One series found: what batch does with it (``status`` "todo" or skipped) and where."""

    scan: SeriesScan
    status: str
    reason: str = ""
    output: str = ""


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
        reason = series.not_a_volume(e.scan.facts)
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
    """Skip every series of one study but the one the series rule prefers (all of them, with the
    reason, when two tie: the user chooses with --all-series)."""
    if len(members) < 2:
        return
    try:
        best = series.choose([e.scan.facts for e in members]).uid
    except series.AmbiguousSeries as exc:
        for e in members:
            e.status, e.reason = SKIPPED, f"{exc}: no single best series; --all-series segments each"
        return
    chosen = next(e for e in members if e.scan.uid == best)
    for e in members:
        if e is not chosen:
            e.status = SKIPPED
            e.reason = (f"another reconstruction of the same study: {_describe(chosen.scan)} is "
                        f"segmented instead ({series.RULE}); --all-series segments every CT series")


def output_names(series: Sequence[SeriesScan]) -> dict[tuple[str, str], str]:
    """Output folder of each series, relative to OUT: its folder's path relative to ROOT, or
    ``FOLDER/series-UID`` where the folder holds several series, is ROOT itself, or has series in
    folders below it (so that no output folder lies inside another). Nothing else goes into a
    name, so it never shows an identifier the source path does not."""
    per_folder: dict[str, int] = defaultdict(int)
    for s in series:
        per_folder[s.folder] += 1
    folders = set(per_folder)
    parents = {str(p) for f in folders for p in PurePosixPath(f).parents}
    names = {}
    for s in series:
        plain = per_folder[s.folder] == 1 and s.folder != "." and s.folder not in parents
        sub = PurePosixPath(s.folder) / f"{SERIES_PREFIX}{s.uid or 'unknown'}"
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


# ---- settings, tasks and the worker side ---------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What every task needs to segment like ``predict``: the resolved checkpoint and its hash, the
    threshold and post-processing, the device and runtime; ``threads`` of ONNX Runtime (None: a Dask
    worker's own thread count, else every core)."""

    checkpoint: str
    choice: runs.ModelChoice
    model_sha256: str
    threshold: float
    postprocess: bool
    device: str = "cpu"
    runtime: str = "onnxruntime"
    batch_size: int | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Task:
    """One series to segment: paths and settings only."""

    root: str
    out: str
    folder: str
    files: tuple[str, ...]
    series_uid: str
    output: str
    source_key: str
    settings: Settings

    @property
    def fingerprint(self) -> dict:
        """What must match for an existing output to count as this task's result."""
        return {"model_sha256": self.settings.model_sha256, "threshold": self.settings.threshold,
                "postprocess": self.settings.postprocess, "series_uid": self.series_uid,
                "source_key": self.source_key}


@dataclass
class Outcome:
    """What a task reports back: a status, a message, the numbers of the cohort row."""

    output: str
    status: str
    message: str = ""
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False


_NETWORKS: dict[tuple, predict.Network] = {}
"""The networks this process loaded, by checkpoint and settings: once per worker."""


def dask_worker_threads() -> int | None:
    """The thread count of the Dask worker running this code, None outside Dask."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError, ImportError):
        return None


def worker_network(settings: Settings) -> predict.Network:
    """The network of ``settings``, loaded once per process (a Dask worker keeps it for all its
    series). ONNX Runtime gets the worker's threads, so workers do not oversubscribe the cores."""
    threads = settings.threads or dask_worker_threads()
    key = (settings.checkpoint, settings.device, settings.runtime, settings.batch_size, threads)
    if key not in _NETWORKS:
        _NETWORKS[key] = predict.Network(Path(settings.checkpoint), settings.device, settings.runtime,
                                         settings.batch_size, threads, progress=False)
    return _NETWORKS[key]


def is_complete(folder: Path, fingerprint: dict) -> bool:
    """True when ``folder`` holds predict's five files, marked by lungseg, made with ``fingerprint``
    (model, settings, input files)."""
    marker = writing.read_marker(folder)
    return (marker is not None and marker.get("tool") == predict.TOOL and marker.get("batch") == fingerprint
            and all((folder / n).is_file() for n in predict.OUTPUT_NAMES))


def remove_stale_stages(out: Path, outputs: Iterable[str]) -> list[Path]:
    """Remove the temporary siblings batch itself left for the series folders ``outputs`` (relative
    to ``out``): ``.NAME.batch-partial-*`` and ``.NAME.batch-old-*`` from a crash or a killed worker;
    nothing else. Each parent folder is listed once. Returns what was removed."""
    by_parent: dict[Path, set[str]] = defaultdict(set)
    for rel in outputs:
        folder = out / rel
        by_parent[folder.parent].add(folder.name)
    removed = []
    for parent, names in by_parent.items():
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            m = _STAGED.match(entry.name)
            if m and m.group("name") in names and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def _warm_up(settings: Settings) -> None:
    worker_network(settings)


def _read_stats(folder: Path) -> dict:
    try:
        return json.loads((folder / predict.STATS_NAME).read_text())
    except (OSError, ValueError):
        return {}


def run_task(task: Task) -> Outcome:
    """Segment one series into ``OUT/output`` (a worker's job; never raises): done, reused when the
    folder is already complete for the same model, settings and files, or failed with the one-line
    message ``predict`` would print."""
    t0 = time.perf_counter()
    out_dir = Path(task.out) / task.output
    try:
        if is_complete(out_dir, task.fingerprint):  # written by a worker that died before reporting
            return Outcome(task.output, DONE, stats=_read_stats(out_dir), reused=True)
        network = worker_network(task.settings)
        folder = Path(task.root) / task.folder
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dicom.DicomWarning)
            warnings.simplefilter("always", predict.SideWarning)
            clock = predict._Clock()
            volume = dicom.load_files([folder / f for f in task.files], folder.name, task.series_uid)
            clock.lap("read_dicom_s")
            s = task.settings
            stats = predict.segment_series(network, volume, out_dir, s.choice, s.threshold,
                                           s.postprocess, clock, overwrite=True, sources=[folder],
                                           extra={"batch": task.fingerprint}, stage_label=STAGE_LABEL)
        notes = [f"note: {w.message}" for w in caught
                 if issubclass(w.category, dicom.DicomWarning | predict.SideWarning)]
        return Outcome(task.output, DONE, "; ".join(notes), stats, time.perf_counter() - t0)
    except (predict.PredictError, dicom.DicomSeriesError, ValueError, OSError) as exc:
        return Outcome(task.output, FAILED, str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # a bug, not the input: still one row, and the batch goes on
        return Outcome(task.output, FAILED, f"internal error ({type(exc).__name__}: {exc}); please report it",
                       seconds=time.perf_counter() - t0)


# ---- executors ----------------------------------------------------------------------------------

class InProcess:
    """Runs tasks one after the other in this process (``--workers 0``, ``--part``)."""

    workers = 1
    description = "in this process"

    def map_unordered(self, fn: Callable, items: Sequence, window: int | None = None) -> Iterator:
        for item in items:
            yield item, fn(item)

    def warm_up(self, settings: Settings) -> None:
        worker_network(settings)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Runs tasks on a Dask cluster: a local one started here (``workers`` processes of one thread)
    or the scheduler at ``address``. Tasks are submitted a few per worker thread at a time, so the
    scheduler holds little state however large the cohort; a task whose worker died is
    rescheduled by Dask (``distributed.scheduler.allowed-failures`` times)."""

    def __init__(self, address: str | None = None, workers: int = 2) -> None:
        import logging

        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)  # its notes on lost workers etc.
        self.cluster = None
        if address:
            try:
                self.client = Client(address, timeout="30s")
            except Exception as exc:  # OSError, TimeoutError, TypeError of a TLS setting missing...
                hint = (" (a tls:// scheduler needs Dask's TLS settings: see docs/cohorts.md)"
                        if address.startswith("tls://") else "")
                raise BatchError(f"cannot connect to the Dask scheduler at {address}: "
                                 f"{type(exc).__name__}: {exc}{hint}") from None
            self.description = f"on the Dask cluster at {address}"
        else:
            # No memory limit: a worker's peak is known (~0.8 GB for 150 slices of 512², docs/cohorts.md), and
            # Dask's default share of RAM per worker would pause or restart workers on small machines.
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=0,
                                        silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
            self.description = f"on a local Dask cluster of {workers} worker processes"

    @property
    def workers(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def warm_up(self, settings: Settings) -> None:
        """Every worker loads the network now (it keeps it for all its series)."""
        self.client.run(_warm_up, settings)

    def map_unordered(self, fn: Callable, items: Sequence, window: int | None = None) -> Iterator:
        """(item, result) pairs as they finish; a task Dask gave up on (its workers kept dying)
        gives the exception as its result."""
        from distributed import as_completed

        pending = iter(items)
        futures: dict = {}
        done = as_completed()

        def submit() -> bool:
            item = next(pending, None)
            if item is None:
                return False
            fut = self.client.submit(fn, item, pure=False)
            futures[fut.key] = item
            done.add(fut)
            return True

        for _ in range(window or 2 * self.workers + 2):
            if not submit():
                break
        for fut in done:
            item = futures.pop(fut.key)
            try:
                result = fut.result()
            except Exception as exc:  # KilledWorker and the like: the task, not the batch, failed
                result = exc
            fut.release()
            submit()
            yield item, result

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# ---- the cohort table ---------------------------------------------------------------------------

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
    r.update(source=s.folder, series_uid=s.uid, status=status, message=message,
             modality=s.modality, plane=s.plane, slice_mm=_fmt(s.slice_mm, 3).rstrip("0").rstrip("."))
    if status != SKIPPED:
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
            if e.status == SKIPPED:
                rows.append(row(e, SKIPPED, e.reason))
            elif e.output in self.rows:
                rows.append(self.rows[e.output])
            elif key in previous and previous[key].get("status") in (DONE, FAILED):
                rows.append(previous[key])
            elif e.output not in self.mine and is_complete(self.out / e.output, self.fingerprints[e.output]):
                rows.append(row(e, DONE, stats=_read_stats(self.out / e.output)))  # another part's
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


# ---- the command ----------------------------------------------------------------------------------

@dataclass
class Summary:
    """Counts of one batch run, and where its table is."""

    found: int = 0
    done: int = 0
    reused: int = 0
    failed: int = 0
    failed_before: int = 0
    skipped: int = 0
    not_in_part: int = 0
    files: int = 0
    scan_s: float = 0.0
    seconds: float = 0.0
    where: str = ""
    cohort: str = ""
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = 60 * self.done / self.seconds if self.seconds and self.done else 0.0
        out = [f"{self.found} series found ({self.files} files read in {self.scan_s:.1f} s): "
               f"{self.done} segmented now ({rate:.1f} series/min), "
               f"{self.reused} already done, {self.failed + self.failed_before} failed"
               + (f" ({self.failed_before} earlier, not retried: --retry-failed)" if self.failed_before
                  else "")
               + f", {self.skipped} skipped"
               + (f", {self.not_in_part} left to the other parts" if self.not_in_part else "")
               + f"; {self.seconds:.1f} s {self.where}",
               f"cohort table: {self.cohort}"]
        out += [f"failed: {f}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            out.append(f"... and {len(self.failures) - 20} more failures (status 'failed' in the table)")
        return out


def resolve_settings(checkpoint: str | os.PathLike[str] | runs.ModelChoice | None, threshold: float | None,
                     clean: bool | None, device: str, runtime_name: str,
                     batch_size: int | None, threads: int | None) -> Settings:
    """The model and settings, resolved once in the parent as ``predict`` resolves them (the
    default checkpoint is ``predict``'s), exported for ONNX Runtime once here."""
    choice = predict.choose_model(checkpoint)
    ckpt = choice.path
    weights = predict.weights_file(ckpt)
    threshold, clean = predict.inference_settings(ckpt, threshold, clean)
    try:
        postprocess.check_threshold(threshold)
    except ValueError as err:
        raise predict.PredictError(f"--{err}") from None
    dev = predict.resolve_device(device)
    engine = predict.resolve_runtime(runtime_name, dev)
    if engine == "onnxruntime":
        predict.onnx_export(ckpt)
    else:
        predict.load_checkpoint(ckpt)  # fails here, once, on a checkpoint that is not one
    return Settings(str(ckpt), choice, writing.sha256_file(weights), threshold, clean, dev, engine,
                    batch_size, threads)


def discover(root: Path, executor: _Lazy, progress: bool
             ) -> tuple[list[SeriesScan], list[FolderScan], int]:
    """Scan every folder under ``root``: in this process for a small tree (fewer than
    :data:`SCAN_IN_PROCESS_FILES` files), else on ``executor`` (in parallel on Dask). Returns the
    series, the folders of damaged files without a series, and the number of files."""
    from lungseg.progress import bar as progress_bar

    folders = list(walk(root))
    n_files = sum(len(names) for _, names in folders)
    small = n_files < SCAN_IN_PROCESS_FILES
    scanner = InProcess() if small else executor.get()
    scans = []
    bar = progress_bar(total=len(folders), desc="finding series", unit="folder", disable=not progress,
                       leave=False)
    items = [(str(root), rel, names) for rel, names in folders]
    for item, result in scanner.map_unordered(_scan_item, items, window=4 * scanner.workers + 4):
        if isinstance(result, BaseException):
            result = FolderScan(item[1], [], [("", f"{root / item[1]}: could not be scanned ({result})")])
        scans.append(result)
        bar.update()
    bar.close()
    return (*merge_scans(sorted(scans, key=lambda s: s.folder)), n_files)


def _scan_item(item: tuple[str, str, list[str]]) -> FolderScan:
    return scan_folder(*item)


def _check_paths(root: Path, out: Path) -> None:
    if not root.is_dir():
        raise BatchError(f"input folder not found: {root}")
    try:
        writing.check_not_overlapping(out, [root], "output folder")
    except writing.UnsafeOutputError as exc:
        raise BatchError(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out} exists and is not a folder; choose another --out")


def _progress_bar(total: int, progress: bool):
    from lungseg.progress import bar as progress_bar

    return progress_bar(total=total, desc="segmenting", unit="series", disable=not progress,
                        dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                   "[{elapsed}<{remaining}]{postfix}")


WORKER_MEMORY_GB = 1.5
"""Memory planned per local worker (the measured peak for 150-180 slices of 512² stays below)."""


def default_workers() -> int:
    """One local worker per core, as many as the memory holds at :data:`WORKER_MEMORY_GB` each."""
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        memory_gb = float("inf")
    return max(1, min(runtime.cpu_threads(), int(memory_gb // WORKER_MEMORY_GB)))


def run(root: str | os.PathLike[str], out: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | runs.ModelChoice | None = None, *, workers: int | None = None,
        scheduler: str | None = None, part: tuple[int, int] | None = None, retry_failed: bool = False,
        all_series: bool = False, threshold: float | None = None, clean: bool | None = None,
        device: str = "auto", runtime_name: str = "auto", batch_size: int | None = None,
        progress: bool = True) -> Summary:
    """Segment every CT series under ``root`` into ``out`` (see the module's docstring) and return
    the counts. ``workers``: local Dask worker processes (None: :func:`default_workers`; 0: in this
    process);
    ``scheduler``: a Dask scheduler address instead; ``part`` (k, n): every n-th series, in this
    process, for job arrays. Series already complete with the same model and settings are kept;
    failed ones are retried with ``retry_failed``."""
    t0 = time.perf_counter()
    root, out = Path(root).absolute(), Path(out).absolute()
    _check_paths(root, out)
    in_process = part is not None or (workers == 0 and not scheduler)
    settings = resolve_settings(checkpoint, threshold, clean, device, runtime_name, batch_size,
                                runtime.cpu_threads() if in_process else None)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_cohort_files(out)
    executor = _Lazy(lambda: InProcess() if in_process else
                     DaskExecutor(scheduler, workers or default_workers()))
    try:
        return _run(root, out, settings, executor, part, retry_failed, all_series, progress, t0)
    finally:
        executor.close()


class _Lazy:
    """An executor started on first use (a rerun with nothing left to do starts no cluster), or in
    the background while the tree is scanned, its workers loading the model meanwhile."""

    def __init__(self, make: Callable[[], InProcess | DaskExecutor]) -> None:
        self._make, self._executor = make, None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start_in_background(self, settings: Settings) -> None:
        def start() -> None:
            try:
                executor = self._make()
                self._executor = executor
                executor.warm_up(settings)
            except BaseException as exc:  # reported by get(), in the main thread
                self._error = exc

        self._thread = threading.Thread(target=start, name="lungseg-batch-cluster", daemon=True)
        self._thread.start()

    def get(self) -> InProcess | DaskExecutor:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise self._error
        if self._executor is None:
            self._executor = self._make()
        return self._executor

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._executor is not None:
            self._executor.close()


def _run(root: Path, out: Path, settings: Settings, executor: _Lazy,
         part: tuple[int, int] | None, retry_failed: bool, all_series: bool, progress: bool,
         t0: float) -> Summary:
    if not (out / COHORT).exists():  # a first run: start the cluster while the tree is scanned
        executor.start_in_background(settings)
    t_scan = time.perf_counter()
    series, orphans, n_files = discover(root, executor, progress)
    scan_s = time.perf_counter() - t_scan
    entries = plan(series, all_series)
    tasks = {e.output: Task(str(root), str(out), e.scan.folder, tuple(e.scan.files + e.scan.extra_files),
                            e.scan.uid, e.output, e.scan.key, settings)
             for e in entries if e.status == "todo"}
    mine = take_part(entries, part)
    cohort = Cohort(out, entries, {k: t.fingerprint for k, t in tasks.items()}, [e.output for e in mine])
    for scan in orphans:
        name, message = scan.bad[0]
        more = f" (and {len(scan.bad) - 1} more damaged files)" if len(scan.bad) > 1 else ""
        cohort.extra.append({**dict.fromkeys(COLUMNS, ""), "source": scan.folder, "status": FAILED,
                             "message": message + more})
    remove_stale_stages(out, [e.output for e in mine])  # left by a crash: no one else writes these
    summary = Summary(found=len(entries), skipped=sum(e.status == SKIPPED for e in entries),
                      not_in_part=len(tasks) - len(mine), where="(nothing left to segment)",
                      cohort=str(cohort.path), failed=len(orphans), files=n_files, scan_s=scan_s)
    summary.failures += [r["message"] for r in cohort.extra]
    previous = read_cohort(cohort.path)
    model = settings.choice.name or settings.checkpoint
    to_run = []
    for e in mine:
        task, folder = tasks[e.output], out / e.output
        before = previous.get((e.scan.folder, e.scan.uid), {})
        if is_complete(folder, task.fingerprint):
            seconds = (float(before["seconds"]) if before.get("status") == DONE and before.get("seconds")
                       else None)
            cohort.rows[e.output] = row(e, DONE, before.get("message", ""), _read_stats(folder), seconds)
            summary.reused += 1
        elif (before.get("status") == FAILED and not retry_failed
              and before.get("model") == model and before.get("output") == e.output):
            cohort.rows[e.output] = before
            summary.failed_before += 1
            summary.failures.append(f"{e.scan.folder}: {before.get('message', '')}")
        else:
            to_run.append(task)
    cohort.write()
    # Largest series first: the last ones to finish are then short, and no worker idles long at the end.
    to_run.sort(key=lambda t: -len(t.files))
    bar = _progress_bar(len(to_run), progress)
    by_output = {e.output: e for e in entries}
    if to_run:
        summary.where = executor.get().description
    for task, outcome in (executor.get().map_unordered(run_task, to_run) if to_run else ()):
        if isinstance(outcome, BaseException):
            outcome = Outcome(task.output, FAILED, f"the worker segmenting it died repeatedly ({outcome})")
        e = by_output[task.output]
        cohort.rows[task.output] = row(e, outcome.status, outcome.message, outcome.stats or None,
                                       outcome.seconds if not outcome.reused else None, model)
        if outcome.status == DONE:
            summary.done += not outcome.reused
            summary.reused += outcome.reused
        else:
            summary.failed += 1
            summary.failures.append(f"{e.scan.folder}: {outcome.message}")
        cohort.write(force=outcome.status == FAILED)
        bar.update()
        minutes = bar.format_dict["elapsed"] / 60
        bar.set_postfix_str(f"done {summary.done + summary.reused}, failed {summary.failed}, "
                            f"{summary.done / minutes if minutes else 0:.1f} series/min", refresh=False)
    bar.close()
    remove_stale_stages(out, [t.output for t in to_run])  # left by workers that died in this run
    cohort.write()
    summary.seconds = time.perf_counter() - t0
    return summary


def summary_dict(summary: Summary) -> dict:
    return asdict(summary)
