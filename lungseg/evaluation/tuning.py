"""The one tuning rule behind ``predict``'s defaults: the probability threshold of best mean Dice, then
post-processing kept when it helps, chosen on a model's training patients only (03_eval, the
cross-validation and the released model all call :func:`tune`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lungseg.evaluation import metrics
from lungseg.inference.postprocess import binarize, clean
from lungseg.io import parallel
from lungseg.io.cache import Case

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Probabilities tried by the threshold study (0.5 is the report's)."""


def threshold_study(cases: Sequence[Case], logits: Sequence[np.ndarray],
                    thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """Mean volume Dice over ``cases`` (training patients!) for each probability threshold."""
    dice = np.array([_dice_per_threshold(lg, np.asarray(c.mask), thresholds)
                     for c, lg in zip(cases, logits, strict=True)])
    return [{"threshold": p, "mean volume Dice": float(np.mean(dice[:, i])),
             "min volume Dice": float(np.min(dice[:, i]))} for i, p in enumerate(thresholds)]


def _dice_per_threshold(logits: np.ndarray, truth: np.ndarray, thresholds: Sequence[float]) -> list[float]:
    """:func:`lungseg.evaluation.metrics.volume_dice` of :func:`binarize` (``logits``, p) against bool
    ``truth`` for every p, from one pass over the volume: every mask of a higher threshold lies inside
    the lowest threshold's, so the counts of each come from those voxels alone (a tenth of the volume)
    -- the same integer counts, so the same Dice, as thresholding the whole volume once per p."""
    truth = np.asarray(truth, dtype=bool)
    lowest = binarize(logits, min(thresholds))
    values, inside = logits[lowest], truth[lowest]
    n_truth = int(np.count_nonzero(truth))
    out = []
    for p in thresholds:
        above = binarize(values, p)
        out.append(metrics.dice_of_counts(int(np.count_nonzero(above & inside)),
                                          int(np.count_nonzero(above)), n_truth))
    return out


def best_threshold(study: Sequence[dict]) -> float:
    """The threshold with the highest mean Dice (the first, i.e. lowest, on a tie)."""
    return max(study, key=lambda r: r["mean volume Dice"])["threshold"]


def postprocess_study(cases: Sequence[Case], logits: Sequence[np.ndarray], p: float,
                      workers: int | None = None) -> list[dict]:
    """Mean Dice and HD95 (mm) over ``cases`` at threshold ``p``, without and with :func:`clean`; the
    patients' scores on ``workers`` processes (None: one per core; the surface distances are
    single-threaded numpy)."""
    jobs = [(binarize(lg, p), np.asarray(c.mask), c.volume.spacing)
            for c, lg in zip(cases, logits, strict=True)]
    by_case = parallel.map_cases(_both_scores, jobs, "post-processing study", workers)
    rows = []
    for i, name in enumerate(("none", "2 largest components + fill holes")):
        scores = [both[i] for both in by_case]
        rows.append({"post-processing": name,
                     "mean volume Dice": float(np.mean([s["dice"] for s in scores])),
                     "mean HD95 mm": float(np.mean([s["hd95_mm"] for s in scores])),
                     "mean MSD mm": float(np.mean([s["msd_mm"] for s in scores]))})
    return rows


def _both_scores(job: tuple[np.ndarray, np.ndarray, tuple[float, float, float]]) -> tuple[dict, dict]:
    """One patient's scores without and with :func:`clean` (a task of the process pool)."""
    mask, truth, spacing = job
    return (metrics.per_patient_metrics(mask, truth, spacing),
            metrics.per_patient_metrics(clean(mask), truth, spacing))


def tune(cases: Sequence[Case], logits: Sequence[np.ndarray]) -> tuple[float, bool, list[dict], list[dict]]:
    """The one tuning rule behind ``predict``'s defaults, applied to ``cases`` (a model's training
    patients, never the ones it is scored on): the threshold of best mean Dice, then post-processing
    kept when it :func:`helps`. Returns (threshold, post-processing, both studies)."""
    study = threshold_study(cases, logits)
    threshold = best_threshold(study)
    pp_study = postprocess_study(cases, logits, threshold)
    return threshold, helps(pp_study), study, pp_study


def helps(study: Sequence[dict]) -> bool:
    """Keep post-processing when it lowers mean HD95 without lowering mean Dice."""
    none, cleaned = study
    return (cleaned["mean HD95 mm"] < none["mean HD95 mm"]
            and cleaned["mean volume Dice"] >= none["mean volume Dice"])
