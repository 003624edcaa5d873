"""Calibrate the quality control's limits and measure it on held-out patients.

``lungseg calibrate [--profile cpu]`` writes
``lungseg/inference/qc_thresholds.json`` (the limits
``predict`` uses); ``notebooks/05_qc.ipynb`` shows the held-out evaluation. Both start from one table
(:func:`score_table`): every case of the report is predicted by the cross-validation fold model that
never saw it, as it is and as each variant of :mod:`lungseg.evaluation.failures` (sound ones and failures),
exactly as ``predict`` does it (same inference, threshold, post-processing, side split and
:func:`lungseg.inference.qc_scores.measure`); each row holds the QC scores, the true Dice of the final
mask and whether the series is *bad*: Dice < :data:`BAD_DICE` against its truth, or lungs cut by the scan's
limits (the truth reaches the first or last slice or the image edge), or no lung in the scan.

The rule (:func:`lungseg.inference.qc.fit`) sets each check's limit from the *sound* series (the sound kinds,
whose mask is not bad) only: the most extreme sound value, pushed outwards by a margin. The failures
measure what the checks catch. Held-out protocol (:func:`heldout`): for each cross-validation fold,
the limits are set on the series of the other folds' patients and applied to this fold's patients'
series; detection rate = flagged bad series / bad series, false-alarm rate = flagged sound series /
sound series, pooled over the folds. The shipped limits are set on every patient (the deployed rule).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg import paths
from lungseg.evaluation import failures, metrics
from lungseg.inference import forward, predict, qc, qc_scores, segment
from lungseg.io import cache, writing
from lungseg.network import config, runs, selection
from lungseg.network.runs import TrainResult
from lungseg.progress import bar as progress_bar

BAD_DICE = 0.90
"""A mask with a lower Dice against its truth is wrong (the issue's external check)."""
CACHE = paths.BUILD / "qc"
TABLE_VERSION = 3
"""Bump when :func:`score_series` changes what a row holds (cached rows are then recomputed)."""
_CODE = ("evaluation/failures.py", "inference/postprocess.py", "inference/sides.py", "inference/forward.py",
         "inference/ort.py")
"""The code whose change changes a row; :data:`lungseg.inference.qc_scores.SCORES_VERSION` stands for
the scores (the rule's sentences and limits, in qc.py, may change without recomputing the table)."""
GROUPS = {"sound": "sound kind, mask good", "bad": "bad (Dice < 0.90, lungs cut or no lung)",
          "good failure": "failure kind, mask still good"}
DROPPED: dict[str, str] = {
    "flip": "in three report runs it flagged no bad series that another check missed (0 of 51, 51 and 28 "
            "alone), and in the last it raised every false alarm (5/60: one patient whose fold model "
            "agreed less with itself on mirrored slices). The network never trains on mirrored anatomy, "
            "so its mirror agreement on sound scans varies from one training to the next. Not measured "
            "since (it cost a second network pass, about 0.35 s per series on one core): not in predict "
            "(which measures only the checks the shipped rule judges by) nor in this study",
}
"""Checks measured but not shipped, with the measured reason (see docs/qc.md)."""


# ---- one series, as predict sees it --------------------------------------------------------------

def run_settings(run: TrainResult) -> tuple[float, bool]:
    """Threshold and post-processing ``predict --checkpoint RUN`` uses for a fold run."""
    return predict.inference_settings(run.run_dir, None, None)


def variant_logits(run: TrainResult, variant: failures.Variant, source_hu: np.ndarray | None,
                    source_logits: Callable[[], tuple[np.ndarray, bool]] | None) -> tuple[np.ndarray, bool]:
    """The variant's logits (z, y, x) and whether any came from the source volume's. A 2D network
    gives an unchanged slice the logits it gave it in the source: a variant that keeps some of the
    source's slices (``variant.source_slices``) takes theirs, and a variant on the source's grid that
    changes the pixels of some slices only (metal streaks, a consolidation) runs the network on those
    slices alone."""
    hu = np.asarray(variant.volume.hu)
    if source_logits is None:
        return forward.run_logits(run.model, run.config, hu, "cpu"), False
    if variant.source_slices is not None:
        start, stop = variant.source_slices
        full, shared = source_logits()
        return full[start:stop], shared
    if source_hu is None or hu.shape != source_hu.shape:
        return forward.run_logits(run.model, run.config, hu, "cpu"), False
    changed = np.flatnonzero([not np.array_equal(a, b) for a, b in zip(hu, source_hu, strict=True)])
    if len(changed) == len(hu):
        return forward.run_logits(run.model, run.config, hu, "cpu"), False
    full, _ = source_logits()
    logits = full.copy()
    if len(changed):
        logits[changed] = forward.run_logits(run.model, run.config, hu[changed], "cpu")
    return logits, True


def score_series(run: TrainResult, variant: failures.Variant, threshold: float, clean: bool,
                 source_logits: Callable[[], tuple[np.ndarray, bool]] | None = None,
                 source_hu: np.ndarray | None = None) -> dict:
    """QC scores, true Dice and the bad/sound label of one series, predicted as ``predict`` does.
    ``source_logits``: gives the logits (z, y, x) of ``source_hu`` (z, y, x, HU), the volume the
    variant was made from, and whether they had been computed before; given, the variant's unchanged
    slices take those logits instead of running the 2D network on the same pixels again
    (:func:`variant_logits`; ``logits_shared`` in the row when some did)."""
    volume, truth = variant.volume, variant.truth
    t0 = time.perf_counter()
    logits, shared = variant_logits(run, variant, source_hu, source_logits)
    inference_s = time.perf_counter() - t0
    timings: dict[str, float] = {}

    def logits_of(hu: np.ndarray) -> np.ndarray:
        return forward.run_logits(run.model, run.config, hu, "cpu")

    # A dropped check is not measured: the flip agreement alone would add a network pass per series.
    flip = None if "flip" in DROPPED else logits_of
    seg = segment.segment(volume, logits, threshold, clean, flip, True, timings)
    scores = seg.scores
    dice = metrics.volume_dice(seg.mask, truth)
    cut, empty = variant.lungs_cut, not truth.any()
    why = [w for w, on in (("Dice < 0.90", dice < BAD_DICE), ("lungs cut", cut), ("no lung", empty)) if on]
    sound_kind = variant.kind in failures.SOUND_KINDS
    group = "bad" if why else ("sound" if sound_kind else "good failure")
    return {"kind": variant.kind, "detail": variant.detail, "sound_kind": sound_kind, "group": group,
            "why_bad": ", ".join(why), "dice": dice,
            "truth_ml": float(truth.sum() * np.prod(volume.spacing) / 1e3),
            "slices": volume.shape[0], "matrix": volume.shape[2], "inference_s": round(inference_s, 3),
            "logits_shared": shared,
            "qc_timings_s": timings, "scores": scores}


# ---- the table ------------------------------------------------------------------------------------

def _cache_file(run: TrainResult) -> Path:
    """Where the rows of one fold run are cached: by the run and the code that scores them."""
    h = hashlib.sha256(f"v{TABLE_VERSION}-{qc_scores.SCORES_VERSION}".encode())
    for name in _CODE:
        h.update((Path(__file__).parents[1] / name).read_bytes())
    return CACHE / f"{run.run_dir.name}-{h.hexdigest()[:12]}.jsonl"


def fold_of(folds: Sequence[TrainResult], case_id: str) -> int:
    """Index of the fold run whose test patients include ``case_id`` (the model that never saw it)."""
    for i, run in enumerate(folds):
        if case_id in run.config.test_cases:
            return i
    raise ValueError(f"{case_id} is a test patient of no fold run")


def score_table(folds: Sequence[TrainResult], kinds: Sequence[str] = failures.KINDS, per_kind: int = 1,
                seed: int = 0, data: str | None = None, case_ids: Sequence[str] | None = None,
                use_cache: bool = True, workers: int | None = None) -> list[dict]:
    """One row per series: every test patient of every fold run (or ``case_ids``), each variant kind
    ``per_kind`` times with its severity drawn from (seed, case, kind, repeat). Cached per fold run in
    ``build/qc/`` (keyed by the run, the scoring code, the case's data, kind, repeat and seed, and
    used only at the run's current threshold and post-processing), one
    line per series, written as each patient finishes (a patient is one task), so an interrupted table
    resumes from its finished patients and other selections reuse them.
    ``workers``: patients scored in parallel on a local Dask cluster of that many one-thread processes
    (the cohort machinery of ``batch``); None: one per core; 0 or 1: in this process."""
    case_ids = sorted(case_ids or {c for r in folds for c in r.config.test_cases})
    rows: list[dict] = []
    known: dict[tuple, dict] = {}
    if use_cache:
        for run in folds:
            f = _cache_file(run)
            threshold, clean = run_settings(run)  # rows of other settings (retuned since) are stale
            if f.is_file():
                for line in f.read_text().splitlines():
                    if line.strip():
                        r = json.loads(line)
                        if r.get("threshold") == threshold and r.get("postprocess") == clean:
                            known[(r["run"], r["case"], r["data_key"], r["kind"], r["repeat"], r["seed"])] = r
    todo = []
    for case_id in case_ids:
        f = fold_of(folds, case_id)
        data_key = cache.content_key(case_id, data)
        series = []
        for kind in kinds:
            for rep in range(per_kind):
                hit = known.get((folds[f].run_dir.name, case_id, data_key, kind, rep, seed))
                if hit is not None:
                    rows.append({**hit, "fold": f})
                else:
                    series.append((kind, rep))
        if series:
            todo.append(CaseTask(str(folds[f].run_dir), f, case_id, data_key, tuple(series), seed, data))
    executor = _executor(workers, len(todo))
    try:
        bar = progress_bar(total=sum(len(t.series) for t in todo), desc="QC series", unit="series",
                           disable=not todo)
        for task, result in executor.map_unordered(score_case, todo):
            if isinstance(result, BaseException):
                raise result
            for (kind, _), row in zip(task.series, result, strict=True):
                bar.update()
                if isinstance(row, str):  # the variant cannot be made from this case
                    print(f"{task.case_id} {kind}: skipped ({row})", file=sys.stderr)
                    continue
                rows.append(row)
                if use_cache:
                    CACHE.mkdir(parents=True, exist_ok=True)
                    with open(_cache_file(folds[task.fold]), "a") as fh:  # one line per finished series
                        fh.write(json.dumps(row) + "\n")
        bar.close()
    finally:
        executor.close()
    order = {k: i for i, k in enumerate(kinds)}
    return sorted(rows, key=lambda r: (r["case"], order.get(r["kind"], 99), r["repeat"]))


@dataclass(frozen=True)
class CaseTask:
    """The series of one patient still to score, as a worker process receives them (paths and
    names only): one task per patient, so its volume is loaded once and the logits of the
    variants that only keep slices come from one pass of the network over the unchanged scan."""

    run_dir: str
    fold: int
    case_id: str
    data_key: str
    series: tuple[tuple[str, int], ...]
    """(kind, repeat) of each series."""
    seed: int
    data: str | None


_RUNS: dict[str, TrainResult] = {}
"""The fold runs this process loaded (a worker scores several patients of a run)."""


def source_logits(run: TrainResult, hu: np.ndarray) -> Callable[[], tuple[np.ndarray, bool]]:
    """The logits of ``hu`` (z, y, x, a case's unchanged volume) under ``run`` and whether they had
    been computed before: computed on first use and kept for the patient's other series (their
    unchanged slices share them, :func:`variant_logits`)."""
    kept: list[np.ndarray] = []

    def get() -> tuple[np.ndarray, bool]:
        had = bool(kept)
        if not had:
            kept.append(forward.run_logits(run.model, run.config, np.asarray(hu), "cpu"))
        return kept[0], had
    return get


def worker_run(run_dir: str) -> TrainResult:
    """The run in ``run_dir``, loaded once per process, with torch held to a Dask worker's threads (a
    one-thread worker: torch and ONNX Runtime must not take every core each). For tasks of the pool."""
    import torch

    from lungseg.inference.batch import tasks

    threads = tasks.dask_worker_threads()
    if threads:
        torch.set_num_threads(threads)
    if run_dir not in _RUNS:
        _RUNS[run_dir] = runs.load_run(Path(run_dir))
    return _RUNS[run_dir]


def score_case(task: CaseTask) -> list[dict | str]:
    """The row of each series of ``task`` (:func:`score_series` with the fold run's settings), or why
    its variant cannot be made. Runs in a worker: the run is loaded once per process."""
    run = worker_run(task.run_dir)
    case = cache.load_case(task.case_id, task.data)
    threshold, clean = run_settings(run)
    source = source_logits(run, np.asarray(case.volume.hu))
    out: list[dict | str] = []
    for kind, repeat in task.series:
        rng = np.random.default_rng([task.seed, int(task.case_id.split("_")[-1]), failures.KINDS.index(kind),
                                     repeat])
        try:
            variant = failures.make_failure(case.volume, np.asarray(case.mask), kind, rng)
        except ValueError as exc:  # e.g. too few slices outside the lungs for "no_lung"
            out.append(str(exc))
            continue
        out.append({"case": task.case_id, "fold": task.fold, "run": run.run_dir.name,
                    "data_key": task.data_key, "repeat": repeat, "seed": task.seed, "threshold": threshold,
                    "postprocess": clean,
                    **score_series(run, variant, threshold, clean, source, np.asarray(case.volume.hu))})
    return out


def _executor(workers: int | None, tasks: int):
    """Where the table's patients run: a local Dask cluster when it pays (several workers and several
    patients, each a task of tens of seconds against a pool's few seconds to start), else this process."""
    from lungseg.inference.batch import executors

    workers = executors.default_workers() if workers is None else workers
    if workers > 1 and tasks > 1:
        return executors.DaskExecutor(workers=workers)
    return executors.InProcess()


# ---- the rule and the held-out protocol -----------------------------------------------------------

def sound_scores(rows: Sequence[dict]) -> list[dict]:
    """The scores of the sound series (sound kind and a good mask): what the limits are set on."""
    return [r["scores"] for r in rows if r["group"] == "sound"]


def fit_rule(rows: Sequence[dict], dropped: Sequence[str] = tuple(DROPPED)) -> dict:
    """The limits of every check from ``rows``' sound series (:func:`lungseg.inference.qc.fit`); the checks in
    ``dropped`` are recorded but not applied."""
    return qc.fit(sound_scores(rows), dropped=list(dropped))


def apply_rule(rows: Sequence[dict], thresholds: dict) -> list[dict]:
    """``rows`` with the verdict of ``thresholds``: status, reasons, flagged checks."""
    out = []
    for r in rows:
        verdict = qc.assess(r["scores"], thresholds)
        out.append({**r, "status": verdict.status, "reasons": verdict.reasons, "checks": verdict.flagged,
                    "flagged": verdict.status != "pass"})
    return out


def heldout(rows: Sequence[dict], dropped: Sequence[str] = tuple(DROPPED)) -> list[dict]:
    """Each fold's rows judged by limits set on the other folds' patients' rows only (each judged
    row records how many sound series its limits came from: none leaves every limit unset); the
    checks in ``dropped`` are not applied."""
    out = []
    for f in sorted({r["fold"] for r in rows}):
        calibration = [r for r in rows if r["fold"] != f]
        n_sound = len(sound_scores(calibration))
        out += [{**r, "calibration_sound_series": n_sound}
                for r in apply_rule([r for r in rows if r["fold"] == f], fit_rule(calibration, dropped))]
    return out


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def summary(judged: Sequence[dict]) -> dict:
    """Detection and false-alarm rates, per group, per kind and per check, of judged rows."""
    def count(group: str) -> dict:
        sel = [r for r in judged if r["group"] == group]
        k = sum(r["flagged"] for r in sel)
        return {"series": len(sel), "flagged": k, "rate": _rate(k, len(sel)),
                "missed": [f"{r['case']} {r['kind']} ({r['detail']}, Dice {r['dice']:.3f})"
                           for r in sel if group == "bad" and not r["flagged"]],
                "flagged_series": [f"{r['case']} {r['kind']} ({'; '.join(r['checks'])})"
                                   for r in sel if group == "sound" and r["flagged"]]}

    kinds = []
    for kind in dict.fromkeys(r["kind"] for r in judged):
        sel = [r for r in judged if r["kind"] == kind]
        bad = [r for r in sel if r["group"] == "bad"]
        kinds.append({"kind": kind, "series": len(sel), "bad": len(bad),
                      "bad flagged": sum(r["flagged"] for r in bad),
                      "not bad flagged": sum(r["flagged"] for r in sel if r["group"] != "bad"),
                      "not bad": len(sel) - len(bad),
                      "Dice median": float(np.median([r["dice"] for r in sel])),
                      "fail": sum(r["status"] == "fail" for r in sel),
                      "review": sum(r["status"] == "review" for r in sel)})
    checks = []
    for check in qc.CHECKS:
        hit_bad = [r for r in judged if r["group"] == "bad" and check.name in r["checks"]]
        alone = [r for r in hit_bad if r["checks"] == [check.name]]
        checks.append({"check": check.name, "score": check.score, "group": check.group,
                       "bad flagged": len(hit_bad), "bad flagged by it alone": len(alone),
                       "sound flagged": sum(1 for r in judged if r["group"] == "sound"
                                            and check.name in r["checks"])})
    return {"bad": count("bad"), "sound": count("sound"), "good_failure": count("good failure"),
            "per_kind": kinds, "per_check": checks,
            "calibration_sound_series": sorted({r.get("calibration_sound_series", -1) for r in judged})}


def costs(rows: Sequence[dict]) -> dict[str, float]:
    """Median seconds per series of each group of QC scores and of the network's inference."""
    keys = sorted({k for r in rows for k in r["qc_timings_s"]})
    out = {k: float(np.median([r["qc_timings_s"].get(k, 0.0) for r in rows])) for k in keys}
    own = [r["inference_s"] for r in rows if not r.get("logits_shared")]  # what predict spends
    out["inference_s"] = float(np.median(own)) if own else 0.0
    return out


def same_limits(a: dict, b: dict) -> bool:
    """True when two rules hold the same limits for the same checks."""
    def limits(t: dict) -> dict:
        return {k: (v["limit"], v.get("kept", True)) for k, v in t.get("checks", {}).items()}

    return limits(a) == limits(b)


def write_evaluation(ev: dict, path: Path) -> Path:
    """The evaluation as JSON (the README's QC block is generated from it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return writing.atomic_write_text(path, json.dumps(ev, indent=1, ensure_ascii=False) + "\n")


# ---- shipping the limits ------------------------------------------------------------------------

def calibration_record(folds: Sequence[TrainResult], rows: Sequence[dict], kinds: Sequence[str],
                       per_kind: int, seed: int) -> dict:
    """Where the shipped limits come from (kept in the thresholds file)."""
    return {"date": dt.date.today().isoformat(), "git_commit": paths.git_commit("lungseg"),
            "fold_runs": [r.run_dir.name for r in folds],
            "cases": sorted({r["case"] for r in rows}), "kinds": list(kinds), "per_kind": per_kind,
            "seed": seed, "series": len(rows), "sound_series": len(sound_scores(rows)),
            "rule": f"limit = most extreme sound series pushed outwards by max(floor, "
                    f"{qc.MARGIN_OF_SPREAD} x the sound spread) (log scale for volumes and ratios)",
            "dropped": DROPPED}


def write_thresholds(thresholds: dict, path: Path = qc.THRESHOLDS_FILE) -> Path:
    return writing.atomic_write_text(path, json.dumps(thresholds, indent=1, ensure_ascii=False) + "\n")


def evaluation(rows: Sequence[dict], deployed: dict) -> dict:
    """The held-out evaluation (what the report and the README quote) and the deployed rule's view."""
    judged = heldout(rows)
    every_check = summary(heldout(rows, dropped=()))["per_check"]  # what each check adds, dropped ones too
    return {"bad_dice": BAD_DICE, "folds": len({r["fold"] for r in rows}),
            "cases": sorted({r["case"] for r in rows}), "series": len(rows),
            "heldout": summary(judged), "every_check": every_check, "dropped": dict(DROPPED),
            "costs_s": costs(rows), "deployed_on_calibration": summary(apply_rule(rows, deployed))["bad"]}


def fold_runs(profile: str = "", run_dirs: Sequence[str] = ()) -> list[TrainResult]:
    """The cross-validation fold runs: named folders, else those the profile's report recorded."""
    if run_dirs:
        return [runs.load_run(d) for d in run_dirs]
    report = selection.profile_runs(profile)
    if not report.fold_dirs:
        raise runs.RunNotFoundError(f"the {report.profile!r} report trained no cross-validation folds")
    return report.folds()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``lungseg calibrate``."""
    ap.add_argument("--profile", default=config.DEFAULT_PROFILE,
                    help="whose cross-validation folds (default %(default)s)")
    ap.add_argument("--runs", nargs="+", default=(), metavar="RUN_DIR", help="fold run folders instead")
    ap.add_argument("--kinds", default=",".join(failures.KINDS))
    ap.add_argument("--per-kind", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=str(qc.THRESHOLDS_FILE),
                    help="thresholds file (default: the shipped one)")


def command(args: argparse.Namespace) -> int:
    """``lungseg calibrate``: score the failure table on the fold runs, fit and write the limits."""
    folds = fold_runs(args.profile, args.runs)
    kinds = [k for k in args.kinds.split(",") if k]
    rows = score_table(folds, kinds, args.per_kind, args.seed, args.data)
    deployed = fit_rule(rows)
    deployed["calibration"] = calibration_record(folds, rows, kinds, args.per_kind, args.seed)
    out = write_thresholds(deployed, Path(args.out))
    ev = evaluation(rows, deployed)
    h = ev["heldout"]
    print(json.dumps({"thresholds": str(out), "heldout_detection": h["bad"]["rate"],
                      "heldout_false_alarms": h["sound"]["rate"], "bad": h["bad"]["series"],
                      "sound": h["sound"]["series"], "missed": h["bad"]["missed"],
                      "false_alarms": h["sound"]["flagged_series"]}, indent=1))
    return 0
