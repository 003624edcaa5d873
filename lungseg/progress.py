"""Progress of long work: the one progress bar of lungseg (:func:`bar`).

Interactive (a terminal, a live JupyterLab session), it is a tqdm bar as usual. In a headless report
run (``./run_all.sh``: :data:`HEADLESS_ENV` set by :mod:`lungseg.report.execute` for the kernels it
starts), the bar goes to the process's own standard error, the terminal that runs the report, and never
into the executed notebook; the notebook keeps one line per finished step instead: what, how many and
how long (``load: 12 cases in 41.3 s``). Bars opened with ``leave=False`` (the inner loop of a longer
step, one epoch's batches) leave no line.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

HEADLESS_ENV = "LUNGSEG_HEADLESS"
"""Set to 1 in the environment of a headless notebook run."""


def headless() -> bool:
    """True inside a headless report run (:data:`HEADLESS_ENV` is "1")."""
    return os.environ.get(HEADLESS_ENV) == "1"


class _Bar(tqdm):
    """tqdm that, headless, draws on the process's standard error and closes with a summary line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._summary = headless() and kwargs.get("leave", True) and not kwargs.get("disable", False)
        self._started = time.perf_counter()
        if headless():
            # sys.__stderr__ is the kernel process's own stream (the terminal); sys.stderr would be the
            # notebook's output. Without a process stream (pythonw), draw nothing.
            kwargs["file"] = sys.__stderr__ or open(os.devnull, "w")  # noqa: SIM115 - lives as long as the bar
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        if getattr(self, "_summary", False):
            self._summary = False  # close runs again from __del__
            print(f"{self.desc or 'done'}: {self.n} {_plural(getattr(self, 'unit', 'it'), self.n)} in "
                  f"{time.perf_counter() - self._started:.1f} s", file=sys.stdout, flush=True)
        super().close()


def terminal(line: str) -> None:
    """A line of progress (an epoch's losses, time left): headless, on the terminal only, never in the
    notebook; otherwise on standard error."""
    print(line, file=(sys.__stderr__ if headless() else None) or sys.stderr, flush=True)


def _plural(unit: str, n: float) -> str:
    if n == 1 or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A progress bar over ``iterable`` (tqdm's arguments: desc, unit, total, disable, leave, ...)."""
    return _Bar(iterable, **kwargs)
