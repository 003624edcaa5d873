"""The code passes the linter configured in pyproject.toml (ruff)."""

import shutil
import subprocess
import sys

import pytest

from lungseg import paths


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(paths.ROOT / ".venv" / "bin"))
    if ruff is None:
        pytest.skip("ruff not installed")
    out = subprocess.run([ruff, "check", "lungseg", "tests"], cwd=paths.ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_imports_without_side_effects() -> None:
    code = ("import lungseg.io.dicom, lungseg.io.cache, lungseg.train.loop, lungseg.evaluation.evaluate, "
            "lungseg.report.plots")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
