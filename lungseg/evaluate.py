"""Inference on whole cases and the report's evaluation (per-slice and per-patient metrics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import data, metrics
from .cache import Case
from .model import UNet

INFER_BATCH = 16


def predict_logits(net: UNet, case: Case, image_size: int, mode: str = "window",
                   batch_size: int = INFER_BATCH, device: torch.device | str = "cpu",
                   channels_last: bool = True) -> np.ndarray:
    """Logits (z, 512, 512) float32 for every slice of ``case``.

    Slices are resized to ``image_size`` as in training and the logits upsampled back to full size
    (bilinear), so every metric is computed on the original 512×512 grid.
    """
    net = net.to(device).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    hu = torch.from_numpy(np.array(case.volume.hu)).unsqueeze(1)
    full = hu.shape[-1]
    out = np.empty((hu.shape[0], full, full), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, hu.shape[0], batch_size):
            x = data.resize_slices(data.normalise(hu[start:start + batch_size], mode), image_size)
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = data.upsample_logits(net(x).float(), full)
            out[start:start + batch_size] = logits[:, 0].cpu().numpy()
    return out


def predict_cases(net: UNet, cases: Sequence[Case], image_size: int, mode: str = "window",
                  device: torch.device | str = "cpu") -> list[np.ndarray]:
    """:func:`predict_logits` for each case, with a progress bar."""
    return [predict_logits(net, c, image_size, mode, device=device)
            for c in tqdm(cases, desc="predict", unit="case")]


def volume_scores(cases: Sequence[Case], logits: Sequence[np.ndarray],
                  threshold_logit: float = 0.0) -> list[dict]:
    """Per-patient 3D metrics (Dice, HD95 mm, MSD mm, volumes mL) at a logit threshold."""
    rows = []
    for case, lg in zip(cases, logits, strict=True):
        pred = lg > threshold_logit
        row = {"case": case.case_id}
        row.update(metrics.per_patient_metrics(pred, np.asarray(case.mask), case.volume.spacing))
        rows.append(row)
    return rows
