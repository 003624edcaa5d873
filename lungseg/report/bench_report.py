"""``lungseg bench report``: the wall time of the whole report on a fresh clone, per CPU kind.

For each instruction set asked (``native``, and ``avx2``: torch run as on an AVX2-only CPU, float32,
no native bf16, by ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) it clones the repository's
committed HEAD into a temporary folder (no ``build/``: nothing cached), runs ``python -m lungseg
report --profile PROFILE`` there with this interpreter on this data, and reads the per-notebook wall
times the report records in that clone's ``figures/provenance.json``, with the result levels the
report checks itself (``figures/summary.json``). It writes ``figures/report_timing.json``, which
``docs/report.md`` shows (block ``reporttime``). A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lungseg import paths
from lungseg.io import writing
from lungseg.network import config

OUT = paths.FIGURES / "report_timing.json"
ISA_ENV = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
"""The environment that makes torch behave as on each kind of CPU."""


def _git(*args: str, cwd: Path = paths.ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def time_report(isa: str, profile: str, data: Path, keep: Path | None = None) -> dict:
    """One report run on a fresh clone of HEAD under ``isa``'s environment: wall seconds of the
    command and of each notebook, the torch CPU capability it ran with and its result levels. With
    ``keep``, the clone's ``figures/`` are copied there (the committed code's own outputs: no second
    report run to regenerate them)."""
    with tempfile.TemporaryDirectory(prefix="lungseg-bench-report-") as tmp:
        clone = Path(tmp) / "lungseg"
        subprocess.run(["git", "clone", "--quiet", str(paths.ROOT), str(clone)], check=True)
        shared = paths.ROOT.parent / "shared"
        if shared.is_dir():  # ../shared beside the clone, as beside this tree: the course's reference weights
            (Path(tmp) / "shared").symlink_to(shared.resolve(), target_is_directory=True)
        # The data as the clone's own data/ (a link): a path given by $LUNGSEG_DATA would be recorded
        # in the figures' provenance and summary, which --keep-figures copies into this tree.
        (clone / "data").symlink_to(Path(data).resolve(), target_is_directory=True)
        # The clone's package first; this interpreter's tools (jupyter, papermill) on the PATH.
        env = {k: v for k, v in os.environ.items() if k != paths.DATA_ENV}
        env = {**env, **ISA_ENV[isa], "PYTHONPATH": str(clone),
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        print(f"bench report: {isa}: running the {profile} report in {clone}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lungseg", "report", "--profile", profile], cwd=clone, env=env,
                       check=True)
        wall = time.perf_counter() - start
        figures = clone / "figures"
        prov = json.loads((figures / "provenance.json").read_text())
        summary = json.loads((figures / "summary.json").read_text())
        qc_eval = figures / "qc_evaluation.json"
        if keep is not None:
            shutil.copytree(figures, keep, dirs_exist_ok=True)
            print(f"bench report: {isa}: copied the run's figures to {keep}", file=sys.stderr, flush=True)
        return {"isa": isa, "env": ISA_ENV[isa], "cpu_capability": prov.get("cpu_capability"),
                "machine": prov.get("machine"),
                "command_s": round(wall, 1),
                "notebooks_s": {k: v.get("wall_s") for k, v in prov.get("notebooks", {}).items()},
                "notebooks_total_s": round(sum(v.get("wall_s") or 0 for v in prov["notebooks"].values()), 1),
                "levels": levels(summary, json.loads(qc_eval.read_text()) if qc_eval.is_file() else {})}


def levels(summary: dict, qc_eval: dict) -> dict:
    """The result levels the report must keep, as that run measured them: held-out tuned Dice (mean),
    per-lung cross-validation Dice (mean and worst patient), QC held-out detection and false alarms."""
    tuned = summary.get("per_patient_tuned", {}).get("dice", {})
    cv = summary.get("cross_validation", {}).get("per_structure", {})
    held = qc_eval.get("heldout", {})
    return {"heldout_tuned_dice": tuned.get("mean"),
            "cv_dice_per_lung": {k: v["dice"]["mean"] for k, v in cv.items()},
            "cv_worst_patient_dice": min((v["worst_case"]["dice"] for v in cv.values()), default=None),
            "qc_detection": held.get("bad", {}).get("rate"),
            "qc_false_alarms": held.get("sound", {}).get("rate")}


def run_report_bench(args: argparse.Namespace) -> int:
    """Time the report for each ``--isa`` and write ``--out``."""
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("bench report: note: uncommitted changes are not timed (the clone is of HEAD)", file=sys.stderr)
    data = paths.data_dir(args.data)
    path = Path(args.out)
    commit = _git("rev-parse", "HEAD")
    keep = paths.FIGURES if args.keep_figures else None
    # Runs of other CPU kinds on the same commit and profile stay: the kinds may be timed one at a time.
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    kept = ([r for r in earlier.get("runs", []) if r["isa"] not in args.isa]
            if (earlier.get("commit"), earlier.get("profile")) == (commit, args.profile) else [])
    out = {"what": "Wall time of `python -m lungseg report` on a fresh clone of the commit below (nothing "
                   "cached), per notebook, as each run's figures/provenance.json records it; made by "
                   "`lungseg bench report`.",
           "commit": commit, "profile": args.profile,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "runs": kept + [time_report(isa, args.profile, data, keep if i == 0 else None)
                           for i, isa in enumerate(args.isa)]}
    out["runs"].sort(key=lambda r: list(ISA_ENV).index(r["isa"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    writing.atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    for r in out["runs"]:
        print(f"{r['isa']}: notebooks {r['notebooks_total_s'] / 60:.1f} min "
              f"({', '.join(f'{k} {v / 60:.1f}' for k, v in r['notebooks_s'].items())}), "
              f"command {r['command_s'] / 60:.1f} min")
    print(f"wrote {path}")
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``report`` benchmark."""
    p = sub.add_parser("report", help="the whole report's wall time on a fresh clone, natively and as AVX2",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", nargs="+", choices=list(ISA_ENV), default=list(ISA_ENV),
                   help="CPU kinds to time (default: %(default)s)")
    p.add_argument("--profile", default=config.DEFAULT_PROFILE, help="report profile (default %(default)s)")
    p.add_argument("--data", default=None, help=f"data directory (default ${paths.DATA_ENV} or data/)")
    p.add_argument("--out", default=str(OUT), help="where to write the timings (default %(default)s)")
    p.add_argument("--keep-figures", action="store_true",
                   help="copy the first run's figures/ into this tree's figures/ (its report outputs)")
    p.set_defaults(func=run_report_bench)
