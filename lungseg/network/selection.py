"""Which runs a report used, and which model a command uses.

The runs one report used are recorded per profile in ``build/runs/reports/PROFILE.json`` by
02_train (:func:`record_profile_runs`); :func:`profile_runs` and :func:`default_model` resolve "the
latest run" there and nowhere else. A report whose main run caps its epochs
(``max_steps_per_epoch > 0``: the ``quick`` profile, CI's smoke test) is never a default:
:func:`default_model` then takes the released model in ``models/`` (:mod:`lungseg.report.release`).
The runs themselves live in the run store (:mod:`lungseg.network.runs`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lungseg import paths
from lungseg.io import writing
from lungseg.network import runs

RELEASED = paths.MODELS / "lungseg-cpu-lctsc12"
"""The released model (a run folder with ``model.pt``, ``run.json`` and ``MODEL_CARD.md``)."""
PROFILE_ENV = "LUNGSEG_PROFILE"
"""Names the report 03_eval evaluates when its ``profile`` parameter is empty (the tests set it to
their smoke profile; otherwise the latest report that is not a smoke test)."""


# ---- the runs of one report ---------------------------------------------------------------------

def _record_file(profile: str, folder: Path | None = None) -> Path:
    return (folder or runs.RUNS) / "reports" / f"{profile}.json"


def tested_slices(r: runs.TrainResult) -> tuple[int, int]:
    """(test slices, all slices) of a run's split, from its manifest; (0, 0) when it records none."""
    per = r.manifest.get("split", {}).get("per_case", {})
    return sum(len(v["test"]) for v in per.values()), sum(v["slices"] for v in per.values())


def describe_runs(by_split: dict[str, runs.TrainResult], folds: list[runs.TrainResult]) -> str:
    """What a report trained, one line per run, without keys or times (02_train's checked output): the
    split each run drew (its slice counts come from the data and the seed, the same on every machine)."""
    lines = []
    for split, r in by_split.items():
        c = r.config
        test = f", test {', '.join(c.test_cases)}" if c.split == "cases" else ""
        n_test, n_all = tested_slices(r)
        lines.append(f"{split} split: {len(c.cases)} cases{test}, {n_test} of {n_all} slices held out; "
                     f"{len(r.history['train_loss'])} epochs at {c.image_size} px, batch {c.batch_size}, "
                     f"lr {c.lr} ({c.schedule})")
    if folds:
        lines.append(f"{len(folds)} cross-validation folds, test patients (test slices): "
                     + " | ".join(f"{', '.join(f.config.test_cases)} ({tested_slices(f)[0]})" for f in folds))
    return "\n".join(lines)


def record_profile_runs(profile: str, by_split: dict[str, runs.TrainResult], folds: list[runs.TrainResult],
                        main_split: str, figures_dir: str, plain: runs.TrainResult | None = None) -> Path:
    """Written by 02_train: which runs the profile's report uses (main, other protocol, folds and
    the main run's twin trained without simulated dense lung, when the profile compares them)."""
    rec = {"profile": profile, "written": time.time(), "main": main_split,
           "smoke": by_split[main_split].config.max_steps_per_epoch > 0,
           "runs": {split: str(r.run_dir) for split, r in by_split.items()},
           "folds": [str(r.run_dir) for r in folds], "figures_dir": figures_dir,
           "plain": str(plain.run_dir) if plain is not None else ""}
    f = _record_file(profile)
    f.parent.mkdir(parents=True, exist_ok=True)
    return writing.atomic_write_text(f, json.dumps(rec, indent=1) + "\n")


def is_smoke(record: dict) -> bool:
    """A smoke-test report: its main run caps the steps of every epoch (the ``quick`` profile).
    Records from before the flag are judged by their main run's manifest."""
    if "smoke" in record:
        return bool(record["smoke"])
    main = record.get("runs", {}).get(record.get("main", ""), "")
    if not main:
        return False
    return int(runs.read_manifest(main).get("config", {}).get("max_steps_per_epoch", 0) or 0) > 0


def _records(folder: Path | None = None) -> list[dict]:
    reports = (folder or runs.RUNS) / "reports"
    return [json.loads(f.read_text()) for f in sorted(reports.glob("*.json"))] if reports.is_dir() else []


def latest_profile_record(folder: Path | None = None) -> dict:
    """The record of the latest report that is not a smoke test (:func:`is_smoke`)."""
    records = _records(folder)
    real = [r for r in records if not is_smoke(r)]
    if not real:
        smoke = ", ".join(sorted(r["profile"] for r in records))
        raise runs.RunNotFoundError(f"no trained runs recorded in {(folder or runs.RUNS) / 'reports'}"
                               + (f" except smoke tests ({smoke}), never a default" if smoke else "")
                               + ": run ./run_all.sh (or 02_train) first")
    return max(real, key=lambda r: r["written"])


def profile_record(profile: str = "", folder: Path | None = None) -> dict:
    """The record of ``profile``'s latest 02_train. Empty ``profile``: ``$LUNGSEG_PROFILE`` when set,
    else :func:`latest_profile_record`."""
    profile = profile or os.environ.get(PROFILE_ENV, "")
    if not profile:
        return latest_profile_record(folder)
    f = _record_file(profile, folder)
    if not f.is_file():
        raise runs.RunNotFoundError(f"no trained runs recorded for profile {profile!r} ({f}): run "
                               f"./run_all.sh --profile {profile} (or 02_train) first")
    return json.loads(f.read_text())


@dataclass
class ProfileRuns:
    """The finished runs of one report: ``main`` and ``by_split`` (main and the other protocol)."""

    profile: str
    main: runs.TrainResult
    by_split: dict[str, runs.TrainResult]
    fold_dirs: list[Path]
    figures_dir: str
    how: str = ""
    """Why this report: named, from ``$LUNGSEG_PROFILE``, or the latest that is not a smoke test."""
    plain_dir: Path | None = None
    """The main run's twin trained without simulated dense lung (``compare_disease``), if any."""

    def folds(self) -> list[runs.TrainResult]:
        return [runs.load_run(d) for d in self.fold_dirs]

    def plain(self) -> runs.TrainResult | None:
        return runs.load_run(self.plain_dir) if self.plain_dir else None

    def describe(self) -> str:
        """Which runs are evaluated, and why these (03_eval prints it at its top)."""
        lines = [f"Evaluating the {self.profile!r} report ({self.how}):"]
        for split, r in self.by_split.items():
            role = "main" if r is self.main else "other protocol"
            test = f", test patients {', '.join(r.config.test_cases)}" if r.config.split == "cases" else ""
            lines.append(f"  {role}: {r.run_dir.name} ({split} split, {len(r.config.cases)} cases, "
                         f"{r.config.image_size} px, {r.config.epochs} epochs{test})")
        lines += [f"  cross-validation fold {i}: {d.name}" for i, d in enumerate(self.fold_dirs)]
        if self.plain_dir:
            lines.append(f"  without simulated dense lung (same recipe otherwise): {self.plain_dir.name}")
        return "\n".join(lines)


def profile_runs(profile: str = "", folder: Path | None = None) -> ProfileRuns:
    """Load the runs :func:`record_profile_runs` recorded (never trains)."""
    env = os.environ.get(PROFILE_ENV, "")
    how = ("named by the profile parameter" if profile else f"named by ${PROFILE_ENV}" if env
           else "the latest report that is not a smoke test")
    rec = profile_record(profile, folder)
    by_split = {split: runs.load_run(d) for split, d in rec["runs"].items()}
    return ProfileRuns(rec["profile"], by_split[rec["main"]], by_split,
                      [Path(d) for d in rec["folds"]], rec["figures_dir"], how,
                      Path(rec["plain"]) if rec.get("plain") else None)


def default_run(profile: str = "", split: str = "cases", folder: Path | None = None) -> Path:
    """The ``split`` run (held-out patients, so its inference settings were chosen without the test
    patients) of the latest report that is not a smoke test (or of ``profile``)."""
    rec = profile_record(profile, folder)
    if split not in rec["runs"]:
        raise runs.RunNotFoundError(f"the latest report ({rec['profile']} profile) trained no {split}-split "
                               "run: pass --checkpoint RUN_DIR")
    run_dir = Path(rec["runs"][split])
    if not (run_dir / runs.WEIGHTS).is_file():
        raise runs.RunNotFoundError(f"{run_dir}: recorded but not finished; rerun ./run_all.sh")
    return run_dir


# ---- which model a command uses -----------------------------------------------------------------

@dataclass(frozen=True)
class ModelChoice:
    """The model a command uses: its run folder, a short name, where it comes from (``given``,
    ``report`` or ``released``) and why it was chosen, in a sentence."""

    path: Path
    name: str
    source: str
    reason: str

    def record(self) -> dict:
        """What ``stats.json`` and ``cohort.csv`` record of it."""
        inside = paths.is_within(self.path, paths.ROOT)
        path = str(self.path.resolve().relative_to(paths.ROOT)) if inside else str(self.path)
        return {"name": self.name, "source": self.source, "path": path, "reason": self.reason}


def released_model(folder: Path | None = None) -> ModelChoice | None:
    """The released model when its weights are there (a clone has them; a copy of the package may not)."""
    folder = folder or RELEASED
    if not (folder / runs.WEIGHTS).is_file():
        return None
    name = runs.read_manifest(folder).get("release", {}).get("name", folder.name)
    return ModelChoice(folder, name, "released", "")


REPORT = "report"
"""``--checkpoint report``: the held-out-patient run of the latest local report (:func:`report_model`)."""


def default_model() -> ModelChoice:
    """The model ``predict``, ``batch`` and the viewer use without ``--checkpoint``: always the released
    model (the same masks whatever was trained locally); runs.RunNotFoundError when it is missing."""
    released = released_model()
    if released is None:
        raise runs.RunNotFoundError(f"no released model in {RELEASED} (a copy of the package without it?); "
                               f"pass --checkpoint {REPORT} or a run folder")
    return ModelChoice(released.path, released.name, "released",
                       "the default: the released model (--checkpoint report: the latest local report's run)")


def report_model(folder: Path | None = None) -> ModelChoice:
    """``--checkpoint report``: the held-out-patient run of the latest local report that is not a smoke
    test; runs.RunNotFoundError when there is none."""
    skipped = sorted(r["profile"] for r in _records(folder) if is_smoke(r))
    note = f"; smoke-test reports are never chosen (skipped: {', '.join(skipped)})" if skipped else ""
    try:
        rec = latest_profile_record(folder)
    except runs.RunNotFoundError as exc:
        raise runs.RunNotFoundError(f"{exc}{note}") from None
    run_dir = default_run(rec["profile"], "cases", folder)
    return ModelChoice(run_dir, f"{rec['profile']} report run {run_dir.name}", REPORT,
                       f"asked for: the held-out-patient run of the latest local report ({rec['profile']} "
                       f"profile, {time.strftime('%Y-%m-%d %H:%M', time.localtime(rec['written']))}){note}")


def given_model(path: str | os.PathLike[str]) -> ModelChoice:
    """A model named on the command line (a run folder or a weights file)."""
    p = Path(path).absolute()
    run_dir = p if p.is_dir() else p.parent
    released = runs.read_manifest(run_dir).get("release", {}).get("name")
    name = released or (p.name if p.is_file() and p.name != runs.WEIGHTS else run_dir.name)
    return ModelChoice(p, name, "given", "named with --checkpoint")
