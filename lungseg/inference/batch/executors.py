"""Where batch tasks run: in this process, or on a local or remote Dask cluster of one-thread workers
(also the QC calibration's table, :mod:`lungseg.evaluation.qc_calibrate`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence

from lungseg import heap
from lungseg.inference.batch.plan import BatchError
from lungseg.inference.batch.tasks import Settings, warm_up, worker_network
from lungseg.io import parallel


def local_worker_environ() -> dict[str, str]:
    """Dask's setting for the local cluster's worker processes: :mod:`lungseg.heap`'s malloc settings
    instead of Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``. That trim threshold alone turns off
    glibc's dynamic mmap threshold, so every array over 128 KiB (each batch of slices, each 512² mask)
    is mapped and faulted in afresh: inference ran 1.65x slower in such a worker (2.6 s against 1.6 s
    for a 122-slice volume, one thread). The workers have no memory limit to police (below), so
    nothing needs the memory handed back at once."""
    return {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in heap.environ().items()}


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

        import dask
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
            with dask.config.set(local_worker_environ()):
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                            memory_limit=0, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
            self.description = f"on a local Dask cluster of {workers} worker processes"

    @property
    def workers(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def warm_up(self, settings: Settings) -> None:
        """Every worker loads the network now (it keeps it for all its series)."""
        self.client.run(warm_up, settings)

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


WORKER_MEMORY_GB = 1.5
"""Memory planned per local worker (the measured peak for 150-180 slices of 512² stays below)."""


class CohortNote(UserWarning):
    """A note ``batch`` prints for the user (one line)."""


def have_dask() -> bool:
    """True when Dask's distributed scheduler is installed (the ``[cohort]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


def default_workers() -> int:
    """One local worker per core, as many as the memory holds at :data:`WORKER_MEMORY_GB` each."""
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (AttributeError, ValueError, OSError):
        memory_gb = float("inf")
    return max(1, min(parallel.cores(), int(memory_gb // WORKER_MEMORY_GB)))


class Lazy:
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
