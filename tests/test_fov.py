"""Any axis-aligned series segments, whatever its slice shape (lungseg.inference.fov): slices that are not
square in pixels or in mm reach the model through a square field of view in mm and come back on
their own grid; square slices keep the path they always had, bit for bit."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from builders import run_cli, write_checkpoint
from corpus import ORIENTATIONS, write_oriented

from lungseg import paths
from lungseg.evaluation import metrics
from lungseg.inference import forward, fov, ort, predict, resample
from lungseg.io import dicom, orient, series
from lungseg.network import runs, selection

needs_onnx = pytest.mark.skipif(not ort.available(), reason="onnxruntime is not installed")
REAL_CASE = paths.DEFAULT_DATA / "Images" / "Case_000"


def test_only_slices_square_in_pixels_and_mm_are_plain() -> None:
    assert fov.is_plain((3, 512, 512), (0.7, 0.7)) and fov.is_plain((512, 512), None)
    assert not fov.is_plain((3, 60, 512), (5.0, 0.68))
    assert not fov.is_plain((3, 512, 512), (0.7, 1.4))
    assert not fov.is_plain((3, 400, 512), None)


def test_the_field_is_square_in_mm_and_centred() -> None:
    f = fov.field((60, 512), (5.0, 0.68), 160)  # a coronal MPR: 300 mm x 348 mm
    (rows, cols), (dy, dx) = f.padded, (5.0, 0.68)
    assert cols == 512 and abs(rows * dy - cols * dx) <= dy / 2  # square to within half a pixel
    assert f.before[0] + f.after[0] == rows - 60 and abs(f.before[0] - f.after[0]) <= 1
    hu = np.zeros((1, 60, 512), dtype=np.int16)
    assert f.pad(hu).shape == (1, rows, 512) and f.pad(hu)[0, 0, 0] == fov.AIR_HU


@pytest.mark.parametrize(("shape", "spacing"), [((30, 64), (2.0, 0.8)), ((64, 40), (0.8, 0.8)),
                                                ((48, 48), (1.0, 0.5))])
def test_an_image_goes_to_the_model_grid_and_back_in_place(shape: tuple[int, int],
                                                           spacing: tuple[float, float]) -> None:
    """to_model then from_model keeps a blob where it was (centroid within 0.1 pixel) and nearly
    unchanged: a model's logits land on the pixels their input came from."""
    f = fov.field(shape, spacing, 64)
    r, c = np.mgrid[0:shape[0], 0:shape[1]]
    y_mm, x_mm = r * spacing[0], c * spacing[1]
    blob = np.exp(-((y_mm - 0.4 * shape[0] * spacing[0]) ** 2 + (x_mm - 0.6 * shape[1] * spacing[1]) ** 2)
                  / (2 * 8.0 ** 2)).astype(np.float32)
    padded = np.zeros((1, *f.padded), dtype=np.float32)
    padded[0, f.before[0]:f.before[0] + shape[0], f.before[1]:f.before[1] + shape[1]] = blob
    back = f.from_model(f.to_model(padded))[0]
    assert back.shape == shape and np.abs(back - blob).max() < 0.1
    for grid in (r, c):
        assert abs((back * grid).sum() / back.sum() - (blob * grid).sum() / blob.sum()) < 0.1


@needs_onnx
def test_square_slices_keep_the_previous_path_bit_for_bit(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=16)
    session = predict.onnx_session(ckpt)
    hu = np.random.default_rng(0).integers(-1024, 400, size=(3, 48, 48)).astype(np.int16)
    expected = resample.resample(
        session._run(resample.resample(session.normalise(hu), resample.area_matrix(48, 16)), "x", False, 4),
        resample.bilinear_matrix(16, 48))
    np.testing.assert_array_equal(session.logits(hu, spacing=(0.7, 0.7)), expected)
    np.testing.assert_array_equal(session.logits(hu), expected)


@needs_onnx
@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_a_rectangular_slice_equals_the_square_path_on_the_slice_padded_with_air(
        tmp_path: Path, engine: str) -> None:
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=16)
    net, cfg = predict.load_checkpoint(ckpt)
    hu = np.random.default_rng(1).integers(-1024, 400, size=(4, 40, 64)).astype(np.int16)
    padded = np.pad(hu, ((0, 0), (12, 12), (0, 0)), constant_values=fov.AIR_HU)
    square = forward.run_logits(net, cfg, padded, runtime=engine, amp=False)
    rect = forward.run_logits(net, cfg, hu, runtime=engine, amp=False, spacing=(0.8, 0.8))
    assert rect.shape == hu.shape
    np.testing.assert_allclose(rect, square[:, 12:52], atol=1e-4)


def _coronal_reformat(folder: Path, step: int) -> tuple[np.ndarray, tuple[float, float, float], tuple]:
    """A real coronal MPR: 48 axial slices of Case_000 through both lungs, every ``step``-th row,
    written as coronal slices (each 48 x 512 pixels, ``step`` x 0.98 mm apart). Returns the axial
    crop (canonical), its spacing and origin."""
    vol = dicom.load_series(REAL_CASE)
    z0, nz = 50, 48
    hu = np.ascontiguousarray(vol.hu[z0:z0 + nz])
    dz, dy, dx = vol.spacing
    origin = (vol.origin[0], vol.origin[1], float(vol.positions[z0]))
    write_oriented(folder, np.ascontiguousarray(hu[:, ::step]), (dz, dy * step, dx), origin,
                   ORIENTATIONS["coronal"])
    return hu, (dz, dy, dx), origin


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_CASE.is_dir(), reason=f"needs {REAL_CASE}")
@pytest.mark.skipif(not (selection.RELEASED / runs.WEIGHTS).is_file(), reason="needs the released model")
def test_a_real_coronal_reformat_segments_like_the_axial_series(tmp_path: Path) -> None:
    """Before: "slices of (48, 171) pixels are not square". Now predict segments the coronal MPR,
    and its lungs are those of the axial series at the same voxels."""
    step = 3
    hu, spacing, origin = _coronal_reformat(tmp_path / "coronal", step)
    write_oriented(tmp_path / "axial", hu, spacing, origin, ORIENTATIONS["axial-HFS"])
    coronal = dicom.load_series(tmp_path / "coronal")
    canon, _ = orient.canonical(coronal)
    assert series.plane_name(coronal.orientation) == "coronal" and canon.shape[1] != canon.shape[2]
    for name in ("axial", "coronal"):
        assert run_cli("predict", tmp_path / name, "--out", tmp_path / f"out-{name}",
                       "--checkpoint", selection.RELEASED) == 0
    masks = {name: np.asarray(nib.as_closest_canonical(
        nib.load(tmp_path / f"out-{name}" / predict.NIFTI_NAME)).dataobj) for name in ("axial", "coronal")}
    # RAS arrays (x, y, z): the coronal grid holds every step-th row (y) of the axial grid; RAS y runs
    # from posterior to anterior, so both subsample from the same end when the count divides.
    axial = masks["axial"][:, ::-1][:, ::step][:, ::-1]
    assert axial.shape == masks["coronal"].shape
    for label in (1, 2):
        assert metrics.volume_dice(axial == label, masks["coronal"] == label) > 0.95, label
