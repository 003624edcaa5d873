"""Benchmarks, one subcommand each: ``lungseg bench dicom|train|report [options]``.

``dicom`` times, per case and in one process, three ways of getting a case's HU volume:

- **naive**: the coursework's loop: ``pydicom.dcmread`` every file,
  ``ds.pixel_array * RescaleSlope + RescaleIntercept``, sort by SliceLocation, ``np.stack``;
- **cold**: :func:`lungseg.io.dicom.load_series`, the conversion the cache runs on a miss;
- **warm**: :func:`lungseg.io.cache.load_case` on an existing entry, the call notebooks 02/03 make.
  It returns memory-mapped arrays, so it is reported twice: *open* (the call alone) and
  *open+read* (the call plus reading every voxel of the volume and the mask into memory).

Every variant reads files the OS has already cached (each case is loaded once before timing), so
the numbers compare CPU work, not disk speed. Times are medians over ``--repeat`` runs.
To add a benchmark, write ``add_NAME_parser(subparsers)`` setting ``func`` and list it in
:data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from lungseg import paths
from lungseg.io import cache, dicom

DEFAULT_CASES = ("Case_000", "Case_005", "Case_011")
DEFAULT_REPEAT = 3
DEFAULT_BENCH_CACHE = "build/bench-cache"
MS = 1e3
COLUMNS = ("naive", "cold", "warm open", "warm read")
COLUMN_WIDTH = 14
RATIO_WIDTH = 12


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- dicom
def naive_load(folder: Path) -> np.ndarray:
    """The coursework's loop: read, rescale, sort by SliceLocation, stack (float64)."""
    slices = []
    for path in os.listdir(folder):
        ds = pydicom.dcmread(folder / path)
        hu = ds.pixel_array * ds.RescaleSlope + ds.RescaleIntercept
        slices.append((float(ds.SliceLocation), hu))
    slices.sort(key=lambda s: s[0])
    return np.stack([hu for _, hu in slices])


def warm_open(case_id: str, data: Path) -> cache.Case:
    """What notebooks 02/03 call: memory-mapped arrays from an existing cache entry."""
    return cache.load_case(case_id, data)


def warm_read(case_id: str, data: Path) -> int:
    """:func:`warm_open` plus reading every voxel of volume and mask into memory."""
    case = warm_open(case_id, data)
    hu, mask = np.array(case.volume.hu), np.array(case.mask)
    return hu.size + mask.size


@dataclass
class DicomRow:
    """Median seconds per variant for one case."""

    case_id: str
    slices: int
    naive: float
    cold: float
    warm_open: float
    warm_read: float

    def times(self) -> tuple[float, float, float, float]:
        return self.naive, self.cold, self.warm_open, self.warm_read


def bench_case(case_id: str, data: Path, repeat: int) -> DicomRow:
    """Time the three variants on one case (after one untimed load that fills the cache)."""
    folder = paths.images_dir(data, case_id)
    reference = cache.load_case(case_id, data).volume  # creates the cache entry if missing
    naive = naive_load(folder)
    if not np.array_equal(naive, reference.hu):
        raise AssertionError(f"{case_id}: the naive loop and load_series disagree")
    return DicomRow(
        case_id=case_id,
        slices=reference.shape[0],
        naive=timed(lambda: naive_load(folder), repeat),
        cold=timed(lambda: dicom.load_series(folder), repeat),
        warm_open=timed(lambda: warm_open(case_id, data), repeat),
        warm_read=timed(lambda: warm_read(case_id, data), repeat),
    )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x".rjust(RATIO_WIDTH) if b > 0 else "-".rjust(RATIO_WIDTH)


def format_dicom(rows: list[DicomRow], repeat: int) -> str:
    """Plain-text table: median ms per variant, and naive/cold, naive/warm ratios."""
    head = (f"{'case':<10}{'slices':>7}" + "".join(f"{c:>{COLUMN_WIDTH}}" for c in COLUMNS)
            + "".join(f"{c:>{RATIO_WIDTH}}" for c in ("naive/cold", "naive/open", "naive/read")))
    lines = [f"DICOM -> HU volume: median wall ms of {repeat} run(s), files in the OS cache",
             "warm open = cache.load_case (memory-mapped); warm read = open + read every voxel",
             head, "-" * len(head)]
    total = DicomRow("total", sum(r.slices for r in rows),
                     *(sum(r.times()[i] for r in rows) for i in range(len(COLUMNS))))
    for r in [*rows, total]:
        if r is total:
            lines.append("-" * len(head))
        lines.append(f"{r.case_id:<10}{r.slices:>7}"
                     + "".join(f"{t * MS:>{COLUMN_WIDTH}.1f}" for t in r.times())
                     + _ratio(r.naive, r.cold) + _ratio(r.naive, r.warm_open)
                     + _ratio(r.naive, r.warm_read))
    return "\n".join(lines)


def run_dicom(args: argparse.Namespace) -> int:
    """The ``dicom`` subcommand."""
    data = paths.data_dir(args.data)
    if args.cache_dir:
        os.environ[paths.CACHE_ENV] = str(paths.resolve(args.cache_dir))
    print(f"data {data}; cache {paths.cache_dir()}; pydicom {pydicom.__version__}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs", flush=True)
    rows = []
    for case_id in args.cases:
        rows.append(bench_case(case_id, data, args.repeat))
        print(f"  {case_id} done", file=sys.stderr, flush=True)
    print(format_dicom(rows, args.repeat))
    return 0


def add_dicom_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``dicom`` subcommand."""
    p = sub.add_parser("dicom", help="naive loop vs load_series vs the cache",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), metavar="CASE")
    p.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT,
                   help="runs per median (%(default)s)")
    p.add_argument("--data", default=None,
                   help=f"data directory (default ${paths.DATA_ENV} or data/)")
    p.add_argument("--cache-dir", default=DEFAULT_BENCH_CACHE,
                   help="cache for the warm runs (default %(default)s; '' = the project cache)")
    p.set_defaults(func=run_dicom)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` benchmark lives in :mod:`lungseg.report.bench_train` (imports torch lazily here)."""
    from lungseg.report.bench_train import add_train_parser as add

    add(sub)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """The ``report`` benchmark lives in :mod:`lungseg.report.bench_report`."""
    from lungseg.report.bench_report import add_report_parser as add

    add(sub)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (add_dicom_parser, add_train_parser,
                                                                          add_report_parser)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The benchmarks of ``lungseg bench`` (one sub-subcommand each)."""
    sub = ap.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for add in SUBCOMMANDS:
        add(sub)
