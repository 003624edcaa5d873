"""The one tuning rule behind ``predict``'s defaults: the probability threshold of best mean Dice, then
post-processing kept when it helps, and then the threshold of best mean Dice of the post-processed masks,
chosen on a model's training patients only (03_eval, the cross-validation and the released model all
call :func:`tune`)."""

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


def best_threshold(study: Sequence[dict], column: str = "mean volume Dice") -> float:
    """The threshold with the highest mean Dice in ``column`` (the first, i.e. lowest, on a tie)."""
    return max(study, key=lambda r: r[column])["threshold"]


def postprocess_study(cases: Sequence[Case], logits: Sequence[np.ndarray], p: float,
                      workers: int | None = None,
                      thresholds: Sequence[float] = THRESHOLDS) -> tuple[list[dict], np.ndarray]:
    """Mean Dice and HD95 (mm) over ``cases`` at threshold ``p``, without and with :func:`clean`, and
    the volume Dice of the post-processed mask at every one of ``thresholds`` (array (cases,
    thresholds)); the patients' scores on ``workers`` processes (None: one per core; the surface
    distances and the post-processing are single-threaded numpy)."""
    order = sorted(set(thresholds) | {p})
    jobs = [(_levels(lg, order), np.asarray(c.mask, dtype=bool), c.volume.spacing, order.index(p),
             [order.index(t) for t in thresholds])
            for c, lg in zip(cases, logits, strict=True)]
    by_case = parallel.map_cases(_case_scores, jobs, "post-processing study", workers)
    rows = []
    for i, name in enumerate(("none", POSTPROCESS_NAME)):
        scores = [both[i] for both, _ in by_case]
        rows.append({"post-processing": name,
                     "mean volume Dice": float(np.mean([s["dice"] for s in scores])),
                     "mean HD95 mm": float(np.mean([s["hd95_mm"] for s in scores])),
                     "mean MSD mm": float(np.mean([s["msd_mm"] for s in scores]))})
    cleaned = np.array([dice for _, dice in by_case], dtype=float)
    return rows, cleaned.reshape(len(jobs), len(thresholds))


POSTPROCESS_NAME = "2 largest components + fill holes"
CLEANED = "mean volume Dice, post-processed"
"""The threshold study's column of the masks as ``predict`` writes them when post-processing is kept."""


def _levels(logits: np.ndarray, order: Sequence[float]) -> np.ndarray:
    """uint8 (z, y, x): how many of the ascending thresholds ``order`` each voxel passes, so that
    ``levels > i`` is :func:`binarize` (``logits``, ``order[i]``) -- one compact array for every
    threshold (a quarter of the logits' bytes to send to a worker)."""
    lowest = binarize(logits, order[0])
    values = logits[lowest]
    count = np.zeros(values.shape, dtype=np.uint8)
    for p in order:
        count += binarize(values, p)
    levels = np.zeros(logits.shape, dtype=np.uint8)
    levels[lowest] = count
    return levels


def _case_scores(job: tuple) -> tuple[tuple[dict, dict], list[float]]:
    """One patient's scores at the study's threshold without and with :func:`clean`, and the Dice of
    the cleaned mask at every threshold of the study (a task of the process pool)."""
    levels, truth, spacing, at, which = job
    mask = levels > at
    both = (metrics.per_patient_metrics(mask, truth, spacing),
            metrics.per_patient_metrics(clean(mask), truth, spacing))
    n_truth = int(np.count_nonzero(truth))
    cleaned = []
    for i in which:
        m = clean(levels > i)
        cleaned.append(metrics.dice_of_counts(int(np.count_nonzero(m & truth)), int(np.count_nonzero(m)),
                                              n_truth))
    return both, cleaned


def tune(cases: Sequence[Case], logits: Sequence[np.ndarray],
         workers: int | None = None) -> tuple[float, bool, list[dict], list[dict]]:
    """The one tuning rule behind ``predict``'s defaults, applied to ``cases`` (a model's training
    patients, never the ones it is scored on): the threshold of best mean Dice; post-processing kept
    when it :func:`helps` at that threshold; when it is kept, the threshold chosen again, as the one
    of best mean Dice of the post-processed masks (the masks ``predict`` writes: the stray components
    that a high threshold suppresses are removed by the post-processing instead). Returns (threshold,
    post-processing, the threshold study with the post-processed column, the post-processing study)."""
    study = threshold_study(cases, logits)
    first = best_threshold(study)
    pp_study, cleaned = postprocess_study(cases, logits, first, workers, [r["threshold"] for r in study])
    keep = helps(pp_study)
    for row, column in zip(study, cleaned.T, strict=True):
        row[CLEANED] = float(np.mean(column))
    return (best_threshold(study, CLEANED) if keep else first), keep, study, pp_study


def helps(study: Sequence[dict]) -> bool:
    """Keep post-processing when it lowers mean HD95 without lowering mean Dice."""
    none, cleaned = study
    return (cleaned["mean HD95 mm"] < none["mean HD95 mm"]
            and cleaned["mean volume Dice"] >= none["mean volume Dice"])
