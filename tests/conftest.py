"""Session hooks: the summary says which IOD conformance checker the conformance tests used."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    outcomes = ("passed", "failed", "error")
    if any("test_conformance.py" in getattr(report, "nodeid", "")
           for key in outcomes for report in terminalreporter.stats.get(key, [])):
        from conformance import CHECKER  # tests/ is on sys.path, as for the other helpers

        terminalreporter.write_sep("-", f"IOD conformance checked with {CHECKER}")
