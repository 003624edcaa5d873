"""The one progress bar: a tqdm bar when interactive; headless, the bar leaves the notebook's output
alone and a single summary line says what, how many and how long."""

from __future__ import annotations

import io
import sys

import pytest

from lungseg import progress


def test_interactive_bar_draws_on_stderr_and_prints_no_summary(monkeypatch, capsys) -> None:
    monkeypatch.delenv(progress.HEADLESS_ENV, raising=False)
    assert list(progress.bar(range(3), desc="load", unit="case")) == [0, 1, 2]
    out = capsys.readouterr()
    assert out.out == "" and "load" in out.err and "3/3" in out.err


@pytest.mark.parametrize("leave", [True, False])
def test_headless_bar_keeps_the_notebook_clean(monkeypatch, capsys, leave: bool) -> None:
    terminal = io.StringIO()
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    monkeypatch.setattr(sys, "__stderr__", terminal)  # the process's own stream: the terminal
    assert sum(progress.bar(range(4), desc="predict", unit="batch", leave=leave)) == 6
    out = capsys.readouterr()
    assert out.err == ""  # nothing reaches the notebook's stderr
    assert "predict" in terminal.getvalue()  # drawn on the terminal (an inner bar clears its line)
    if leave:
        assert out.out.startswith("predict: 4 batches in ") and out.out.endswith(" s\n")
        assert out.out.count("\n") == 1
    else:  # an inner loop: no line of its own
        assert out.out == ""


def test_a_disabled_bar_says_nothing(monkeypatch, capsys) -> None:
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    list(progress.bar(range(2), desc="x", disable=True))
    assert capsys.readouterr() == ("", "")
