"""Cross-validation over patients, scored per lung in 3D (mm).

Folds interleave the sorted case ids (fold ``f`` = cases ``f, f+k, f+2k, ...``), so with the 12 LCTSC
cases and k = 3 fold 2 is exactly the report's held-out patients (002, 005, 008, 011) and its run is
the held-out run itself. Inside each fold the threshold and the post-processing are chosen on the
fold's *training* patients only (:mod:`lungseg.postprocess`), then applied to its test patients.
Both the ground truth (one label in the course masks) and the prediction are split into right and
left lung by the same geometric rule (:func:`lungseg.sides.split_lungs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import inference, metrics, postprocess, sides, train
from .cache import Case
from .config import TrainConfig
from .runs import TrainResult

STRUCTURES = {"Lung_R": sides.RIGHT, "Lung_L": sides.LEFT}
METRICS = ("dice", "hd95_mm", "msd_mm")
# Best published per-lung results on LCTSC (Yang et al. 2018, Med Phys 45:4568, and later U-Net-GAN /
# 3D U-Net papers), as quoted in the project's issue 11: a different (the challenge's) test set.
LCTSC_PER_LUNG = {"dice": (0.97, 0.98), "hd95_mm": (2.1, 4.7), "msd_mm": (0.59, 1.08)}
Known = dict[str, tuple[dict[str, np.ndarray], tuple[float, bool] | None]]
"""Run folder → (logits per case id, (threshold, post-processing) or None): work already done."""
GOALS = {"dice": 0.975, "hd95_mm": 3.0, "msd_mm": 0.7, "worst_patient_dice": 0.96}


def folds(case_ids: Sequence[str], k: int) -> list[list[str]]:
    """The test cases of each of ``k`` interleaved folds over the sorted ``case_ids``."""
    ids = sorted(case_ids)
    if not 2 <= k <= len(ids):
        raise ValueError(f"cross-validation needs 2 <= k <= {len(ids)} cases, got k={k}")
    return [ids[f::k] for f in range(k)]


def fold_configs(config: TrainConfig, k: int) -> list[TrainConfig]:
    """``config`` once per fold, held-out-patient split with that fold's test cases."""
    cases = config.resolved().cases
    return [dataclasses.replace(config, split="cases", test_cases=test, kfold=0, fold=0)
            for test in folds(cases, k)]


def fit_folds(config: TrainConfig, k: int, runs_dir: str | None = None) -> list[TrainResult]:
    """Train (or load) every fold's run."""
    return [train.fit(cfg, runs_dir=runs_dir) for cfg in fold_configs(config, k)]


def lung_rows(case: Case, pred: np.ndarray, truth: np.ndarray | None = None) -> list[dict]:
    """Dice, HD95 and MSD (mm) of one patient for both lungs together and for each lung.

    ``pred`` is a bool (z, y, x) mask; ``truth`` the case's labels from :func:`sides.split_lungs`
    (computed when not given).
    """
    if truth is None:
        truth = sides.split_lungs(np.asarray(case.mask), case.volume)
    labels = sides.split_lungs(pred, case.volume)
    spacing = case.volume.spacing
    rows = [{"case": case.case_id, "structure": "both lungs",
             **metrics.per_patient_metrics(pred, np.asarray(case.mask), spacing)}]
    for name, value in STRUCTURES.items():
        rows.append({"case": case.case_id, "structure": name,
                     **metrics.per_patient_metrics(labels == value, truth == value, spacing)})
    return rows


def evaluate_fold(run: TrainResult, cases: Sequence[Case], truths: dict[str, np.ndarray],
                  device: torch.device | str = "cpu", known: Known | None = None) -> list[dict]:
    """Per-lung rows of the fold's test patients, at the threshold and post-processing chosen on
    the fold's training patients (recorded in every row). ``known``: logits per case and the
    (threshold, post-processing) already computed for a run folder (03_eval's held-out run is a
    fold), reused instead of computed again; the same functions on the same inputs give them."""
    cfg = run.config
    test = set(cfg.test_cases)
    train_cases = [c for c in cases if c.case_id in set(cfg.cases) - test]
    test_cases = [c for c in cases if c.case_id in test]
    logits, tuned = (known or {}).get(str(run.run_dir), ({}, None))

    def logits_of(sel: list[Case]) -> list[np.ndarray]:
        missing = [c for c in sel if c.case_id not in logits]
        logits.update(zip([c.case_id for c in missing],
                          inference.case_logits(run.model, cfg, missing, device), strict=True))
        return [logits[c.case_id] for c in sel]

    if tuned is None:
        train_logits = logits_of(train_cases)
        threshold, use_pp, _, _ = postprocess.tune(train_cases, train_logits)
    else:
        threshold, use_pp = tuned
    rows = []
    test_logits = logits_of(test_cases)
    for case, lg in zip(test_cases, test_logits, strict=True):
        pred = inference.segment(lg, threshold, use_pp)
        for row in lung_rows(case, pred, truths.get(case.case_id)):
            rows.append({**row, "fold": ",".join(c[-3:] for c in sorted(test)), "threshold": threshold,
                         "postprocess": use_pp})
    return rows


def cross_validate(runs: Sequence[TrainResult], cases: Sequence[Case],
                   device: torch.device | str = "cpu", known: Known | None = None) -> list[dict]:
    """:func:`evaluate_fold` over every fold run: one row per patient and structure."""
    truths = {c.case_id: sides.split_lungs(np.asarray(c.mask), c.volume)
              for c in tqdm(cases, desc="split ground truth", unit="case")}
    rows: list[dict] = []
    for run in tqdm(runs, desc="folds", unit="fold"):
        rows += evaluate_fold(run, cases, truths, device, known)
    return sorted(rows, key=lambda r: (r["case"], r["structure"]))


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


def summary_rows(summary: dict) -> list[dict]:
    """The results table: mean ± sd [min–max] per structure, the goals and the published range."""
    def cell(s: dict, key: str, fmt: str) -> str:
        m, empty = s[key], s.get("empty_predictions", [])
        text = (f"{m['mean']:{fmt}} ± {m['sd']:{fmt}} [{m['min']:{fmt}}–{m['max']:{fmt}}]"
                if m["mean"] is not None else "–")
        if empty and key != "dice":  # no surface to measure from: said, not averaged as inf
            text += f" (without {len(empty)} empty: {', '.join(empty)})"
        return text

    rows = [{"structure": name, "patients": s["patients"], "Dice": cell(s, "dice", ".4f"),
             "HD95 mm": cell(s, "hd95_mm", ".2f"), "MSD mm": cell(s, "msd_mm", ".2f"),
             "worst patient (Dice)": f"{s['worst_case']['case']} ({s['worst_case']['dice']:.4f})"}
            for name, s in summary.items()]
    rows.append({"structure": "goal (issue 11)", "patients": "–", "Dice": f"≥ {GOALS['dice']}",
                 "HD95 mm": f"≤ {GOALS['hd95_mm']}", "MSD mm": f"≤ {GOALS['msd_mm']}",
                 "worst patient (Dice)": f"≥ {GOALS['worst_patient_dice']}"})
    lc = LCTSC_PER_LUNG
    rows.append({"structure": "LCTSC best published, per lung (other test set)", "patients": "–",
                 "Dice": f"{lc['dice'][0]}–{lc['dice'][1]}",
                 "HD95 mm": f"{lc['hd95_mm'][0]}–{lc['hd95_mm'][1]}",
                 "MSD mm": f"{lc['msd_mm'][0]}–{lc['msd_mm'][1]}", "worst patient (Dice)": "–"})
    return rows


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
