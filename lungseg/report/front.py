"""The HTML report's front page (Markdown), generated from the run's outputs: aim, the coursework it
reproduces, data, methods in brief, key results, limitations, reproducibility and contents.

Every number comes from the run's ``summary.json`` (03_eval), ``qc_evaluation.json`` (05_qc) and
``provenance.json``; a part whose output is missing (a notebook not run) says so instead.
"""

from __future__ import annotations

import html

from lungseg.evaluation import dense
from lungseg.report import tables

COURSEWORK = (
    "The Medical Imaging coursework of the University of Cambridge's MPhil in Data Intensive Science: "
    "**Module 1** (reading DICOM: slices → a 3D volume in Hounsfield units sorted by position, patient data "
    "removed, a coronal slice at the true aspect ratio) and **Module 2B** (a 2D UNet that segments the "
    "lungs, as the course's **Practical 3** defines it, trained with 0.5·BCE + 0.5·soft Dice). Its data is "
    "the module's teaching copy of 12 LCTSC cases; its report scores slices with its **eq. (4)**, "
    "Dice = 2|A∩B| / (|A| + |B| + ε), a slice empty in both prediction and truth scoring 0.")
LCTSC = (
    "Yang J, Sharp G, Veeraraghavan H, van Elmpt W, Dekker A, Lustberg T, Gooding M. *Data from Lung CT "
    "Segmentation Challenge (LCTSC)* (Version 3). The Cancer Imaging Archive, 2017. "
    "https://doi.org/10.7937/K9/TCIA.2017.3r3fvz08 — licence CC BY 3.0 "
    "(http://creativecommons.org/licenses/by/3.0/); TCIA: Clark K et al., J Digit Imaging 26(6):1045–1057, "
    "2013, https://doi.org/10.1007/s10278-013-9622-7.")
NOT_IN_REPORT = ("04_cohort is no part of this report: it renders a `batch` output folder "
                 "(`python -m lungseg batch ROOT --out OUT --report`), not the report's data.")


def _mean_range(stat: dict, fmt: str = ".4f") -> str:
    return f"{stat['mean']:{fmt}} [{stat['min']:{fmt}}–{stat['max']:{fmt}}]"


def methods(summary: dict | None) -> str:
    """The recipe in brief, from the run's config."""
    if not summary:
        return "(03_eval did not run: no summary.json)"
    c = summary["config"]
    cv = summary.get("cross_validation") or {}
    held = ", ".join(c.get("test_cases", [])) or "none"
    disease = (f"simulated dense lung (consolidation, ground glass, collapse) inside the true lung in "
               f"{c['disease_p']:.0%} of training slices, mask unchanged" if c.get("disease_p") else
               "no simulated disease")
    return (f"- **Network:** the report's UNet (three encoder blocks, {c['base_channels']} → 128 channels, "
            f"Dropout2d {c['dropout']}), input {c['image_size']}² ({c['input_mode']}, HU window "
            f"{c['hu_window'][0]:g}…{c['hu_window'][1]:g}).\n"
            f"- **Training:** Adam, lr {c['lr']:g} ({c['schedule']}), {c['epochs']} epochs, batch "
            f"{c['batch_size']}, seed {c['seed']}; {disease}.\n"
            f"- **Evaluation:** held-out patients ({held}) never seen in training; threshold and "
            f"post-processing chosen on the training patients; 3D Dice, HD95 and mean surface distance in "
            f"mm on the 512² grid; {cv.get('folds', 0)}-fold cross-validation over all 12 patients, per "
            f"lung. The coursework's slice split and per-slice metrics are reproduced as well (03_eval).\n"
            f"- **Quality control:** limits set on sound series of other patients, measured on simulated "
            f"failures of held-out patients (05_qc).")


def results(summary: dict | None, qc_eval: dict | None) -> str:
    """The key results as one table."""
    rows = []
    if summary:
        t = summary["per_patient_tuned"]
        rows.append({"result": f"held-out patients ({len(t['cases'])}), both lungs",
                     "Dice": _mean_range(t["dice"]),
                     "HD95 mm": f"{t['hd95_mm']['mean']:.2f}", "MSD mm": f"{t['msd_mm']['mean']:.2f}"})
        for name, s in (summary.get("cross_validation") or {}).get("per_structure", {}).items():
            rows.append({"result": f"cross-validation, {name} ({s['patients']} patients; worst "
                                   f"{s['worst_case']['case']})", "Dice": _mean_range(s["dice"]),
                         "HD95 mm": f"{s['hd95_mm']['mean']:.2f}", "MSD mm": f"{s['msd_mm']['mean']:.2f}"})
        if summary.get("reference_model"):
            r = summary["reference_model"]
            rows.append({"result": "the course's baseline weights, same held-out patients",
                         "Dice": _mean_range(r["dice"]), "HD95 mm": f"{r['hd95_mm']['mean']:.2f}",
                         "MSD mm": f"{r['msd_mm']['mean']:.2f}"})
        s = summary["per_slice"]["test"]
        rows.append({"result": f"the report's slice metrics ({s['slices']} test slices): accuracy "
                               f"{s['mean_accuracy']:.4f}, mean Dice eq. (4)",
                     "Dice": f"{s['mean_dice_report']:.4f}",
                     "HD95 mm": "–", "MSD mm": "–"})
    out = tables.markdown(rows) if rows else "(03_eval did not run)"
    if qc_eval:
        h = qc_eval["heldout"]
        out += (f"\n\nQuality control, held out ({qc_eval['folds']} folds, {qc_eval['series']} series): "
                f"**{h['bad']['flagged']} of {h['bad']['series']}** bad masks flagged "
                f"({h['bad']['rate']:.0%}), **{h['sound']['flagged']} of {h['sound']['series']}** sound ones "
                f"flagged by mistake ({h['sound']['rate']:.1%}).")
    return out


def _dense_sentence(summary: dict | None) -> str:
    rows = [r for r in (summary or {}).get("dense_lung", []) if r["kind"] != "original"]
    main = [r for r in rows if r["model"] == "with augmentation"] or rows
    if not main:
        return "not measured in this profile."
    kinds = ", ".join(f"{r['kind']} {r['dice_mean']:.3f}" for r in sorted(main, key=lambda r: r["dice_mean"]))
    below = sum(r["below_0.9"] for r in main)
    flagged = sum(r["qc_flagged_of_those"] for r in main if isinstance(r["qc_flagged_of_those"], int))
    return (f"simulated on the held-out patients, mean Dice per kind {kinds} (the goal is "
            f"≥ {dense.GOAL_DICE}). "
            + (f"{below} of {sum(r['series'] for r in main)} masks fall below 0.90, large dense or dark "
               f"regions left out of the mask; QC flags {flagged} of those {below}." if below else
               "No mask falls below 0.90."))


def _sides_sentence(summary: dict | None) -> str:
    per = ((summary or {}).get("cross_validation") or {}).get("per_structure", {})
    if not {"Lung_L", "Lung_R", "both lungs"} <= set(per):
        return "not measured in this profile."
    h = {k: per[k]["hd95_mm"] for k in ("Lung_L", "Lung_R", "both lungs")}
    return (f"right and left come from the DICOM geometry (`lungseg.inference.sides`), not from the network. "
            f"Per-lung HD95 also counts what the split gives to the wrong side where the lungs touch: mean "
            f"HD95 left {h['Lung_L']['mean']:.1f} mm (worst {h['Lung_L']['max']:.1f}), right "
            f"{h['Lung_R']['mean']:.1f} mm (worst {h['Lung_R']['max']:.1f}), against "
            f"{h['both lungs']['mean']:.1f} mm for both lungs as one mask.")


def limitations(summary: dict | None, qc_eval: dict | None) -> str:
    """What the results do not show, with the run's numbers."""
    qc_line = ("limits and detection rates come from simulated failures of these 12 patients "
               f"({qc_eval['series']} series); failures of other kinds may pass." if qc_eval else
               "05_qc did not run.")
    return (
        "- **12 patients** of one public challenge: radiotherapy-planning CT (3 mm slices, 512², head first "
        "supine). Every accuracy above is measured on them; scans unlike them (children, contrast phases, "
        "small fields of view, other reconstructions) are not.\n"
        f"- **Dense and lucent lung** (consolidation, collapse, ground glass; emphysema-like lung darker "
        f"than these patients'): {_dense_sentence(summary)}\n"
        "- **The GTV convention** (LCTSC's): aerated and dense lung is lung; the tumour (GTV), hilum, "
        "trachea and main bronchi are not. A large tumour against the pleura stays outside the mask by "
        "design.\n"
        f"- **The side rule and HD95:** {_sides_sentence(summary)}\n"
        f"- **Quality control:** {qc_line}")


def reproducibility(prov: dict) -> str:
    """Commit, machine, date, wall time per notebook, and how to rerun."""
    rows = "\n".join(f"| {html.escape(nb)} | {rec.get('wall_s', 0) / 60:.1f} min | {rec.get('date', '')} |"
                     for nb, rec in prov.get("notebooks", {}).items())
    return (f"- commit `{prov.get('git_commit', 'unknown')}`, run on {prov.get('date', '')}\n"
            f"- machine: {html.escape(prov.get('machine', ''))}, torch CPU capability "
            f"{prov.get('cpu_capability', '')}\n"
            f"- rerun: `./run_all.sh --profile {prov.get('profile', 'cpu')}` (this page: "
            f"`build/executed/{prov.get('profile', 'cpu')}/report/index.html`); tests: "
            "`./run_all.sh --tests`. "
            "The notebooks' parameters are in `provenance.json` beside this folder.\n\n"
            "| notebook | wall time | date |\n| --- | --- | --- |\n" + rows)


def front_page(prov: dict, summary: dict | None = None, qc_eval: dict | None = None,
               questions: dict[str, str] | None = None) -> str:
    """The whole front page as Markdown; ``questions``: each notebook's question, by notebook name (the
    contents)."""
    contents = "\n".join(f"- `{nb}`: {q}" for nb, q in (questions or {}).items())
    return (f"# Lung segmentation in chest CT with a 2D UNet — report, profile "
            f"`{prov.get('profile', '')}`\n\n"
            "## Aim\n\nSegment both lungs in chest CT with the coursework's small 2D UNet, measure how good "
            "the masks are on patients the network never saw, in 3D and in millimetres, and know when a mask "
            "is wrong.\n\n"
            f"## What it reproduces\n\n{COURSEWORK}\n\n"
            f"## Data\n\n12 chest CTs of the Lung CT Segmentation Challenge 2017 with their lung masks "
            f"(LCTSC's convention). Cite: {LCTSC}\n\n"
            f"## Methods in brief\n\n{methods(summary)}\n\n"
            f"## Key results\n\n{results(summary, qc_eval)}\n\n"
            f"## Limitations\n\n{limitations(summary, qc_eval)}\n\n"
            f"## Reproducibility\n\n{reproducibility(prov)}\n\n"
            f"## Contents\n\nEvery figure and number below is an output of the notebooks as executed by "
            f"`./run_all.sh` (code folded: click *code* to open it).\n\n{contents}\n\n{NOT_IN_REPORT}\n")
