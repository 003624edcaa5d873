"""Execute a notebook headless with papermill: the one way the report (:mod:`lungseg.report.runner`) and
the cohort report (:mod:`lungseg.report.cohort_report`) run notebooks.

The kernel it starts is told it is headless (:data:`lungseg.progress.HEADLESS_ENV`): progress bars go
to the terminal, one summary line per step to the notebook. Its file-descriptor capture is off, so
what is drawn on the process's own standard error stays in the terminal. It talks to papermill over
IPC sockets in a private temporary folder (mode 0700) instead of TCP ports on the machine: no other user
can reach the kernel, and the kernel has no reason for its "running over TCP without encryption"
warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lungseg import progress

KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False",
                    "--IPKernelApp.exec_lines=__import__('lungseg.report.execute', fromlist=['_'])"
                    ".quiet_shutdown_race()"]
"""Given to every kernel: its process's standard error is the terminal's, not the notebook's; and
:func:`quiet_shutdown_race`."""


class _ShutdownRace(logging.Filter):
    """Drops asyncio's "Task was destroyed but it is pending" for ipykernel's own control-channel task:
    when papermill shuts a finished kernel down, the kernel may exit while that task still waits for
    the next message (a race inside ipykernel, seen in one notebook of most report runs). It says
    nothing about the notebook; every other asyncio message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Task was destroyed but it is pending") and "dispatch_control" in text)


def quiet_shutdown_race() -> None:
    """Install :class:`_ShutdownRace` on the ``asyncio`` logger (run by every report kernel at start)."""
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, _ShutdownRace) for f in log.filters):
        log.addFilter(_ShutdownRace())


@contextlib.contextmanager
def _headless_env() -> Iterator[None]:
    """:data:`lungseg.progress.HEADLESS_ENV` set for the kernels started inside (they copy the
    environment), restored afterwards."""
    before = os.environ.get(progress.HEADLESS_ENV)
    os.environ[progress.HEADLESS_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(progress.HEADLESS_ENV, None)
        else:
            os.environ[progress.HEADLESS_ENV] = before


def _ipc_manager(folder: str) -> type:
    """A kernel manager class whose kernels listen on IPC sockets under ``folder``."""
    from jupyter_client.manager import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(transport="ipc", ip=os.path.join(folder, "kernel"), **kwargs)

    return IpcKernelManager


def execute(notebook: Path, output: Path, parameters: dict, kernel: str, cwd: Path,
            log_output: bool = False) -> None:
    """Run ``notebook`` with ``parameters`` (papermill) into ``output``; papermill's
    PapermillExecutionError when a cell fails. ``log_output``: echo the cells' outputs to this
    process's log (the report's terminal)."""
    import papermill as pm

    with tempfile.TemporaryDirectory(prefix="lungseg-kernel-") as sockets, _headless_env():
        pm.execute_notebook(notebook, output, parameters=parameters, kernel_name=kernel, cwd=str(cwd),
                            progress_bar=False, log_output=log_output,
                            kernel_manager_class=_ipc_manager(sockets), extra_arguments=KERNEL_ARGUMENTS)
