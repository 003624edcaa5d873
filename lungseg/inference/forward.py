"""Inference, one path for the report, ``predict``, the viewer and the benchmarks.

preprocess (HU → the run's input: window, resize) → logits (upsampled to the full slice size) →
:func:`binarize` (a probability threshold) → :func:`segment` (optionally post-processed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lungseg.inference import fov, ort, postprocess
from lungseg.io.cache import Case
from lungseg.network import data, model, speed
from lungseg.network.config import TrainConfig
from lungseg.progress import bar as progress_bar

binarize = postprocess.binarize
"""The one thresholding rule (:func:`lungseg.inference.postprocess.binarize`)."""




def predict_hu(net: model.UNet, hu: np.ndarray, image_size: int, mode: str = "window",
               batch_size: int = ort.BATCH, device: torch.device | str = "cpu",
               channels_last: bool | None = None, amp: bool = True, name: str = "volume",
               progress: bool = False, window: Sequence[float] = data.HU_WINDOW,
               spacing: tuple[float, float] | None = None) -> np.ndarray:
    """Logits (z, H, W) float32 for a (z, H, W) HU volume.

    Slices square in pixels and in mm (``spacing``: (dy, dx) mm, None = square pixels) are resized
    to ``image_size`` as in training and the logits upsampled back to full size (bilinear), so every
    metric is computed on the original grid; any other slice goes through a square field of view
    in mm (:mod:`lungseg.inference.fov`). ``amp``: bf16 autocast where native (2x faster on an AVX-512 BF16
    CPU). ``channels_last=None``: the layout :func:`lungseg.network.speed.choose` measures faster here.
    ``name`` labels the progress bar.
    """
    if channels_last is None:
        channels_last = bool(speed.choose(image_size, batch_size, torch.device(device))["channels_last"])
    net = net.to(device).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if not fov.is_plain(np.shape(hu), spacing):
        return _predict_field(net, hu, image_size, mode, batch_size, device, channels_last, amp, name,
                              progress, window, spacing)
    hu = torch.from_numpy(np.array(hu)).unsqueeze(1)
    full = hu.shape[-1]
    out = np.empty((hu.shape[0], full, full), dtype=np.float32)
    starts = range(0, hu.shape[0], batch_size)
    with torch.inference_mode(), model.autocast(torch.device(device), amp):
        for start in progress_bar(starts, desc=f"predict {name}", unit="batch", disable=not progress):
            x = data.resize_slices(data.normalise(hu[start:start + batch_size], mode, window), image_size)
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = data.upsample_logits(net(x).float(), full)
            out[start:start + batch_size] = logits[:, 0].cpu().numpy()
    return out


def _predict_field(net: model.UNet, hu: np.ndarray, image_size: int, mode: str, batch_size: int,
                   device: torch.device | str, channels_last: bool, amp: bool, name: str, progress: bool,
                   window: Sequence[float], spacing: tuple[float, float] | None) -> np.ndarray:
    """:func:`predict_hu` for slices that are not square in pixels or in mm: through the square
    field of view of :mod:`lungseg.inference.fov` (the same resampling as ONNX Runtime's path)."""
    f = fov.field(np.shape(hu), spacing, image_size)
    padded = f.pad(np.asarray(hu))
    out = np.empty(np.shape(hu), dtype=np.float32)
    starts = range(0, padded.shape[0], batch_size)
    with torch.inference_mode(), model.autocast(torch.device(device), amp):
        for start in progress_bar(starts, desc=f"predict {name}", unit="batch", disable=not progress):
            x = data.normalise(torch.from_numpy(padded[start:start + batch_size]), mode, window).numpy()
            x = torch.from_numpy(f.to_model(x)).unsqueeze(1).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out[start:start + batch_size] = f.from_model(net(x).float()[:, 0].cpu().numpy())
    return out


def run_logits(net: model.UNet, cfg: TrainConfig, hu: np.ndarray, device: torch.device | str = "cpu",
               batch_size: int = ort.BATCH, name: str = "volume", progress: bool = False,
               amp: bool | None = None, runtime: str = "auto",
               spacing: tuple[float, float] | None = None) -> np.ndarray:
    """Logits (z, H, W) float32 of a (z, H, W) HU volume with the preprocessing a run's config records
    (size, mode, HU window). ``runtime``: "torch" (:func:`predict_hu`), "onnxruntime"
    (:mod:`lungseg.inference.ort`, CPU only, float32) or "auto" = :func:`lungseg.inference.ort.choose`
    (PyTorch with bf16 autocast where ``amp`` (None: the run's) and bf16 is native; else ONNX Runtime on
    a CPU when installed: 1.4x faster at 160², 1.65x at 512² on 2 AVX2 cores, logits equal to ~1e-5).
    ``spacing``: (dy, dx) mm of the pixels, for slices that are not square (:mod:`lungseg.inference.fov`)."""
    amp = bool(cfg.amp) if amp is None else amp
    bf16 = amp and model.bf16_native(torch.device(device))
    if ort.choose(runtime, str(torch.device(device)), bf16) == "onnxruntime":
        prep = ort.preprocessing_of(cfg, model.REFERENCE_INPUT_OFFSET_HU)
        session = ort.session_of(net, prep, threads=torch.get_num_threads())
        return session.logits(np.asarray(hu), name, progress, spacing=spacing)
    return predict_hu(net, hu, cfg.image_size, cfg.input_mode, batch_size, device,
                      amp=amp, name=name, progress=progress,
                      window=cfg.hu_window, spacing=spacing)


def case_logits(net: model.UNet, cfg: TrainConfig, cases: Sequence[Case],
                device: torch.device | str = "cpu") -> list[np.ndarray]:
    """:func:`run_logits` for each case, with a progress bar over cases."""
    return [run_logits(net, cfg, c.volume.hu, device, name=c.case_id)
            for c in progress_bar(cases, desc="predict", unit="case")]
