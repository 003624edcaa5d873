"""Inputs the released model cannot serve never get a "pass": a coarse 64² volume at 4 mm, a crop
holding one lung, a chest crop cutting both lungs, and slices without lung (an abdominal scan), each
made from a real case and given to ``lungseg predict`` as a NIfTI file. Either predict refuses the
input (exit code non-zero, the file named) or its QC verdict is review or fail."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from builders import REAL_CASE, image_of, run_cli
from scipy import ndimage

from lungseg import paths
from lungseg.evaluation import failures
from lungseg.inference import predict
from lungseg.io import cache
from lungseg.io.dicom import Volume

pytestmark = [pytest.mark.skipif(not REAL_CASE.is_dir(), reason=f"needs {REAL_CASE}"),
              pytest.mark.skipif(not (paths.MODELS / "lungseg-cpu-lctsc12" / "model.pt").is_file(),
                                 reason="needs the released model")]


def _crop_x(volume: Volume, start: int, stop: int) -> Volume:
    """Columns [start, stop) of a canonical volume (the origin follows)."""
    dx = volume.spacing[2]
    return replace(volume, hu=np.ascontiguousarray(np.asarray(volume.hu)[:, :, start:stop]),
                   origin=(volume.origin[0] + start * dx, *volume.origin[1:]))


def _coarse(volume: Volume, mm: float = 4.0, n: int = 64) -> Volume:
    """The volume resampled in-plane to ``mm`` pixels (linear), the central n x n kept."""
    _, dy, dx = volume.spacing
    hu = ndimage.zoom(np.asarray(volume.hu, dtype=np.float32), (1, dy / mm, dx / mm), order=1)
    y0, x0 = (hu.shape[1] - n) // 2, (hu.shape[2] - n) // 2
    hu = np.rint(hu[:, y0:y0 + n, x0:x0 + n]).astype(np.int16)
    origin = (volume.origin[0] + x0 * mm, volume.origin[1] + y0 * mm, volume.origin[2])
    return replace(volume, hu=hu, spacing=(volume.spacing[0], mm, mm), origin=origin)


def _unservable(case: cache.Case) -> dict[str, Volume]:
    volume, truth = case.volume, np.asarray(case.mask, dtype=bool)
    xs = np.flatnonzero(truth.any(axis=(0, 1)))
    middle, width = (xs[0] + xs[-1]) // 2, xs[-1] - xs[0]
    quarter = width // 4
    no_lung = failures.make_failure(volume, truth, "no_lung", np.random.default_rng(0)).volume
    return {"coarse_64_at_4mm": _coarse(volume),
            "one_lung": _crop_x(volume, 0, middle),
            "both_lungs_cut": _crop_x(volume, middle - quarter, middle + quarter),
            "no_lung": no_lung}


def test_inputs_the_model_cannot_serve_never_pass(tmp_path: Path) -> None:
    case = cache.load_case(REAL_CASE.name, REAL_CASE.parents[1])
    verdicts = {}
    for name, volume in _unservable(case).items():
        src = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image_of(volume), str(src))
        out = tmp_path / name
        code = run_cli("predict", src, "--out", out, "--quiet")
        stats = out / predict.STATS_NAME
        verdicts[name] = json.loads(stats.read_text())["qc"]["status"] if code == 0 else f"refused ({code})"
    assert all(v != "pass" for v in verdicts.values()), verdicts
