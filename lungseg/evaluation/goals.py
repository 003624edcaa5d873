"""What per-lung results are measured against: the project's goals, the published LCTSC range and the
structures scored, with the results table built from them. Torch-free, so that README blocks and
tables render without loading a model."""

from __future__ import annotations

STRUCTURE_NAMES = ("Lung_R", "Lung_L")
"""The scored structures (AAPM TG-263 names): the patient's right lung, then the left."""
# Best published per-lung results on LCTSC (Yang et al. 2018, Med Phys 45:4568, and later U-Net-GAN /
# 3D U-Net papers), as quoted in the project's issue 11: a different (the challenge's) test set.
LCTSC_PER_LUNG = {"dice": (0.97, 0.98), "hd95_mm": (2.1, 4.7), "msd_mm": (0.59, 1.08)}
GOALS = {"dice": 0.975, "hd95_mm": 3.0, "msd_mm": 0.7, "worst_patient_dice": 0.96}


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
