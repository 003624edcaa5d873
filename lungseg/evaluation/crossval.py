"""Cross-validation over patients, scored per lung in 3D (mm).

Folds interleave the sorted case ids (fold ``f`` = cases ``f, f+k, f+2k, ...``), so with the 12 LCTSC
cases and k = 3 fold 2 is exactly the report's held-out patients (002, 005, 008, 011) and its run is
the held-out run itself. Inside each fold the threshold and the post-processing are chosen on the
fold's *training* patients only (the one rule, :mod:`lungseg.evaluation.tuning`), then applied to its test
patients.
Both the ground truth (one label in the course masks) and the prediction are split into right and
left lung by the same geometric rule (:func:`lungseg.inference.sides.split_lungs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lungseg.evaluation import metrics, tuning
from lungseg.evaluation.goals import (  # noqa: F401 - the results table of a cross-validation
    GOALS,
    LCTSC_PER_LUNG,
    STRUCTURE_NAMES,
    summary_rows,
)
from lungseg.inference import forward, postprocess, sides
from lungseg.io import parallel
from lungseg.io.cache import Case
from lungseg.network import runs
from lungseg.network.config import fold_cases
from lungseg.network.runs import TrainResult
from lungseg.network.selection import ProfileRuns
from lungseg.progress import bar as progress_bar

STRUCTURES = dict(zip(STRUCTURE_NAMES, (sides.RIGHT, sides.LEFT), strict=True))
METRICS = ("dice", "hd95_mm", "msd_mm")
Known = dict[str, tuple[dict[str, np.ndarray], tuple[float, bool] | None]]
"""Run folder → (logits per case id, (threshold, post-processing) or None): work already done."""


def folds(case_ids: Sequence[str], k: int) -> list[list[str]]:
    """The test cases of each fold: :func:`lungseg.network.config.fold_cases`, the one fold rule."""
    return fold_cases(list(case_ids), k)


def lung_rows(case: Case, pred: np.ndarray, truth: np.ndarray | None = None) -> list[dict]:
    """Dice, HD95 and MSD (mm) of one patient for both lungs together and for each lung.

    ``pred`` is a bool (z, y, x) mask; ``truth`` the case's labels from :func:`sides.split_lungs`
    (computed when not given).
    """
    return _rows(case.case_id, np.asarray(case.mask), pred, sides.affine_of(case.volume),
                 case.volume.spacing, truth)


def _rows(case_id: str, mask: np.ndarray, pred: np.ndarray, affine: np.ndarray,
          spacing: tuple[float, float, float], truth: np.ndarray | None = None) -> list[dict]:
    """:func:`lung_rows` from the arrays it needs (the case's mask, its voxel-to-LPS affine and
    spacing in mm), without the image: what a pool task carries."""
    if truth is None:
        truth = sides.split_lungs(mask, affine)
    labels = sides.split_lungs(pred, affine)
    rows = [{"case": case_id, "structure": "both lungs", **metrics.per_patient_metrics(pred, mask, spacing)}]
    for name, value in STRUCTURES.items():
        rows.append({"case": case_id, "structure": name,
                     **metrics.per_patient_metrics(labels == value, truth == value, spacing)})
    return rows


def fold_masks(run: TrainResult, cases: Sequence[Case], device: torch.device | str = "cpu",
               known: Known | None = None) -> list[tuple[tuple, dict]]:
    """The arguments of :func:`_rows` (case id, true mask, predicted mask, affine, spacing: no image)
    and the fold record of each of the fold's test patients: the mask at the threshold and
    post-processing chosen on the fold's training patients (recorded with it). ``known``: logits per
    case and the (threshold, post-processing) already computed for a run folder (03_eval's held-out
    run is a fold), reused instead of computed again; the same functions on the same inputs give them."""
    cfg = run.config
    test = set(cfg.test_cases)
    train_cases = [c for c in cases if c.case_id in set(cfg.cases) - test]
    test_cases = [c for c in cases if c.case_id in test]
    logits, tuned = (known or {}).get(str(run.run_dir), ({}, None))

    def logits_of(sel: list[Case]) -> list[np.ndarray]:
        missing = [c for c in sel if c.case_id not in logits]
        logits.update(zip([c.case_id for c in missing],
                          forward.case_logits(run.model, cfg, missing, device), strict=True))
        return [logits[c.case_id] for c in sel]

    if tuned is None:
        train_logits = logits_of(train_cases)
        threshold, clean, _, _ = tuning.tune(train_cases, train_logits)
        # saved with the fold's run, as 03_eval saves its held-out run's: predict and the QC study
        # (05_qc) use a fold run at the settings chosen for it
        runs.save_inference(run.run_dir, threshold, clean, "the fold's training patients")
    else:
        threshold, clean = tuned
    record = {"fold": ",".join(c[-3:] for c in sorted(test)), "threshold": threshold, "postprocess": clean}
    return [((case.case_id, np.asarray(case.mask), postprocess.segment(lg, threshold, clean),
              sides.affine_of(case.volume), case.volume.spacing), record)
            for case, lg in zip(test_cases, logits_of(test_cases), strict=True)]


def _patient_rows(job: tuple[tuple, dict]) -> list[dict]:
    """:func:`lung_rows` of one test patient with its fold's record (a task of the process pool)."""
    args, record = job
    return [{**row, **record} for row in _rows(*args)]


def cross_validate(runs: Sequence[TrainResult], cases: Sequence[Case], device: torch.device | str = "cpu",
                   known: Known | None = None, workers: int | None = None) -> list[dict]:
    """One row per patient and structure over every fold run: the masks of :func:`fold_masks` (the
    network on every core, in this process), then their per-lung scores on ``workers`` processes
    (None: one per core; the side split and the surface distances are single-threaded numpy)."""
    jobs = [job for run in progress_bar(runs, desc="folds", unit="fold")
            for job in fold_masks(run, cases, device, known)]
    rows = [r for rows in parallel.map_cases(_patient_rows, jobs, "per-lung scores", workers) for r in rows]
    return sorted(rows, key=lambda r: (r["case"], r["structure"]))


def cross_validate_profile(report: ProfileRuns, cases: Sequence[Case], device: torch.device | str,
                          main_logits: dict[str, np.ndarray], main_tuning: tuple[float, bool]) -> list[dict]:
    """:func:`cross_validate` over a report's folds, reusing the held-out run's logits and tuning
    (that run is one of the folds: fold 2 of 3 holds the default test patients). [] without folds."""
    if not report.fold_dirs:
        return []
    known = {str(report.main.run_dir): (dict(main_logits), main_tuning)}
    return cross_validate(report.folds(), cases, device, known)


def worst_patient_errors(report: ProfileRuns, rows: Sequence[dict], cases: Sequence[Case],
                         device: torch.device | str = "cpu") -> tuple[dict, Case, np.ndarray, dict]:
    """The weakest patient of the cross-validation (its row), its case, the prediction of the fold
    model that never saw it (that fold's threshold and post-processing) and its :func:`error_profile`."""
    worst = worst_patient(rows)
    case = next(c for c in cases if c.case_id == worst["case"])
    run = next(r for r in report.folds() if worst["case"] in r.config.test_cases)
    pred = postprocess.segment(forward.run_logits(run.model, run.config, case.volume.hu, device),
                             worst["threshold"], worst["postprocess"])
    return worst, case, pred, error_profile(case, pred)


def summarise(rows: Sequence[dict]) -> dict:
    """Per structure: mean, sd, min, max of each metric and the worst patient by Dice."""
    out = {}
    for structure in ("both lungs", *STRUCTURES):
        sel = [r for r in rows if r["structure"] == structure]
        if not sel:
            continue
        # A patient with no predicted lung has no surface: HD95/MSD are infinite there. They are
        # counted and named, and the distances summarised over the others (never "inf ± nan").
        empty = sorted(r["case"] for r in sel if not np.isfinite(r["hd95_mm"]))
        stats = {}
        for key in METRICS:
            v = np.asarray([r[key] for r in sel], dtype=float)
            v = v[np.isfinite(v)]
            stats[key] = ({"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                           "min": float(v.min()), "max": float(v.max())} if len(v) else
                          dict.fromkeys(("mean", "sd", "min", "max"), None))
        worst = min(sel, key=lambda r: r["dice"])
        out[structure] = {"patients": len(sel), **stats, "empty_predictions": empty,
                          "worst_case": {"case": worst["case"], "dice": worst["dice"],
                                         "hd95_mm": worst["hd95_mm"], "msd_mm": worst["msd_mm"]}}
    return out


def report_summary(rows: Sequence[dict], folds: int) -> dict:
    """The cross-validation record of ``summary.json`` ({} without rows)."""
    if not rows:
        return {}
    return {"folds": folds, "per_structure": summarise(rows), "goals": GOALS,
            "lctsc_best_per_lung": LCTSC_PER_LUNG}





def worst_patient(rows: Sequence[dict]) -> dict:
    """The "both lungs" row with the lowest Dice (its case, fold, threshold and post-processing)."""
    return min((r for r in rows if r["structure"] == "both lungs"), key=lambda r: r["dice"])


def error_profile(case: Case, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per axial slice of ``case``: missed lung and extra "lung" (mL) of the bool (z, y, x)
    prediction ``pred`` against the case's mask, with the slice positions (mm)."""
    truth = np.asarray(case.mask, dtype=bool)
    voxel_ml = float(np.prod(case.volume.spacing)) / 1000.0
    return {"position_mm": np.asarray(case.volume.positions, dtype=float),
            "missed_ml": (truth & ~pred).sum(axis=(1, 2)) * voxel_ml,
            "extra_ml": (pred & ~truth).sum(axis=(1, 2)) * voxel_ml}
