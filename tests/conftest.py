"""Fixtures for the builders the tests share (volumes, cases, tiny checkpoints, the real fixtures),
and a session hook: the summary says which IOD conformance checker the conformance tests used.

Plain helpers live in ``builders.py`` and ``synthetic.py`` (DICOM series); no test module imports
another test module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from builders import REAL_CASE, REFERENCE_WEIGHTS, case_of, write_checkpoint

from lungseg.io import cache


@pytest.fixture
def make_case() -> Callable[..., cache.Case]:
    """``make_case(hu, mask=None, spacing=(3, 1, 1), case_id="Case_X")``: an axial head-first case."""
    return case_of


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_checkpoint(name="run", image_size=16, seed=0)``: an untrained UNet saved as
    ``train.fit`` saves ``model.pt``, in ``tmp_path/name``."""
    def make(name: str = "run", image_size: int = 16, seed: int = 0) -> Path:
        return write_checkpoint(tmp_path / name / "model.pt", image_size=image_size, seed=seed)
    return make


@pytest.fixture
def real_case() -> Path:
    """Case_000's DICOM folder (skips when the data is not unpacked)."""
    if not REAL_CASE.is_dir():
        pytest.skip(f"needs {REAL_CASE}")
    return REAL_CASE


@pytest.fixture
def reference_weights() -> Path:
    """The course's reference weights beside the repository (skips when absent)."""
    if not REFERENCE_WEIGHTS.is_file():
        pytest.skip(f"needs {REFERENCE_WEIGHTS}")
    return REFERENCE_WEIGHTS



def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    outcomes = ("passed", "failed", "error")
    if any("test_conformance.py" in getattr(report, "nodeid", "")
           for key in outcomes for report in terminalreporter.stats.get(key, [])):
        from conformance import CHECKER  # tests/ is on sys.path, as for the other helpers

        terminalreporter.write_sep("-", f"IOD conformance checked with {CHECKER}")
