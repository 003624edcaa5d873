"""Refresh what nbval compares: the stored outputs of the notebooks' checked cells.

``lungseg checked [01_dicom ...]`` runs each numbered notebook with its own (quick)
defaults in the test session's environment, as ``pytest --nbval`` does, and copies the outputs of its
``# NBVAL_CHECK_OUTPUT`` cells, and only those, into the notebook file. Run it after a change that is
meant to change a checked value, and review the diff: every changed line is a result the tests will
hold the code to.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from lungseg import paths

MARK = "# NBVAL_CHECK_OUTPUT"
NOTEBOOKS = paths.ROOT / "notebooks"
KERNEL = "lungseg"


def checked_ids(nb) -> list[str]:
    """The ids of a notebook's checked code cells."""
    return [c.id for c in nb.cells if c.cell_type == "code" and c.source.startswith(MARK)]


def refresh(notebook: Path, kernel: str = KERNEL) -> list[str]:
    """Run ``notebook`` with its defaults and store its checked cells' new outputs; return the ids of
    the cells whose outputs changed."""
    import nbformat

    from lungseg.report import execute

    with tempfile.TemporaryDirectory(prefix="lungseg-checked-") as tmp:
        ran_path = Path(tmp) / notebook.name
        execute.execute(notebook, ran_path, {}, kernel, notebook.parent)
        ran = {c.id: c for c in nbformat.read(ran_path, 4).cells}
    nb = nbformat.read(notebook, 4)
    changed = []
    for cell in nb.cells:
        if cell.id in checked_ids(nb):
            if ran[cell.id].outputs != cell.outputs or cell.execution_count is None:
                cell.outputs = ran[cell.id].outputs
                # nbval skips a cell stored without an execution count ("unrun reference cell")
                cell.execution_count = ran[cell.id].execution_count
                changed.append(cell.id)
    if changed:
        nbformat.write(nb, notebook)
    return changed


def nbval_environment() -> dict[str, str]:
    """The environment nbval runs the notebooks in (``conftest.py`` sets it for the test session): the
    tests' own build folder, and the smoke profile named explicitly."""
    return {"LUNGSEG_BUILD": os.environ.get("LUNGSEG_TEST_BUILD") or str(paths.ROOT / ".build-tests"),
            "LUNGSEG_PROFILE": "quick"}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``lungseg checked``."""
    ap.add_argument("only", nargs="*", help="notebook stems (default: all numbered notebooks, in order)")
    ap.add_argument("--kernel", default=KERNEL)


def command(args: argparse.Namespace) -> int:
    """``lungseg checked``: re-execute the notebooks as nbval does and refresh the checked outputs."""
    os.environ.update(nbval_environment())  # the kernels inherit it: they see what nbval's see
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if args.only and not any(nb.stem.startswith(o) for o in args.only):
            continue
        changed = refresh(nb, args.kernel)
        print(f"{nb.name}: {len(changed)} checked cell(s) changed"
              + (f" ({', '.join(changed)})" if changed else ""))
    return 0
