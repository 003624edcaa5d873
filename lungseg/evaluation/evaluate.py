"""Scoring for the report: per-slice and per-patient metrics of a run's predictions, and the summary."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lungseg import paths
from lungseg.evaluation import metrics
from lungseg.inference import forward, postprocess
from lungseg.io import writing
from lungseg.io.cache import Case
from lungseg.network import data, model, runs, selection
from lungseg.network.config import TrainConfig


def volume_scores(cases: Sequence[Case], logits: Sequence[np.ndarray],
                  threshold: float = postprocess.DEFAULT_THRESHOLD,
                  clean: bool = False) -> list[dict]:
    """Per-patient 3D metrics (Dice, HD95 mm, MSD mm, volumes mL) at a probability ``threshold``,
    optionally after :func:`lungseg.inference.postprocess.clean`."""
    rows = []
    for case, lg in zip(cases, logits, strict=True):
        pred = postprocess.segment(lg, threshold, clean)
        row = {"case": case.case_id}
        row.update(metrics.per_patient_metrics(pred, np.asarray(case.mask), case.volume.spacing))
        rows.append(row)
    return rows


# LCTSC 2017 lung results for context (Yang et al. 2018, Med Phys 45:4568; review table in
# Phys Med 85:107): ranges over the challenge's methods, both lungs.
LCTSC_LUNG = {"dice": (0.95, 0.98), "hd95_mm": (2.1, 14.5), "msd_mm": (0.59, 2.9)}


def slice_records(cases: Sequence[Case], logits: Sequence[np.ndarray],
                  in_test: Sequence[np.ndarray],
                  threshold: float = postprocess.DEFAULT_THRESHOLD) -> list[dict]:
    """One record per slice at 512²: case, index, location (mm), split, accuracy and both Dice."""
    rows = []
    for case, lg, test in zip(cases, logits, in_test, strict=True):
        pred, gt = forward.binarize(lg, threshold), np.asarray(case.mask)
        acc = metrics.slice_accuracy(pred, gt)
        d_rep = metrics.slice_dice_report(pred, gt)
        d_std = metrics.slice_dice_standard(pred, gt)
        gt_empty = ~gt.any(axis=(1, 2))
        for i in range(len(gt)):
            rows.append({"case": case.case_id, "slice": i,
                         "location_mm": float(case.volume.positions[i]),
                         "split": "test" if test[i] else "train", "accuracy": float(acc[i]),
                         "dice": float(d_rep[i]), "dice_standard": float(d_std[i]),
                         "mask_empty": bool(gt_empty[i])})
    return rows


def column(rows: Sequence[dict], key: str, split: str | None = None) -> np.ndarray:
    """The values of ``key`` over ``rows`` (optionally only one split) as an array."""
    return np.asarray([r[key] for r in rows if split is None or r["split"] == split])


def empty_slice_summary(rows: Sequence[dict], split: str) -> dict:
    """Share of slices with an empty mask and mean Dice under both conventions."""
    sel = [r for r in rows if r["split"] == split]
    return {"split": split, "slices": len(sel),
            "empty-mask share": float(np.mean([r["mask_empty"] for r in sel])),
            "mean Dice (report: empty/empty = 0)": float(np.mean([r["dice"] for r in sel])),
            "mean Dice (standard: empty/empty = 1)": float(np.mean([r["dice_standard"] for r in sel])),
            "mean Dice, non-empty masks": float(np.mean([r["dice"] for r in sel if not r["mask_empty"]]))}


def pick_examples(rows: Sequence[dict], split: str, which: str, n: int = 3) -> list[dict]:
    """The lowest/median/highest-Dice slices of ``split``, from ``n`` different patients (fewer
    when the split has fewer patients)."""
    sel = [r for r in rows if r["split"] == split]
    ids = [r["case"] for r in sel]
    n = min(n, len(set(ids)))
    return [sel[i] for i in metrics.select_examples(column(sel, "dice"), ids, which, n)]


def summarise_patients(rows: Sequence[dict]) -> dict:
    """Mean, min and max of the per-patient metrics."""
    out = {}
    for key in ("dice", "hd95_mm", "msd_mm"):
        v = np.asarray([r[key] for r in rows], dtype=float)
        out[key] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    return out


def write_csv(rows: Sequence[dict], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV, atomically; floats with 6 significant digits."""
    def dump(fh) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        fh.write(text.getvalue().encode())

    out = paths.resolve(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return writing.atomic_write(out, dump)


def write_json(obj: dict, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented JSON with sorted keys (stable across reruns), atomically."""
    out = paths.resolve(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return writing.atomic_write_text(out, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def patient_cases(cfg_split: str, cases: Sequence[Case], test_cases: Sequence[str],
                  held_out: bool = True) -> list[Case]:
    """Cases to report per patient: the held-out ones (``held_out``) or the training ones of a
    ``cases`` split; under the slice split every patient is both, so all of them."""
    if cfg_split != "cases":
        return list(cases)
    return [c for c in cases if (c.case_id in set(test_cases)) == held_out]


def reference_scores(weights: str | os.PathLike[str], cases: Sequence[Case],
                     device: torch.device | str = "cpu") -> list[dict] | None:
    """Per-patient metrics of the course's reference model (512², raw input HU + 1024, float32 as
    it was trained: bf16 would round its raw inputs of up to ~4000 to steps of 16), None if absent."""
    path = paths.resolve(weights)
    if not path.is_file():
        return None
    net = model.load_reference(path)
    cfg = TrainConfig(image_size=data.FULL_SIZE, input_mode="raw", amp=False)
    return volume_scores(cases, forward.case_logits(net, cfg, cases, device))


def results_summary(cfg: dict, rows: Sequence[dict], patients: Sequence[dict],
                    reference: Sequence[dict] | None, comparison: Sequence[dict] = (),
                    tuned: Sequence[dict] = (), tuning: dict | None = None,
                    cross_validation: dict | None = None, training: dict | None = None) -> dict:
    """Everything the README's results table needs, as plain JSON-able values (``cross_validation``:
    :func:`lungseg.evaluation.crossval.report_summary`; ``training``: :func:`training_summary`)."""
    out = {"config": cfg,
           "per_slice": {s: {"slices": int(len(column(rows, "dice", s))),
                             "mean_accuracy": float(column(rows, "accuracy", s).mean()),
                             "mean_dice_report": float(column(rows, "dice", s).mean()),
                             "mean_dice_standard": float(column(rows, "dice_standard", s).mean())}
                         for s in ("train", "test") if len(column(rows, "dice", s))},
           "per_patient": {"cases": [p["case"] for p in patients], **summarise_patients(patients)},
           "lctsc_2017_lung": {k: list(v) for k, v in LCTSC_LUNG.items()}}
    if comparison:
        out["protocol_comparison"] = list(comparison)
    if tuned:
        out["per_patient_tuned"] = {"cases": [p["case"] for p in tuned], **summarise_patients(tuned),
                                    **(tuning or {})}
    if reference:
        out["reference_model"] = {"cases": [p["case"] for p in reference],
                                  **summarise_patients(reference)}
    if cross_validation:
        out["cross_validation"] = cross_validation
    if training:
        out["training"] = training
    return out


def protocol_rows(by_split: dict, cases: Sequence[Case], device: torch.device | str = "cpu",
                  known: dict[str, list[np.ndarray]] | None = None) -> list[dict]:
    """Leakage check: each run (one per split protocol) scored on its own test slices and, in 3D, on
    the held-out patients of the ``cases`` run, which contributed training slices to the slice split.
    ``known``: logits of ``cases`` already computed for a split's run (reused)."""
    present = {c.case_id for c in cases}
    patients = [p for p in by_split["cases"].config.test_cases if p in present]
    out = []
    for split, run in by_split.items():
        cfg = run.config
        logits = (known or {}).get(split) or forward.case_logits(run.model, cfg, cases, device)
        in_test = runs.test_masks(run, [c.case_id for c in cases], [c.volume.shape[0] for c in cases])
        rows = slice_records(cases, logits, in_test)
        vol = [metrics.volume_dice(forward.binarize(lg), np.asarray(c.mask))
               for c, lg in zip(cases, logits, strict=True) if c.case_id in set(patients)]
        seen = "unseen" if split == "cases" else "2/3 of their slices seen in training"
        out.append({"protocol": split,
                    "test set": "held-out patients" if split == "cases" else "random 1/3 of all slices",
                    "test slices": int(len(column(rows, "dice", "test"))),
                    "mean slice Dice (report)": float(column(rows, "dice", "test").mean()),
                    "mean slice Dice (standard)": float(column(rows, "dice_standard", "test").mean()),
                    f"volume Dice, patients {', '.join(p[-3:] for p in patients)}":
                        float(np.mean(vol)),
                    "those patients": seen})
    return out


def tuning_source(cfg_split: str) -> str:
    """What the threshold and post-processing were chosen on, for the results table."""
    return ("the training patients" if cfg_split == "cases"
            else "all patients: the slice split has no patient-level training set (includes test slices)")


def training_summary(trained: selection.ProfileRuns) -> dict:
    """Per model of the report (main, other protocol, each fold): epochs, training wall time
    (manifest; data loading included), mean epoch time and the speed switches used."""
    dirs = {f"{split} split{' (main)' if r is trained.main else ''}": r.run_dir
            for split, r in trained.by_split.items()}
    main_dir = trained.main.run_dir
    for i, d in enumerate(trained.fold_dirs):
        if Path(d) != Path(main_dir):  # the fold that is the held-out run itself is counted once
            dirs[f"cross-validation fold {i}"] = Path(d)
    out = {}
    for role, d in dirs.items():
        man = runs.read_manifest(d)
        hist_file = Path(d) / "history.json"
        epoch_s = json.loads(hist_file.read_text())["epoch_s"] if hist_file.is_file() else []
        cfg = man.get("config", {})
        out[role] = {"epochs": len(epoch_s),
                     "train_wall_s": float(man.get("train_wall_s", sum(epoch_s))),
                     "epoch_s_mean": float(np.mean(epoch_s)) if epoch_s else 0.0,
                     "speed": f"{'channels_last' if cfg.get('channels_last') else 'NCHW'}, "
                              f"{'bf16' if cfg.get('amp') else 'float32'}",
                     "device": man.get("provenance", {}).get("device", "?")}
    return out


# ---- the steps of 03_eval, so that its cells only call and plot ------------------------------------

@dataclass
class Tuning:
    """The threshold and post-processing chosen for a run, with both studies behind the choice."""

    threshold: float
    postprocess: bool
    chosen_on: str
    threshold_study: list[dict]
    postprocess_study: list[dict]

    def settings(self) -> dict:
        return {"threshold": self.threshold, "postprocess": self.postprocess, "chosen_on": self.chosen_on}


def choose_inference(run: runs.TrainResult, cases: Sequence[Case], logits: dict[str, np.ndarray],
                     save: bool = True) -> Tuning:
    """:func:`lungseg.evaluation.tuning.tune` on the run's training patients (every patient under
    the slice
    split, said in ``chosen_on``), saved in the run's ``inference.json`` for ``predict`` and the viewer."""
    from lungseg.evaluation import tuning

    train_cases = patient_cases(run.config.split, cases, run.config.test_cases, held_out=False)
    train_logits = [logits[c.case_id] for c in train_cases]
    threshold, clean, study, pp_study = tuning.tune(train_cases, train_logits)
    tuning = Tuning(threshold, clean, tuning_source(run.config.split), study, pp_study)
    if save:
        runs.save_inference(run.run_dir, threshold, clean, tuning.chosen_on)
    return tuning


def check_table(patients: Sequence[dict], tuned: Sequence[dict]) -> list[dict]:
    """Per held-out patient: Dice at 0.5 and with the chosen settings, to two decimals (what nbval
    compares: it catches a wrong split or a wrong score, not run-to-run noise; the quick profile's
    smoke model labels nearly every voxel, so its Dice is set by the patient's lung share)."""
    return [{"patient": p["case"], "Dice at 0.5": f"{p['dice']:.2f}", "Dice tuned": f"{t['dice']:.2f}"}
            for p, t in zip(patients, tuned, strict=True)]
