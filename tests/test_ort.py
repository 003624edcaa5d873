"""ONNX Runtime inference (lungseg.inference.ort): resampling matrices equal to torch's interpolate,
logits
and masks equal to PyTorch's, on synthetic volumes and a real series; predict's runtime choice."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import REAL_CASE, REFERENCE_WEIGHTS, run_cli, write_checkpoint
from synthetic import write_series

from lungseg.evaluation import metrics
from lungseg.inference import forward, ort, predict, resample
from lungseg.io import dicom
from lungseg.network import model, runs
from lungseg.network.config import TrainConfig
from lungseg.train import loop

pytestmark = pytest.mark.skipif(not ort.available(), reason="onnxruntime is not installed")


@pytest.mark.parametrize(("n_in", "n_out"), [(512, 160), (512, 128), (64, 16), (50, 24), (16, 16)])
def test_area_matrix_is_torchs_area_interpolation(n_in: int, n_out: int) -> None:
    x = torch.rand(3, 1, n_in, n_in, generator=torch.Generator().manual_seed(n_in))
    expected = F.interpolate(x, size=(n_out, n_out), mode="area")[:, 0].numpy()
    got = resample.resample(x[:, 0].numpy(), resample.area_matrix(n_in, n_out))
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize(("n_in", "n_out"), [(160, 512), (128, 512), (16, 64), (24, 50), (7, 7)])
def test_bilinear_matrix_is_torchs_bilinear_interpolation(n_in: int, n_out: int) -> None:
    x = torch.randn(3, 1, n_in, n_in, generator=torch.Generator().manual_seed(n_in))
    expected = F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=False)[:, 0].numpy()
    got = resample.resample(x[:, 0].numpy(), resample.bilinear_matrix(n_in, n_out))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _session(ckpt: Path) -> ort.Session:
    return predict.onnx_session(ckpt)


@pytest.mark.parametrize("image_size", [16, 8])
def test_onnx_logits_match_pytorch_on_a_synthetic_series(tmp_path: Path, image_size: int) -> None:
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=image_size)
    series = tmp_path / "Case_900"
    write_series(series, n=6)
    volume = dicom.load_series(series)
    net, cfg = predict.load_checkpoint(ckpt)
    expected = forward.run_logits(net, cfg, volume.hu, amp=False, runtime="torch")
    session = _session(ckpt)
    got = session.logits(volume.hu)
    assert got.shape == expected.shape == volume.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert session.preprocessing["image_size"] == image_size
    assert session.preprocessing["hu_window"] == list(cfg.hu_window)


def test_the_export_is_cached_by_the_weights_content(tmp_path: Path) -> None:
    a = write_checkpoint(tmp_path / "a" / "model.pt", seed=1)
    b = write_checkpoint(tmp_path / "b" / "model.pt", seed=1)
    c = write_checkpoint(tmp_path / "c" / "model.pt", seed=2)
    assert ort.cached_model(a) == ort.cached_model(b) != ort.cached_model(c)
    _session(a)
    assert ort.cached_model(a).is_file()


@pytest.mark.realdata
def test_onnx_masks_equal_pytorchs_on_a_real_series_with_the_reference_weights() -> None:
    """The course's 512² weights ("raw" input) on 8 slices of Case_000: Dice of the masks ≥ 0.999."""
    if not REAL_CASE.is_dir() or not REFERENCE_WEIGHTS.is_file():
        pytest.skip("Case_000 or the course's reference weights are absent")
    hu = np.asarray(dicom.load_series(REAL_CASE).hu[60:68])
    net, cfg = predict.load_checkpoint(REFERENCE_WEIGHTS)
    expected = forward.run_logits(net, cfg, hu, amp=False, runtime="torch")
    got = _session(REFERENCE_WEIGHTS).logits(hu)
    a, b = forward.binarize(got), forward.binarize(expected)
    assert b.sum() > 10_000  # both lungs of 8 slices
    assert metrics.volume_dice(a, b) >= 0.999
    assert np.abs(got - expected).max() < 1e-2


def test_predict_runs_onnxruntime_on_the_cpu_and_torch_when_asked(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt")
    series = tmp_path / "in" / "Case_900"
    write_series(series, n=6)
    stats = {}
    for name in ("auto", "torch"):
        out = tmp_path / name
        assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt, "--device", "cpu",
                       "--runtime", name) == 0
        stats[name] = json.loads((out / predict.STATS_NAME).read_text())
    assert stats["auto"]["runtime"].startswith("onnxruntime ")
    assert stats["torch"]["runtime"] == f"torch {torch.__version__}"
    assert stats["auto"]["lung_voxels"] == stats["torch"]["lung_voxels"]


def test_onnxruntime_on_a_gpu_or_when_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(predict.PredictError, match="CPU only"):
        predict.resolve_runtime("onnxruntime", "cuda")
    assert predict.resolve_runtime("auto", "cuda") == "torch"
    monkeypatch.setattr(ort, "available", lambda: False)
    assert predict.resolve_runtime("auto", "cpu") == "torch"
    with pytest.raises(predict.PredictError, match="not installed"):
        predict.resolve_runtime("onnxruntime", "cpu")


def test_auto_is_torch_where_the_caller_wants_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's evaluation asks for bf16 where native (ort.choose's bf16): then auto is PyTorch
    with autocast; predict never asks, and an explicit runtime is kept."""
    assert ort.choose("auto", "cpu", bf16=True) == "torch"
    assert ort.choose("auto", "cpu") == "onnxruntime"
    assert ort.choose("onnxruntime", "cpu", bf16=True) == "onnxruntime"
    net, cfg = model.UNet(), TrainConfig(image_size=64, amp=True)
    used = []
    monkeypatch.setattr(model, "bf16_native", lambda device: True)
    monkeypatch.setattr(forward, "predict_hu", lambda *a, **k: used.append(("torch", k["amp"])))
    forward.run_logits(net, cfg, np.zeros((2, 64, 64), np.int16))
    forward.run_logits(net, dataclasses.replace(cfg, amp=False), np.zeros((2, 64, 64), np.int16))
    assert used == [("torch", True)]  # the float32 run went to ONNX Runtime


def test_the_command_line_starts_without_importing_torch() -> None:
    """predict on a CPU never needs torch once the export is cached (~2 s of start-up)."""
    code = "import sys, lungseg.cli, lungseg.inference.predict; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_training_command_leaves_the_export_predict_uses(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", seed=7)
    ort.cached_model(ckpt).unlink(missing_ok=True)
    loop._export_for_predict(runs.load_run(ckpt.parent))
    assert ort.cached_model(ckpt).is_file()

    def no_export(*args: object) -> None:
        raise AssertionError("predict exported again")

    monkeypatch.setattr(ort, "export", no_export)
    assert predict.onnx_session(ckpt.parent).preprocessing["image_size"] == 16
