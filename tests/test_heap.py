"""lungseg.heap: the malloc settings reach this process's children, and a user's own value wins."""

from __future__ import annotations

import os
import subprocess
import sys

from lungseg import heap


def test_the_settings_are_environment_values_for_child_processes(monkeypatch) -> None:
    for k in heap.SETTINGS:
        monkeypatch.delenv(k, raising=False)
    assert heap.environ() == {k: str(v) for k, v in heap.SETTINGS.items()}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert heap.environ()["MALLOC_TRIM_THRESHOLD_"] == "1048576"


def test_apply_sets_them_for_this_process_and_what_it_starts() -> None:
    # In a child, so that this test process keeps its own settings.
    show = "import os; print(os.environ['MALLOC_TOP_PAD_'])"
    code = ("import subprocess, sys; from lungseg import heap; took = heap.apply(); "
            f"child = subprocess.run([sys.executable, '-c', {show!r}], capture_output=True, text=True); "
            "print(took, child.stdout.strip())")
    env = {k: v for k, v in os.environ.items() if k not in heap.SETTINGS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    took, child = out.stdout.split()
    assert child == str(heap.SETTINGS["MALLOC_TOP_PAD_"])
    assert took == ("True" if sys.platform.startswith("linux") and heap._glibc() is not None else "False")


def test_a_value_glibc_cannot_read_is_left_alone() -> None:
    env = {**os.environ, "MALLOC_TOP_PAD_": "lots"}
    out = subprocess.run([sys.executable, "-c", "from lungseg import heap; print(heap.apply())"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
