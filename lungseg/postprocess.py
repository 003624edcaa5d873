"""3D post-processing of predicted lung masks, and the choice of threshold — on training data only."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from . import metrics
from .cache import Case

LUNG_COMPONENTS = 2
"""Both lungs: the two largest 3D components (face-connected) are kept."""
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Probabilities tried by the threshold study (0.5 is the report's)."""


def logit(p: float) -> float:
    """log(p / (1 - p)): the logit threshold equivalent to probability ``p``."""
    return math.log(p / (1.0 - p))


def keep_largest(mask: np.ndarray, n: int = LUNG_COMPONENTS) -> np.ndarray:
    """The ``n`` largest 6-connected components of a bool (z, y, x) mask."""
    labels, count = ndimage.label(mask)
    if count <= n:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes, kind="stable")[::-1][:n] + 1
    return np.isin(labels, keep)


def clean(mask: np.ndarray, n: int = LUNG_COMPONENTS) -> np.ndarray:
    """Keep the ``n`` largest components, then fill fully enclosed 3D holes."""
    return ndimage.binary_fill_holes(keep_largest(mask, n))


def threshold_study(cases: Sequence[Case], logits: Sequence[np.ndarray],
                    thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """Mean volume Dice over ``cases`` (training patients!) for each probability threshold."""
    rows = []
    for p in thresholds:
        dice = [metrics.volume_dice(lg > logit(p), np.asarray(c.mask))
                for c, lg in zip(cases, logits, strict=True)]
        rows.append({"threshold": p, "mean volume Dice": float(np.mean(dice)),
                     "min volume Dice": float(np.min(dice))})
    return rows


def best_threshold(study: Sequence[dict]) -> float:
    """The threshold with the highest mean Dice (the first, i.e. lowest, on a tie)."""
    return max(study, key=lambda r: r["mean volume Dice"])["threshold"]


def postprocess_study(cases: Sequence[Case], logits: Sequence[np.ndarray], p: float) -> list[dict]:
    """Mean Dice and HD95 (mm) over ``cases`` at threshold ``p``, without and with :func:`clean`."""
    rows = []
    for name, fn in (("none", lambda m: m), ("2 largest components + fill holes", clean)):
        scores = [metrics.per_patient_metrics(fn(lg > logit(p)), np.asarray(c.mask), c.volume.spacing)
                  for c, lg in zip(cases, logits, strict=True)]
        rows.append({"post-processing": name,
                     "mean volume Dice": float(np.mean([s["dice"] for s in scores])),
                     "mean HD95 mm": float(np.mean([s["hd95_mm"] for s in scores])),
                     "mean MSD mm": float(np.mean([s["msd_mm"] for s in scores]))})
    return rows


def helps(study: Sequence[dict]) -> bool:
    """Keep post-processing when it lowers mean HD95 without lowering mean Dice."""
    none, cleaned = study
    return (cleaned["mean HD95 mm"] < none["mean HD95 mm"]
            and cleaned["mean volume Dice"] >= none["mean volume Dice"])
