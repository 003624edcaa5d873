"""Independent per-case jobs on every core: DICOM conversion and de-identification here, the
per-patient scores of the evaluation (surface distances, side split) above.

Reading and writing DICOM is Python-bound (pydicom), and scipy's distance transforms run on one
thread, so one process uses one core: a report's twelve cases convert and de-identify in about half
the time on two processes. The processes are spawned,
never forked, so a parent holding torch's or ONNX Runtime's threads (a notebook kernel) is safe.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from lungseg import paths
from lungseg.progress import bar as progress_bar

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it): the one count that
    sizes every pool and thread setting of the package."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_cases(fn: Callable[[T], R], items: Sequence[T], desc: str, workers: int | None = None) -> list[R]:
    """``[fn(item) for item in items]``, in order, with a progress bar; on ``workers`` (None: one per
    core) spawned processes when there are several items and workers, else in this process. ``fn``
    must be a module-level function; a worker's exception is raised here, as it was raised there.
    A spawned worker imports the caller's script again: a script must run its work under
    ``if __name__ == "__main__":`` (RuntimeError saying so when a worker stops early)."""
    workers = min(cores() if workers is None else workers, len(items))
    if workers <= 1:
        return [fn(item) for item in progress_bar(items, desc=desc, unit="case")]
    out: list = [None] * len(items)
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for done in progress_bar(as_completed(futures), total=len(items), desc=desc, unit="case"):
                out[futures[done]] = done.result()
    except BrokenProcessPool:
        raise RuntimeError(
            f"{desc}: a worker process stopped before its work was done: out of memory, or a script "
            "that runs lungseg work at its top level (workers are spawned and import the script "
            'again: put that work under `if __name__ == "__main__":`)') from None
    return out


def convert_cases(case_ids: Sequence[str], data: str | os.PathLike[str] | None = None,
                  workers: int | None = None) -> None:
    """Convert the cases not yet in the volume cache from DICOM (:func:`lungseg.io.cache.load_case`),
    on ``workers`` processes (None: one per core); then ``cache.load_cases`` only reads them. Cases
    whose files are missing are left to ``load_cases``, which says what is wrong."""
    from lungseg.io import cache

    root = paths.data_dir(data)
    missing = [(c, None if data is None else str(data)) for c in case_ids
               if paths.images_dir(root, c).is_dir() and paths.mask_file(root, c).is_file()
               and not cache.is_cached(c, data)]
    if len(missing) > 1:
        map_cases(_convert, missing, "convert", workers)


def _convert(job: tuple[str, str | None]) -> str:
    """One case into the volume cache, in a worker process (:func:`convert_cases`)."""
    from lungseg.io import cache

    cache.load_case(*job)
    return job[0]
