"""Run the report: execute the numbered notebooks headless with papermill, one profile at a time.

``lungseg report [--profile NAME] [--data DIR] [--only 01_dicom ...]`` — what
``./run_all.sh`` calls once the environment is ready. A profile is ``params/NAME.yaml`` with one
section of parameters per notebook. Executed copies go to ``build/executed/NAME/`` with a
``provenance.json`` (profile, parameters, git commit, date, machine, wall time per notebook).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from lungseg import paths
from lungseg.io import writing
from lungseg.network.config import ProfileError, load_profile

NOTEBOOKS = paths.ROOT / "notebooks"
KERNEL = "lungseg"
TAKES_PROFILE = ("02_train", "03_eval", "05_qc")
"""Notebooks told which profile they run under (02_train records its runs under that name)."""
TRAIN_NOTEBOOK_PARAMS = ("profile", "figures_dir")
"""What 02_train is given; its config, protocols and folds come from
:func:`lungseg.network.config.training_plan`."""
NOT_IN_REPORT = ("04_cohort",)
"""Numbered notebooks that are no part of the report: 04_cohort reports on a batch output folder
(``lungseg.report.cohort_report.render_report``)."""


def default_profile() -> str:
    """``paper`` when CUDA is available (the report's exact run), else ``cpu``."""
    import torch

    from lungseg.network import config  # imports torch: only when a profile must be chosen

    return "paper" if torch.cuda.is_available() else config.DEFAULT_PROFILE


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The report's numbered notebooks in order (not :data:`NOT_IN_REPORT`), or those whose stem starts
    with one of ``only``."""
    found = [nb for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) if nb.stem not in NOT_IN_REPORT]
    if only:
        found = [nb for nb in found if any(nb.stem.startswith(o) for o in only)]
        if not found:
            raise ValueError(f"no notebook matches {only} in {NOTEBOOKS}")
    return found


def run(profile: str, data: str | None = None, only: list[str] | None = None,
        kernel: str = KERNEL, rerun: bool = False) -> int:
    """Execute the notebooks; return 0, or 1 after naming the notebook and cell that failed. A notebook
    whose inputs are unchanged since its last successful execution (:mod:`lungseg.report.freshness`)
    is not executed again unless ``rerun``."""
    import papermill as pm

    from lungseg.report import execute, freshness

    params = load_profile(profile)
    out_dir = paths.BUILD / "executed" / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    prov_path = out_dir / "provenance.json"
    earlier = json.loads(prov_path.read_text())["notebooks"] if prov_path.is_file() else {}
    # Top level: the latest call; each notebook keeps the commit and date of its own last run.
    # figures/ holds the run's own outputs: they do not make the code dirty.
    prov = {"profile": profile, "git_commit": paths.git_commit(".", ":(exclude)figures"),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu, "
                       f"{platform.platform()}, Python {platform.python_version()}",
            "cpu_capability": _cpu_capability(),
            "notebooks": earlier}  # notebooks not run this time keep their earlier record
    staging = out_dir / "staged"  # published to each figures_dir only when every notebook succeeded
    shutil.rmtree(staging, ignore_errors=True)
    publish: dict[Path, Path] = {}
    fresh_dir = out_dir / "fresh"  # each notebook's last successful execution: key and staged files
    executed: dict[str, tuple[str, list[str]]] = {}  # run now: inputs key, staged files
    for nb in notebooks(only):
        p = dict(params.get(nb.stem, {}))
        if nb.stem in TAKES_PROFILE:
            p["profile"] = profile
        if nb.stem == "02_train":  # it reads its training plan from the profile itself
            p = {k: v for k, v in p.items() if k in TRAIN_NOTEBOOK_PARAMS}
        if data:
            p["data_dir"] = data
        recorded = dict(p)  # what provenance.json keeps: the parameters as the profile names them
        if "figures_dir" in p:
            target = paths.resolve(p["figures_dir"])
            stage = staging / (target.relative_to(paths.ROOT) if target.is_relative_to(paths.ROOT)
                               else Path(target.name))
            p["figures_dir"] = str(stage)
            publish[stage] = target
        if data:
            recorded["data_dir"] = paths.relative(data)
        stored = freshness.entry(fresh_dir, nb.stem)
        inputs = freshness.inputs_key(nb, p, profile, data)
        if (not rerun and stored is not None and (out_dir / nb.name).is_file() and nb.stem in earlier
                and stored.key == freshness.key(inputs, profile, nb.stem in TAKES_PROFILE)):
            freshness.restore(stored, staging)
            print(f"== {nb.name}: code, parameters, data, machine and runs unchanged since its last "
                  f"run ({earlier[nb.stem].get('date', '?')}): not executed again (--rerun to force)",
                  flush=True)
            continue
        last = earlier.get(nb.stem, {}).get("wall_s")
        estimate = f"; the last run here took {last / 60:.1f} min" if last else ""
        print(f"== {nb.name} (profile {profile}{estimate}): {p}", flush=True)
        freshness.forget(fresh_dir, nb.stem)
        before = freshness.snapshot(staging)
        start = time.perf_counter()
        try:
            execute.execute(nb, out_dir / nb.name, p, kernel, NOTEBOOKS, log_output=True)
        except pm.PapermillExecutionError as exc:
            shown = nb.relative_to(paths.ROOT) if nb.is_relative_to(paths.ROOT) else nb
            print(f"\nFAILED: {shown}, cell {exc.exec_count} "
                  f"(index {exc.cell_index}): {exc.ename}: {exc.evalue}\n"
                  f"executed copy: {out_dir / nb.name}", file=sys.stderr)
            _remember(executed, fresh_dir, profile, staging)
            return 1
        executed[nb.stem] = (inputs, freshness.written(before, freshness.snapshot(staging)))
        prov["notebooks"][nb.stem] = {"parameters": recorded, "git_commit": prov["git_commit"],
                                      "date": prov["date"],
                                      "wall_s": round(time.perf_counter() - start, 1)}
        print(f"== {nb.name} done in {prov['notebooks'][nb.stem]['wall_s']} s", flush=True)
    _remember(executed, fresh_dir, profile, staging)
    writing.atomic_write_text(prov_path, json.dumps(prov, indent=1) + "\n")
    from lungseg.report import render

    executed = [out_dir / nb.name for nb in notebooks() if (out_dir / nb.name).is_file()]
    page = render.render_report(executed, prov, out_dir, *(_output(publish, name) for name in
                                                          ("summary.json", "qc_evaluation.json")))
    print(f"== the report, readable without Jupyter: {paths.relative(page)}", flush=True)
    changed = []
    for src, dst in publish.items():
        changed += publish_folder(src, dst)
        print(f"== published {len(changed)} changed file(s) to {dst}", flush=True)
    if changed:  # identical results keep the earlier provenance: a rerun leaves git status clean
        publish_provenance(profile)
    if paths.FIGURES in publish.values() and (paths.FIGURES / "summary.json").is_file():
        from lungseg.report import readme

        if readme.update():
            print("== README.md and docs/: generated result blocks updated from figures/", flush=True)
    return 0


def _remember(executed: dict[str, tuple[str, list[str]]], fresh_dir: Path, profile: str,
              staging: Path) -> None:
    """Store the key of each notebook executed (successfully) in this run: its inputs as they were when
    it started, the runs as the run leaves them (a later notebook may add to the runs an earlier one
    reads), with the staged files it wrote."""
    from lungseg.report import freshness

    for name, (inputs, files) in executed.items():
        freshness.remember(fresh_dir, name, freshness.key(inputs, profile, name in TAKES_PROFILE),
                           staging, files)


def _output(publish: dict[Path, Path], name: str) -> dict | None:
    """The JSON output ``name`` of this run (a staged folder), else of the last published run."""
    for folder in [*publish, *publish.values()]:
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    return None


def _cpu_capability() -> str:
    """torch's CPU kernel level (e.g. AVX2, AVX512), with the ISA limits set in the environment."""
    import torch

    limits = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
              if k in os.environ]
    return torch.backends.cpu.get_cpu_capability() + (f" ({', '.join(limits)})" if limits else "")


def publish_folder(src: Path, dst: Path) -> list[Path]:
    """Copy every file of ``src`` into ``dst`` whose bytes differ (so a rerun with unchanged
    results leaves the files, and ``git status``, untouched); return the files written."""
    written = []
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        out = dst / f.relative_to(src)
        data = f.read_bytes()
        if out.is_file() and out.read_bytes() == data:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        writing.atomic_write(out, lambda fh, d=data: fh.write(d))
        written.append(out)
    return written


def publish_provenance(profile: str) -> list[Path]:
    """Copy the run's provenance.json next to the figures it produced (each ``figures_dir`` of the
    profile), so the committed figures of a full run say where they came from."""
    src = paths.BUILD / "executed" / profile / "provenance.json"
    targets = {paths.resolve(p["figures_dir"]) for p in load_profile(profile).values()
               if isinstance(p, dict) and "figures_dir" in p}
    written = []
    for folder in sorted(targets):
        folder.mkdir(parents=True, exist_ok=True)
        writing.atomic_write_text(folder / "provenance.json", src.read_text())
        written.append(folder / "provenance.json")
    return written


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``lungseg report``."""
    ap.add_argument("--profile", default=None,
                    help="params/NAME.yaml (default: paper with CUDA, else cpu)")
    ap.add_argument("--data", default=None, help=f"data directory (default ${paths.DATA_ENV} or data/)")
    ap.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks, e.g. 01_dicom")
    ap.add_argument("--kernel", default=KERNEL, help="Jupyter kernel name (default %(default)s)")
    ap.add_argument("--rerun", action="store_true",
                    help="execute every notebook, even those whose code, parameters, data, machine and "
                         "runs are unchanged since their last run (skipped by default)")


def command(args: argparse.Namespace) -> int:
    """``lungseg report``: execute the profile's notebooks (all, or ``--only``)."""
    data = args.data or os.environ.get(paths.DATA_ENV)
    try:
        paths.data_dir(data)  # fail early with the expected layout
        return run(args.profile or default_profile(), data, args.only, args.kernel, args.rerun)
    except (ProfileError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
