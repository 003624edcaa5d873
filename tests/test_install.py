"""``pip install`` gives a tool with its model: the wheel carries the released model and the QC
limits, and the installed package (outside any clone) finds them and writes nothing beside itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungseg import paths

pytestmark = pytest.mark.skipif(not (paths.MODELS / "lungseg-cpu-lctsc12" / "model.pt").is_file(),
                                reason="no released model in models/")


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())


@pytest.mark.skipif(_setuptools_version() < (77,), reason="building the wheel offline needs setuptools >= 77")
def test_the_installed_wheel_finds_its_released_model(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(paths.ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("lungseg-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    probe = ("import json, lungseg.paths as p; from lungseg.network import runs; "
             "from lungseg.inference import qc; c = runs.default_model(); qc.load_thresholds(); "
             "print(json.dumps([str(p.ROOT), p.CHECKOUT, str(p.BUILD), c.source, str(c.path)]))")
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("LUNGSEG_BUILD", None)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    root, checkout, build, source, model = json.loads(out.stdout)
    assert Path(root) == site and not checkout  # the installed copy, not this clone
    assert Path(build) == tmp_path / "cache" / "lungseg"  # never inside site-packages
    assert source == "released" and Path(model) == site / "lungseg" / "released" / "lungseg-cpu-lctsc12"
    shipped = (site / "lungseg" / "released" / "lungseg-cpu-lctsc12" / "model.pt").read_bytes()
    assert shipped == (paths.MODELS / "lungseg-cpu-lctsc12" / "model.pt").read_bytes()
    licences = site / "lungseg-0.1.0.dist-info" / "licenses"
    assert "Apache License" in (licences / "LICENSE").read_text()
    assert "LCTSC" in (licences / "NOTICE").read_text()
