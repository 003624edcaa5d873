"""The README's and docs/' numbers, generated from the committed run's outputs (never typed by hand).

Blocks between ``<!-- BEGIN lungseg:NAME -->`` and ``<!-- END lungseg:NAME -->`` are rendered from
``figures/summary.json`` and ``figures/provenance.json``; :func:`update` rewrites them after a full
run (``./run_all.sh`` does), :func:`stale` lists blocks that disagree (a test fails on any).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lungseg import paths
from lungseg.evaluation import goals
from lungseg.inference import qc
from lungseg.io import writing
from lungseg.report import tables

README = paths.ROOT / "README.md"
_BLOCK = re.compile(r"(<!-- BEGIN lungseg:(\w+) -->\n)(.*?)(<!-- END lungseg:\2 -->)", re.S)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def results_block(summary: dict) -> str:
    """Per-patient results of the held-out run (both lungs as one mask)."""
    return tables.markdown(tables.results_rows(summary), ".4g") + "\n"


def crossval_block(summary: dict) -> str:
    """Per-lung cross-validation over all patients, with goals and the published range."""
    cv = summary.get("cross_validation")
    if not cv:
        return "(this run has no cross-validation: cv_folds = 0)\n"
    rows = goals.summary_rows(cv["per_structure"])
    per = cv["per_structure"]
    gaps = []
    for name in goals.STRUCTURE_NAMES:
        if name in per:
            s = per[name]
            gaps.append(f"{name}: Dice {s['dice']['mean']:.4f} (goal ≥ {goals.GOALS['dice']}), "
                        f"HD95 {s['hd95_mm']['mean']:.2f} mm (≤ {goals.GOALS['hd95_mm']}), "
                        f"MSD {s['msd_mm']['mean']:.2f} mm (≤ {goals.GOALS['msd_mm']}), worst patient "
                        f"{s['worst_case']['case']} at Dice {s['worst_case']['dice']:.4f} "
                        f"(≥ {goals.GOALS['worst_patient_dice']})")
    return (f"{cv['folds']}-fold cross-validation over patients (every patient tested once, by a model "
            "that never saw it; threshold and post-processing chosen on each fold's training "
            "patients):\n\n" + tables.markdown(rows) + "\n\nAgainst the goals: " + "; ".join(gaps) + ".\n")


def leakage_block(summary: dict) -> str:
    """The report's slice split against held-out patients, same recipe."""
    rows = summary.get("protocol_comparison")
    return (tables.markdown(rows, ".4f") + "\n") if rows else "(no comparison run in this profile)\n"


def dense_block(summary: dict) -> str:
    """The dense-lung study of 03_eval: per kind and model, held-out patients."""
    rows = summary.get("dense_lung")
    if not rows:
        return "(this profile trains without simulated dense lung)\n"
    return tables.markdown(rows, ".4f") + "\n"


def timing_block(summary: dict, provenance: dict) -> str:
    """Training time per model (from the runs' manifests) and wall time per notebook."""
    lines = []
    training = summary.get("training", {})
    for role, t in training.items():
        lines.append(f"| {role} | {t['epochs']} | {t['train_wall_s']:.0f} s ({_minutes(t['train_wall_s'])}) "
                     f"| {t['epoch_s_mean']:.1f} s | {t['speed']} |")
    out = ""
    if lines:
        out += ("| model | epochs | training time | per epoch | speed switches |\n|---|---|---|---|---|\n"
                + "\n".join(lines) + "\n\n")
    nbs = provenance.get("notebooks", {})
    if nbs:
        # Notebooks rerun on their own later (``--only``) are listed apart: a rerun may reuse cached
        # work, so its time is no part of the whole run's.
        first = min(v.get("date", "") for v in nbs.values())
        whole = {k: v for k, v in nbs.items() if v.get("date", "") == first}
        later = {k: v for k, v in nbs.items() if k not in whole}
        total = sum(v.get("wall_s", 0.0) for v in whole.values())
        each = ", ".join(f"{k} {_minutes(v['wall_s'])}" for k, v in whole.items())
        out += (f"Wall time of the notebooks in the last whole `./run_all.sh` ({first[:16]} UTC): {each}; "
                f"{_minutes(total)} in all on {provenance.get('machine', 'this machine')}"
                f" (`{provenance.get('cpu_capability', '?')}` torch CPU capability).")
        if later:
            reruns = (f"{k} {_minutes(v['wall_s'])} ({v.get('date', '?')[:16]} UTC)"
                      for k, v in later.items())
            out += " Rerun on its own later (reusing cached work): " + ", ".join(reruns) + "."
        trained = sum(t["train_wall_s"] for t in training.values())
        train_nb = whole.get("02_train", {}).get("wall_s", 0.0)
        if trained > train_nb:  # the models were loaded from earlier runs, not trained again
            # No estimate of a fresh clone's time from it: the other notebooks reuse cached work too
            # (the QC study's scored series), which training times alone do not put back.
            out += (f" That run loaded its {len(training)} models from earlier runs and reused what they had "
                    "scored, so its time is no measure of a fresh clone's: `lungseg bench report` "
                    "measures that (below).")
        else:
            # (the twin trained without simulated dense lung is trained too, and not listed above)
            out += f" It trained its models: **{_minutes(total)} in all**."
        out += "\n"
    return out


def blocks(figures_dir: str | Path = paths.FIGURES) -> dict[str, str]:
    """Every generated block, from ``figures_dir``'s summary.json and provenance.json."""
    folder = paths.resolve(figures_dir)
    summary = json.loads((folder / "summary.json").read_text())
    prov_file = folder / "provenance.json"
    provenance = json.loads(prov_file.read_text()) if prov_file.is_file() else {}
    return {"results": results_block(summary), "crossval": crossval_block(summary),
            "leakage": leakage_block(summary), "dense": dense_block(summary),
            "timing": timing_block(summary, provenance),
            "bench": bench_block(folder), "twoclass": two_class_block(folder),
            "denserecipe": dense_recipe_block(folder),
            "predict": predict_block(folder), "batch": batch_block(folder), "qc": qc_block(folder),
            "qctime": qc_timing_block(folder), "reporttime": report_timing_block(folder)}


def render(text: str, new: dict[str, str]) -> str:
    """``text`` with each marked block replaced by ``new[name]`` (unknown names left as they are)."""
    return _BLOCK.sub(lambda m: m.group(1) + new.get(m.group(2), m.group(3)) + m.group(4), text)


def pages() -> list[Path]:
    """The files that hold generated blocks: the README and the pages of ``docs/``."""
    return [README, *sorted((paths.ROOT / "docs").glob("*.md"))]


def stale(readme: Path | None = None, figures_dir: str | Path = paths.FIGURES) -> list[str]:
    """Names of the generated blocks (of ``readme``, else of every :func:`pages` file) whose text
    differs from what the outputs give."""
    new = blocks(figures_dir)
    return [m.group(2) for page in ([readme] if readme else pages())
            for m in _BLOCK.finditer(page.read_text()) if m.group(2) in new and m.group(3) != new[m.group(2)]]


def update(readme: Path | None = None, figures_dir: str | Path = paths.FIGURES) -> bool:
    """Rewrite the generated blocks (of ``readme``, else of every :func:`pages` file); True when a
    file changed."""
    new, changed = blocks(figures_dir), False
    for page in [readme] if readme else pages():
        text = page.read_text()
        out = render(text, new)
        if out != text:
            writing.atomic_write_text(page, out)
            changed = True
    return changed


def bench_block(figures_dir: str | Path = paths.FIGURES) -> str:
    """Training-step and inference throughput per CPU kind, from ``bench_train_*.json`` (written by
    ``lungseg bench train --save figures``)."""
    files = sorted(paths.resolve(figures_dir).glob("bench_train_*.json"))
    if not files:
        return "(no saved benchmark: `lungseg bench train --save figures`)\n"
    rows = []
    for f in files:
        b = json.loads(f.read_text())
        for t in b["training"]:
            rows.append({"CPU (torch capability)": f"{b['cpu_capability']}, {b['threads']} threads",
                         "setting": f"{t['setting']}: {t['size']}², batch {t['batch']}",
                         "naive slices/s": f"{t['naive_slices_s']:.2f}",
                         "project slices/s": f"{t['project_slices_s']:.2f}",
                         "ratio": f"**{t['ratio']:.2f}×**",
                         "project switches (measured)": t["project_switches"]})
    out = tables.markdown(rows) + "\n"
    for f in files:
        b = json.loads(f.read_text())
        inf = "; ".join(f"{i['size']}²: {i['seconds']:.1f} s ({i['core_ms_per_slice']:.0f} core-ms/slice)"
                        for i in b["inference"])
        if inf:
            out += f"\nInference of {b['inference'][0]['case']} ({b['inference'][0]['slices']} slices), " \
                   f"{b['cpu_capability']}, untrained UNet, logits upsampled to 512²: {inf}.\n"
    return out


def two_class_block(figures_dir: str | Path = paths.FIGURES) -> str:
    """Two-class network against one class split by the side rule, from ``two_class_vs_rule.json``
    (written from ``benchmarks/two_class.py RUN_DIR``'s output)."""
    f = paths.resolve(figures_dir) / "two_class_vs_rule.json"
    if not f.is_file():
        return "(not measured: `python benchmarks/two_class.py RUN_DIR`)\n"
    d = json.loads(f.read_text())
    rows = [{"approach": approach, "lung": lung, "Dice": f"{m['dice']:.4f}", "HD95 mm": f"{m['hd95_mm']:.2f}",
             "MSD mm": f"{m['msd_mm']:.2f}"}
            for approach, per in d["mean"].items() for lung, m in per.items()]
    return (f"Held-out patients {', '.join(c[-3:] for c in d['held_out'])}, means, threshold 0.5 with "
            f"post-processing; the two-class network trained in {d['two_class_train_s']:.0f} s with the same "
            "recipe:\n\n" + tables.markdown(rows) + "\n")


_RECIPE_RUN_FIELDS = ("name", "changes", "train_s_native_bf16", "fit_recall")
"""Fields of a run in ``dense_recipe_study.json`` that are not a kind's Dice."""


def dense_recipe_block(figures_dir: str | Path = paths.FIGURES) -> str:
    """The dense-lung recipe study on training patients, from ``dense_recipe_study.json`` (written from
    ``benchmarks/dense_recipe.py``'s runs)."""
    f = paths.resolve(figures_dir) / "dense_recipe_study.json"
    if not f.is_file():
        return "(not measured: `python benchmarks/dense_recipe.py NAME [key=value ...]`)\n"
    d = json.loads(f.read_text())
    # The kinds each run was scored on, in the order they first appear (no import of the torch-side
    # study module: README blocks render without torch); runs older than a kind show "–" for it.
    kinds = list(dict.fromkeys(k for r in d["runs"] for k in r if k not in _RECIPE_RUN_FIELDS))

    def changes(r: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in r["changes"].items() if v) or "none"

    rows = [{"run": r["name"], "changes to the cpu recipe": changes(r),
             **{k: f"{r[k]:.3f}" if k in r else "–" for k in kinds}, "train s": r["train_s_native_bf16"],
             "fit recall": f"{r['fit_recall']:.2f}" if "fit_recall" in r else "–"} for r in d["runs"]]
    return d["what"] + "\n\n" + tables.markdown(rows) + "\n"


def predict_block(figures_dir: str | Path = paths.FIGURES) -> str:
    """End-to-end ``predict`` times per held-out case and runtime, from ``predict_timing.json``
    (written by ``benchmarks/predict_timing.py RUN_DIR --save figures``)."""
    f = paths.resolve(figures_dir) / "predict_timing.json"
    if not f.is_file():
        return "(not measured: `python benchmarks/predict_timing.py RUN_DIR --save figures`)\n"
    d = json.loads(f.read_text())
    rows = []
    for c in d["cases"]:
        o, t = c["onnxruntime"], c["torch"]
        rows.append({"case": c["case"], "slices": c["slices"], "lungs": c["side_split_method"],
                     "wall, ONNX Runtime": f"**{o['wall_s']:.1f} s**",
                     "wall, PyTorch": f"{t['wall_s']:.1f} s",
                     "start-up": f"{o['startup_s']:.1f}", "read": f"{o['read_s']:.1f}",
                     "inference (ORT / torch)": f"{o['inference_s']:.1f} / {t['inference_s']:.1f}",
                     "post-processing + sides": f"{o['postprocess_s']:.1f}",
                     "NIfTI + SEG + RTSTRUCT + PNG": f"{o['exports_s']:.1f}",
                     "Dice R / L, ORT vs torch": "{right:.5f} / {left:.5f}".format(
                         **c["dice_onnxruntime_vs_torch"])})
    walls = [c["onnxruntime"]["wall_s"] for c in d["cases"]]
    return (f"`python -m lungseg predict` end to end (a fresh process, all five outputs), median of "
            f"{d['repeat']} runs per case and runtime, {d['cpu_capability']}, {d['cores']} cores; stage "
            f"times in s of the ONNX Runtime run (`stats.json`). ONNX Runtime: {min(walls):.1f}–"
            f"{max(walls):.1f} s per case; the first run on a new checkpoint also exports it "
            f"({d['warm_up_wall_s']:.1f} s in all).\n\n" + tables.markdown(rows) + "\n")


EXTRAPOLATED = ((1_000, 2, "this machine"), (1_000, 32, "one 32-core node"),
                (100_000, 32, "one 32-core node"), (100_000, 512, "16 nodes x 32 cores (dask-jobqueue)"))
"""(series, workers, where) of the extrapolated rows of the cohort table."""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def batch_block(figures_dir: str | Path = paths.FIGURES) -> str:
    """``batch`` against a loop of ``predict``, peak memory per worker, and cohort times measured and
    extrapolated, from ``batch_timing.json`` (``benchmarks/batch_throughput.py --save figures``)."""
    f = paths.resolve(figures_dir) / "batch_timing.json"
    if not f.is_file():
        return "(not measured: `python benchmarks/batch_throughput.py --save figures`)\n"
    d = json.loads(f.read_text())
    n = len(d["cases"])
    loop = d["loop_predict"]["wall_s"]

    def masks(m: dict) -> str:
        return "identical bytes" if m.get("nifti_bytes_equal_loop") else (
            "identical" if m.get("masks_equal_loop") else "**differ**")

    def peak(values: list[float]) -> str:
        return f"{max(values):.0f} MB" if values else "–"

    runs = [("a loop of `predict` processes, one per series", d["loop_predict"],
             f"{max(d['loop_predict']['peak_rss_mb']):.0f} MB (each process)", "–"),
            (f"`batch` (default: local Dask cluster, {d['batch_default']['workers']} worker processes)",
             d["batch_default"], peak(d["batch_default"]["worker_peak_rss_mb"]), masks(d["batch_default"])),
            ("`batch --workers 0` (one process, no Dask)", d["batch_in_process"],
             f"{d['batch_in_process']['peak_rss_mb']:.0f} MB", masks(d["batch_in_process"])),
            (f"`batch --scheduler` (2-worker cluster started from the shell in "
             f"{d['batch_dask_shell']['cluster_start_s']:.1f} s, not counted)", d["batch_dask_shell"],
             peak(d["batch_dask_shell"]["worker_peak_rss_mb"]), masks(d["batch_dask_shell"]))]
    rows = [{"how": how, "wall": f"{r['wall_s']:.1f} s", "series/min": f"{60 * n / r['wall_s']:.1f}",
             "vs the loop": f"**{loop / r['wall_s']:.2f}×**", "peak memory per worker": mem,
             "masks vs the loop": same} for how, r, mem, same in runs]
    b12 = d["batch_12"]
    per_file = b12["scan_s"] / b12["files"] if b12.get("files") else 0.0
    files_per_series = b12["files"] / b12["series"]
    w = b12["worker_s_per_series"]
    cohort = [{"cohort": f"{b12['series']} series (measured)",
               "workers": f"{b12['workers']} (this machine)", "time": f"**{_duration(b12['wall_s'])}**"}]
    for series, workers, where in EXTRAPOLATED:
        t = b12["fixed_s"] + series * (w + files_per_series * per_file) / workers
        cohort.append({"cohort": f"{series:,} series (extrapolated)", "workers": f"{workers} ({where})",
                       "time": _duration(t)})
    slices = sorted(d["slices"].values())
    pairs = d.get("pairs", [])
    repeat = "one run each"
    if pairs:
        each = ", ".join(f"{p['speedup']:.2f}× (load {p['load_average_before']:.1f})" for p in pairs)
        repeat = (f"{len(pairs)} pairs of a loop then a `batch`, alternating, speed-ups {each}: the "
                  "median pair is shown")
    shell = d["batch_dask_shell"]
    beside = ""
    if "default_right_after_s" in shell:
        beside = (f"The shell cluster took {shell['wall_s']:.1f} s against "
                  f"{shell['default_right_after_s']:.1f} s for the default right after it: "
                  f"**{d['dask_shell_vs_default']:.2f}×** its time. ")
    intro = (f"{n} series (cases {d['cases'][0][-3:]}–{d['cases'][-1][-3:]}, {slices[0]}–{slices[-1]} "
             f"slices), model `{d['model']}`, {d['cores']} cores shared with other work, {repeat}; peak "
             "memory is the high-water mark (VmHWM) of each worker process, masks are compared with the "
             "loop's:\n\n")
    extrapolation = (f"Cohort times: measured on {b12['series']} series with the default (its "
                     f"`cohort.csv`: {w:.1f} s of one worker per series, {b12['fixed_s']:.1f} s of start-up "
                     f"and tail), extrapolated as {b12['fixed_s']:.0f} s + N × ({w:.1f} s + "
                     f"{files_per_series:.0f} files × {1000 * per_file:.1f} ms of discovery) / workers, for "
                     "workers like these cores and "
                     "storage that keeps up:\n\n")
    return (intro + tables.markdown(rows) + "\n\n" + beside + extrapolation + tables.markdown(cohort)
            + "\n")


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else f"{k}/{n}"


def qc_block(figures_dir: str | Path = paths.FIGURES, thresholds: Path = qc.THRESHOLDS_FILE) -> str:
    """The quality control's held-out rates, per kind and per check, and the shipped rule, from
    ``qc_evaluation.json`` (written by 05_qc) and ``lungseg/inference/qc_thresholds.json`` (written by
    ``lungseg calibrate``)."""
    f = paths.resolve(figures_dir) / "qc_evaluation.json"
    if not f.is_file():
        return "(not measured: run 05_qc, `./run_all.sh --only 05_qc`)\n"
    ev = json.loads(f.read_text())
    shipped = json.loads(thresholds.read_text()) if thresholds.is_file() else {"checks": {}}
    h = ev["heldout"]
    bad, sound, good = h["bad"], h["sound"], h["good_failure"]
    out = (f"Held-out ({ev['folds']} folds over {len(ev['cases'])} patients; each fold's series judged by "
           f"limits set on the other folds' patients): **detection {_share(bad['flagged'], bad['series'])}** "
           f"of the bad series (Dice < {ev['bad_dice']}, lungs cut or no lung), **false alarms "
           f"{_share(sound['flagged'], sound['series'])}** of the sound series; failure-kind series whose "
           f"mask stayed good were flagged {_share(good['flagged'], good['series'])}.")
    if bad["missed"]:
        out += " Missed: " + "; ".join(bad["missed"]) + "."
    if sound["flagged_series"]:
        out += " False alarms: " + "; ".join(sound["flagged_series"]) + "."
    kinds = [{"kind": k["kind"], "series": k["series"], "bad": k["bad"],
              "bad flagged": k["bad flagged"], "other flagged": f"{k['not bad flagged']}/{k['not bad']}",
              "median Dice": f"{k['Dice median']:.3f}", "fail / review": f"{k['fail']} / {k['review']}"}
             for k in h["per_kind"]]
    out += "\n\n" + tables.markdown(kinds) + "\n\n"
    costs = ev["costs_s"]
    by_name = {c.name: c for c in qc.CHECKS}
    rows = []
    for c in ev["every_check"]:
        check, rule = by_name[c["check"]], shipped["checks"].get(c["check"])
        limit = "–" if rule is None else (f"{'>' if check.bad_when == 'above' else '<'} {rule['limit']:.4g}"
                                          + ("" if rule.get("kept", True) else " (not shipped)"))
        sound_range = "–" if rule is None else "{:.4g} – {:.4g}".format(*rule["sound_range"])
        rows.append({"check": c["check"], "score": c["score"], "flags when (shipped)": limit,
                     "sound range (all patients)": sound_range,
                     "status": check.severity + (f", fail past {check.fail_margins:g} margins"
                                                 if check.fail_margins else ""),
                     "bad flagged (alone)": f"{c['bad flagged']} ({c['bad flagged by it alone']})",
                     "sound flagged": c["sound flagged"],
                     "time of its group": f"{1000 * costs.get(check.group + '_s', 0.0):.0f} ms"})
    out += tables.markdown(rows) + "\n"
    if ev.get("dropped"):
        out += ("\nMeasured but not shipped (the rates above are without them; the table applies every "
                "check): " + "; ".join(f"`{k}`: {v}" for k, v in ev["dropped"].items()) + ".\n")
    cal = shipped.get("calibration")
    if cal:
        out += (f"\nShipped limits: set on {cal['sound_series']} sound series of {len(cal['cases'])} "
                "patients "
                f"({cal['series']} series in all, fold runs {', '.join(cal['fold_runs'])}), "
                f"{cal['date']}; rule: {cal['rule']}.\n")
    return out


def qc_timing_block(figures_dir: str | Path = paths.FIGURES) -> str:
    """``predict`` with and without QC per case, from ``qc_timing.json`` (written by
    ``benchmarks/qc_timing.py RUN_DIR --save figures``)."""
    f = paths.resolve(figures_dir) / "qc_timing.json"
    if not f.is_file():
        return "(not measured: `python benchmarks/qc_timing.py RUN_DIR --save figures`)\n"
    d = json.loads(f.read_text())
    rows = [{"case": c["case"], "slices": c["slices"], "QC": c["qc_status"],
             "wall with QC": f"{c['wall_s']['qc']:.1f} s", "wall without": f"{c['wall_s']['no_qc']:.1f} s",
             "difference": f"{c['wall_overhead']:+.1%}", "QC stage": f"{c['qc_stage_s']:.2f} s",
             "QC stage / wall without": f"{c['qc_stage_share_of_no_qc_wall']:.1%}"} for c in d["cases"]]
    worst = max(c["qc_stage_share_of_no_qc_wall"] for c in d["cases"])
    return (f"`python -m lungseg predict` with and without `--no-qc` (fresh processes, alternating, median "
            f"of {d['repeat']} each, {d['cpu_capability']}, {d['cores']} cores, run {d['run']}); the QC "
            f"stage took at most {worst:.1%} of predict's time without it (goal: at most 25 %).\n\n"
            + tables.markdown(rows) + "\n")


def report_timing_block(figures_dir: str | Path = paths.FIGURES) -> str:
    """The whole report's wall time on a fresh clone per CPU kind, from ``report_timing.json``
    (written by ``lungseg bench report``), with the result levels each run measured."""
    f = paths.resolve(figures_dir) / "report_timing.json"
    if not f.is_file():
        return "(not measured: `lungseg bench report`)\n"
    d = json.loads(f.read_text())
    names = list(dict.fromkeys(k for r in d["runs"] for k in r["notebooks_s"]))
    rows = []
    for r in d["runs"]:
        lv = r["levels"]
        row = {"CPU": f"{r['isa']} ({r['cpu_capability']})"}
        row.update({k: _minutes(r["notebooks_s"][k]) if k in r["notebooks_s"] else "–" for k in names})
        row["notebooks in all"] = f"**{_minutes(r['notebooks_total_s'])}**"
        row["held-out tuned Dice"] = f"{lv['heldout_tuned_dice']:.4f}"
        cv = lv["cv_dice_per_lung"]
        row["CV Dice R / L (worst)"] = (f"{cv['Lung_R']:.4f} / {cv['Lung_L']:.4f} "
                                        f"({lv['cv_worst_patient_dice']:.4f})")
        if lv.get("qc_detection") is not None:
            row["QC detection / false alarms"] = f"{lv['qc_detection']:.1%} / {lv['qc_false_alarms']:.1%}"
        rows.append(row)
    missing = [isa for isa in ("native", "avx2") if isa not in {r["isa"] for r in d["runs"]}]
    note = "".join(f"\n{isa}: not measured for this commit (`lungseg bench report --isa {isa}`).\n"
                   for isa in missing)
    return (f"`lungseg bench report` on a fresh clone of `{d['commit'][:10]}` ({d['date'][:16]} UTC, profile "
            f"`{d['profile']}`, {d['runs'][0]['machine']}): wall time per notebook, nothing cached.\n\n"
            + tables.markdown(rows) + "\n" + note)
