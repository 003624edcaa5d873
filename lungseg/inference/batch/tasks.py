"""Batch step 3, one series on a worker: its task (paths and settings only), the network loaded once
per process, and the run that writes ``predict``'s outputs through
:func:`lungseg.inference.predict.segment_series`."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lungseg.inference import predict
from lungseg.inference.batch.table import DONE, FAILED, is_complete, read_stats
from lungseg.io import dicom, imagefile
from lungseg.network import selection

STAGE_LABEL = "batch-"
"""Temporary series folders are ``.NAME.batch-partial-PID-HEX`` (and ``-old-``): batch's own."""


_STAGED = re.compile(r"^\.(?P<name>.+)\.batch-(partial|old)-\d+-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Settings:
    """What every task needs to segment like ``predict``: the resolved checkpoint and its hash, the
    threshold and post-processing, the device and runtime; ``threads`` of ONNX Runtime (None: a Dask
    worker's own thread count, else every core)."""

    checkpoint: str
    choice: selection.ModelChoice
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
    input: str = "dicom"
    """"dicom", or the format of the one image file ``files[0]``."""

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


def worker_network(settings: Settings) -> predict.Network:
    """The network of ``settings``, loaded once per process (a Dask worker keeps it for all its
    series). ONNX Runtime gets the worker's threads, so workers do not oversubscribe the cores."""
    threads = settings.threads or dask_worker_threads()
    key = (settings.checkpoint, settings.device, settings.runtime, settings.batch_size, threads)
    if key not in _NETWORKS:
        _NETWORKS[key] = predict.Network(Path(settings.checkpoint), settings.device, settings.runtime,
                                         settings.batch_size, threads, progress=False)
    return _NETWORKS[key]


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


def warm_up(settings: Settings) -> None:
    worker_network(settings)


def run_task(task: Task) -> Outcome:
    """Segment one series into ``OUT/output`` (a worker's job; never raises): done, reused when the
    folder is already complete for the same model, settings and files, or failed with the one-line
    message ``predict`` would print."""
    t0 = time.perf_counter()
    out_dir = Path(task.out) / task.output
    try:
        if is_complete(out_dir, task.fingerprint):  # written by a worker that died before reporting
            return Outcome(task.output, DONE, stats=read_stats(out_dir), reused=True)
        network = worker_network(task.settings)
        folder = Path(task.root) / task.folder
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dicom.DicomWarning)
            warnings.simplefilter("always", predict.SideWarning)
            clock = predict._Clock()
            image_file = folder / task.files[0] if task.input != "dicom" else None
            if image_file is not None:
                volume = imagefile.load_image(image_file)
            else:
                volume = dicom.load_files([folder / f for f in task.files], folder.name, task.series_uid)
            clock.lap("read_dicom_s")
            s = task.settings
            stats = predict.segment_series(network, volume, out_dir, s.choice, s.threshold,
                                           s.postprocess, clock, overwrite=True,
                                           sources=[image_file or folder], extra={"batch": task.fingerprint},
                                           stage_label=STAGE_LABEL, image_file=image_file)
        notes = [f"note: {w.message}" for w in caught
                 if issubclass(w.category, dicom.DicomWarning | predict.SideWarning)]
        return Outcome(task.output, DONE, "; ".join(notes), stats, time.perf_counter() - t0)
    except (predict.PredictError, dicom.DicomSeriesError, ValueError, OSError) as exc:
        return Outcome(task.output, FAILED, str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # a bug, not the input: still one row, and the batch goes on
        return Outcome(task.output, FAILED, f"internal error ({type(exc).__name__}: {exc}); please report it",
                       seconds=time.perf_counter() - t0)


def dask_worker_threads() -> int | None:
    """The thread count of the Dask worker running this code, None outside Dask."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError, ImportError):
        return None
