"""IOD conformance of a file lungseg wrote, against the file it came from.

Two checkers: ``dciodvfy`` (dicom3tools; ``.ci/run`` installs it) when it is on the PATH, and always
the structural rules of :mod:`lungseg.io.iod` (every Type 1/2 attribute of a module in use present,
Type 1 not empty). A written file may show no error of either that its source did not have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pydicom

from lungseg.io import iod

DCIODVFY = shutil.which("dciodvfy")
CHECKER = ("dciodvfy (dicom3tools) and lungseg.io.iod's structural rules" if DCIODVFY else
           "lungseg.io.iod's structural rules only: dciodvfy is not installed (apt-get install dicom3tools)")
"""Which checkers ran, for the test report."""
# dciodvfy quotes values in its messages ("value <ZEBEDEE> for", "= <Doe^Jane>"): a message about
# the same attribute is the same error whatever the value.
_VALUE = re.compile(r"((?:value|=) )<[^>]*>")


def dciodvfy_errors(path: Path) -> set[str]:
    """The "Error" lines of ``dciodvfy`` on ``path``, values replaced by ``<…>``."""
    assert DCIODVFY is not None
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    if any(line.startswith("Abort") for line in lines):
        raise RuntimeError(f"dciodvfy could not read {path}: {out.stderr.strip()}")
    return {_VALUE.sub(r"\1<…>", line.strip()) for line in lines if line.startswith("Error")}


def errors(path: Path) -> set[str]:
    """Every IOD error found in ``path`` by the checkers available (see :data:`CHECKER`)."""
    found = {f"lungseg.io.iod: {e}" for e in iod.structural_errors(pydicom.dcmread(path))}
    if DCIODVFY:
        found |= {f"dciodvfy: {e}" for e in dciodvfy_errors(path)}
    return found


def new_errors(source: Path, written: Path) -> set[str]:
    """IOD errors of ``written`` that ``source`` does not have."""
    return errors(written) - errors(source)
