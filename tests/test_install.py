"""``pip install`` gives a tool with its model: the wheel carries the released model and the QC
limits, and the installed package (outside any clone) finds them and writes nothing beside itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from builders import REAL_CASE, image_of

from lungseg import paths
from lungseg.io import dicom

pytestmark = pytest.mark.skipif(not (paths.MODELS / "lungseg-cpu-lctsc12" / "model.pt").is_file(),
                                reason="no released model in models/")


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())


needs_wheel = pytest.mark.skipif(_setuptools_version() < (77,),
                                 reason="building the wheel offline needs setuptools >= 77")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout installed into a folder of its own (outside the clone)."""
    tmp = tmp_path_factory.mktemp("install")
    wheels, site = tmp / "wheels", tmp / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(paths.ROOT)],
                   check=True, capture_output=True, cwd=tmp)
    (wheel,) = wheels.glob("lungseg-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    return site


@needs_wheel
def test_the_installed_wheel_finds_its_released_model(tmp_path: Path, site: Path) -> None:
    probe = ("import json, lungseg.paths as p; from lungseg.network import selection; "
             "from lungseg.inference import qc; c = selection.default_model(); qc.load_thresholds(); "
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


NO_EXTRAS = ("torch", "onnx", "dask", "distributed", "papermill")
"""What the base install lacks: made unimportable in the probe below."""


@needs_wheel
@pytest.mark.skipif(not REAL_CASE.is_dir(), reason=f"needs {REAL_CASE}")
def test_the_base_install_segments_files_and_folders_without_torch(tmp_path: Path, site: Path) -> None:
    """The installed wheel with neither PyTorch nor the other extras importable: ``predict`` on a DICOM
    folder and on the same CT as NIfTI runs the shipped ONNX model, gives the same mask, and writes
    nothing into the installed package."""
    volume = dicom.load_series(REAL_CASE)
    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image_of(volume), str(nifti))
    before = sorted(p for p in site.rglob("*"))
    run = ("import sys\n"
           f"for m in {NO_EXTRAS!r}: sys.modules[m] = None\n"
           "from lungseg.cli import main\n"
           "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("LUNGSEG_BUILD", None)

    def lungseg(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", run, *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path)

    assert lungseg("--version").returncode == 0
    for src, out in ((REAL_CASE, tmp_path / "from_dicom"), (nifti, tmp_path / "from_nifti")):
        done = lungseg("predict", src, "--out", out, "--quiet")
        assert done.returncode == 0, done.stderr[-2000:]
        stats = json.loads((out / "stats.json").read_text())
        assert stats["model"]["source"] == "released" and stats["runtime"].startswith("onnxruntime")
    a = np.asarray(nib.load(tmp_path / "from_dicom" / "lung_mask.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "from_nifti" / "lung_mask.nii.gz").dataobj)
    assert a.sum() > 0 and np.array_equal(a, b)
    assert sorted(p for p in site.rglob("*")) == before  # nothing written beside the package
    assert "lungseg[report]" in lungseg("train", "--profile", "cpu").stderr  # an extra, named
