"""Each notebook's closing discussion (Markdown), written from that notebook's own results: what the
numbers say and what they do not. No number in them is typed; each comes from the objects passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

from lungseg.evaluation import dense as dense_study
from lungseg.inference.sides import SplitInfo
from lungseg.io.anonymise import AnonymisationSummary
from lungseg.io.cache import Case
from lungseg.network.runs import TrainResult


def _names(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


def dicom(cases: Sequence[Case], reports: Sequence[AnonymisationSummary],
          infos: Sequence[SplitInfo]) -> str:
    """01_dicom: reading order, patient data, and the right/left split."""
    slices = sum(c.volume.shape[0] for c in cases)
    steps = sorted({round(c.volume.spacing[0], 2) for c in cases})
    unordered = [c.case_id for c in cases if c.volume.filename_order_differs]
    phi = [r.case_id for r in reports if r.had_phi]
    touching = [i for i in infos if i.touched]
    depths = [i.split_depth_mm for i in touching if i.split_depth_mm is not None]
    depth = f" at {min(depths):.1f}–{max(depths):.1f} mm of erosion" if depths else ""
    return (f"**Discussion.** {len(cases)} cases, {slices} slices, {_names([f'{s:g}' for s in steps])} mm "
            f"apart. In {len(unordered)} of them ({_names(unordered)}) the file names do not follow slice "
            "order: the volumes are right because they are sorted by position, not by name. "
            f"{len(phi)} cases carried patient-identifying values ({_names(phi)}); the de-identified copies "
            f"hold none, and {sum(r.verified_values for r in reports)} values of the written files were "
            f"checked again after writing. The lungs touch in {len(touching)} of {len(infos)} cases; there "
            f"right and left are separated by the geometry{depth}, which per-lung metrics inherit (03_eval).")


def training(by_split: dict[str, TrainResult], folds: Sequence[TrainResult],
             plain: TrainResult | None = None) -> str:
    """02_train: what was trained and where each run ended."""
    runs = [(f"{s} split", r) for s, r in by_split.items()]
    runs += [(f"fold {i}", r) for i, r in enumerate(folds)]
    if plain is not None:
        runs.append(("without simulated dense lung", plain))
    parts = [f"{name} {r.history['train_loss'][-1]:.3f} / {r.history['test_loss'][-1]:.3f}"
             for name, r in runs if r.history.get("train_loss")]
    return (f"**Discussion.** {len(runs)} models, each at its last epoch (train loss / test loss): "
            + "; ".join(parts) + ". A test loss near the train loss says the run did not overfit its "
            "slices; it does not say how good the 3D masks are on new patients, which 03_eval measures.")


def evaluation(summary: dict) -> str:
    """03_eval: the report's slice numbers against held-out patients, cross-validation and dense lung."""
    s, t = summary["per_slice"]["test"], summary["per_patient_tuned"]
    out = (f"**Discussion.** The report's evaluation gives a mean slice Dice of {s['mean_dice_report']:.3f} "
           f"(eq. (4), empty slices scoring 0) at {s['mean_accuracy']:.4f} pixel accuracy: accuracy is "
           "dominated by background, and eq. (4) by slices without lung. On whole held-out patients the "
           f"same model reaches a 3D Dice of {t['dice']['mean']:.4f} (worst {t['dice']['min']:.4f}), HD95 "
           f"{t['hd95_mm']['mean']:.2f} mm.")
    if summary.get("reference_model"):
        r = summary["reference_model"]["dice"]
        out += (f" The course's baseline weights score {r['mean']:.4f} (worst {r['min']:.4f}) on the same "
                "patients.")
    per = (summary.get("cross_validation") or {}).get("per_structure", {})
    if "both lungs" in per:
        w = per["both lungs"]["worst_case"]
        out += (f" Over all {per['both lungs']['patients']} patients (cross-validation) the worst is "
                f"{w['case']} at Dice {w['dice']:.4f}.")
    dense = [r for r in summary.get("dense_lung", [])
             if r["kind"] != "original" and r["model"] == "with augmentation"]
    if dense:
        worst = min(dense, key=lambda r: r["dice_mean"])
        verdict = "remains the weak point" if worst["dice_mean"] < dense_study.GOAL_DICE else "holds"
        out += (f" Dense lung {verdict}: its lowest mean Dice, with simulated {worst['kind']}, is "
                f"{worst['dice_mean']:.3f}; {sum(r['below_0.9'] for r in dense)} of "
                f"{sum(r['series'] for r in dense)} diseased masks fall below 0.90.")
    return out


def quality_control(qc_eval: dict) -> str:
    """05_qc (its ``qc_evaluation.json``): detection, false alarms and the checks that carry it."""
    h = qc_eval["heldout"]
    alone = sorted(qc_eval.get("every_check", []), key=lambda r: -r["bad flagged by it alone"])
    key = [f"{r['check']} ({r['bad flagged by it alone']})" for r in alone
           if r["bad flagged by it alone"]][:3]
    return (f"**Discussion.** Held out, QC flags {h['bad']['flagged']} of {h['bad']['series']} bad masks "
            f"and {h['sound']['flagged']} of {h['sound']['series']} sound ones; of the failure series whose "
            f"mask stayed good it flags {h['good_failure']['flagged']} of {h['good_failure']['series']} (the "
            "input was wrong even if the mask was not). The checks that alone catch the most bad masks: "
            f"{_names(key)}. These failures are simulated from {len(qc_eval.get('cases', []))} patients; "
            "a failure of a kind not simulated here may pass.")
