"""glibc malloc settings for this package's large, short-lived arrays: the one place they are set.

Inference and evaluation allocate and free arrays of megabytes hundreds of times per volume (a batch of
slices, the logits upsampled to 512², a mask's distance transform). With glibc's defaults many of them
are mapped from the kernel and faulted in page by page every time, and the freed top of the heap is
handed back at once: 167,000 page faults (650 MB) for the logits of one 136-slice volume. Keeping
freed memory for the next array instead: those logits 1.085 -> 0.893 s (median of five, two threads,
2-core AMD EPYC), and in a whole report run the QC study's network time per series (one-thread
workers, median) 2.12 -> 1.62 s and ``05_qc`` 269 -> 241 s; ``03_eval`` showed no change beyond this
machine's run-to-run spread (312 and 319 s). Results are the same to the last digit (the same values in
other pages); the cost is up to 512 MiB of freed memory a process keeps.

:func:`apply` sets them for this process (``mallopt``) and, through the environment, for the processes
it starts (notebook kernels, Dask workers), which read them when they start. A value the user set in
the environment wins. Elsewhere than glibc (macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": 32 << 20,  # glibc's largest: arrays below 32 MiB come from the heap
    "MALLOC_TRIM_THRESHOLD_": 512 << 20,  # freed memory kept for the next volume's arrays
    "MALLOC_TOP_PAD_": 64 << 20,  # the heap grows in steps of 64 MiB, not page by page
}
"""Environment variable (glibc's name) → bytes."""
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3}
"""glibc's ``mallopt`` parameter numbers (M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD)."""


def environ() -> dict[str, str]:
    """The settings as environment variables for a child process (the user's own values kept)."""
    return {k: os.environ.get(k, str(v)) for k, v in SETTINGS.items()}


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "gnu_get_libc_version") else None


def apply() -> bool:
    """Set :data:`SETTINGS` (or the user's values) for this process and its future children; True
    when glibc took them all."""
    values = environ()
    os.environ.update(values)
    libc = _glibc()
    try:
        numbers = {k: int(v) for k, v in values.items()}
    except ValueError:  # a user's value glibc cannot read either: leave this process as it is
        return False
    return libc is not None and all(libc.mallopt(_MALLOPT[k], n) == 1 for k, n in numbers.items())
