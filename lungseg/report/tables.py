"""Small text tables for the notebooks (Markdown), built from package objects."""

from __future__ import annotations

from collections.abc import Sequence

from lungseg.inference.sides import SplitInfo
from lungseg.io.anonymise import AnonymisationSummary
from lungseg.io.cache import Case


def markdown(rows: Sequence[dict], floatfmt: str = ".3g") -> str:
    """A Markdown table of ``rows`` (dicts with the same keys, in order)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def fmt(v: object) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def case_row(case: Case, report: AnonymisationSummary | None = None) -> dict:
    """One row of the per-case table: slices, spacing (mm), HU range, order, lung share, PHI."""
    vol = case.volume
    dz, dy, dx = vol.spacing
    row = {
        "case": vol.case_id,
        "slices": vol.shape[0],
        "size": f"{vol.shape[1]}×{vol.shape[2]}",
        "dz, dy×dx (mm)": f"{dz:.2f}, {dy:.4f}×{dx:.4f}",
        "HU range": f"{int(vol.hu.min())} … {int(vol.hu.max())}",
        "file order ≠ slice order": "yes" if vol.filename_order_differs else "no",
        "lung (mL)": round(float(case.mask.sum()) * dz * dy * dx / 1000.0),
    }
    if report is not None:
        row["PHI found"] = ", ".join(sorted(report.phi)) or "none"
    return row


def case_table(cases: Sequence[Case], reports: Sequence[AnonymisationSummary] | None = None) -> str:
    """Markdown per-case table; ``reports`` (same order) adds the PHI column."""
    reports = reports or [None] * len(cases)  # type: ignore[list-item]
    return markdown([case_row(c, r) for c, r in zip(cases, reports, strict=True)])


def phi_table(reports: Sequence[AnonymisationSummary]) -> str:
    """Markdown table per case: patient PHI found, attributes per de-identification action (all
    files, all depths) and values checked by the verification pass."""
    rows = [{"case": r.case_id,
             "patient PHI found (files)": ", ".join(f"{k} ({n})" for k, n in sorted(r.phi.items())) or "–",
             **{action: r.actions[action] for action in ("removed (E.1-1)", "emptied (E.1-1)",
                                                         "removed (not on the allowlist)",
                                                         "removed (private)",
                                                         "emptied (required by the IOD, Type 2)")},
             "values verified": r.verified_values}
            for r in reports]
    return markdown(rows) if rows else "No case."


def sides_table(case_ids: Sequence[str], infos: Sequence[SplitInfo]) -> str:
    """Markdown table of the right/left split of each ground-truth mask (see
    :mod:`lungseg.inference.sides`)."""
    rows = [{"case": c, "lungs touch": "yes" if i.touched else "no", "method": i.method,
             "split depth (mm)": f"{i.split_depth_mm:.1f}" if i.split_depth_mm is not None else "–",
             "right lung (mL)": f"{i.right_ml:.0f}", "left lung (mL)": f"{i.left_ml:.0f}",
             "stray components": i.strays}
            for c, i in zip(case_ids, infos, strict=True)]
    touching = sum(i.touched for i in infos)
    return markdown(rows) + f"\n\nLungs touch (one 3D component) in **{touching} of {len(infos)}** cases."


def results_rows(summary: dict) -> list[dict]:
    """Rows of the results table: this run, the reference model, the LCTSC 2017 range."""
    split = summary["config"]["split"]
    who = "held-out patients" if split == "cases" else "all patients (slice split: seen in training)"

    def span(s: dict, key: str, fmt: str) -> str:
        m = s[key]
        return f"{m['mean']:{fmt}} [{m['min']:{fmt}}–{m['max']:{fmt}}]"

    def row(name: str, s: dict) -> dict:
        return {"model": name, "patients": len(s["cases"]),
                "Dice mean [min–max]": span(s, "dice", ".4f"),
                "HD95 mm mean [min–max]": span(s, "hd95_mm", ".2f"),
                "MSD mm mean [min–max]": span(s, "msd_mm", ".2f")}

    rows = [row(f"this run ({split} split, {summary['config']['image_size']}px), {who}",
                summary["per_patient"])]
    if "per_patient_tuned" in summary:
        t = summary["per_patient_tuned"]
        extra = " + post-processing" if t["postprocess"] else ""
        rows.append(row(f"this run, threshold {t['threshold']}{extra} (chosen on {t['chosen_on']})", t))
    if "reference_model" in summary:
        rows.append(row("course reference weights (512px), same patients", summary["reference_model"]))
    lc = summary["lctsc_2017_lung"]
    rows.append({"model": "LCTSC 2017 lung results (range over methods)", "patients": "–",
                 "Dice mean [min–max]": f"{lc['dice'][0]}–{lc['dice'][1]}",
                 "HD95 mm mean [min–max]": f"{lc['hd95_mm'][0]}–{lc['hd95_mm'][1]}",
                 "MSD mm mean [min–max]": f"{lc['msd_mm'][0]}–{lc['msd_mm'][1]}"})
    return rows
