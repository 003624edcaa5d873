"""Command line: ``lungseg COMMAND`` (or ``python -m lungseg COMMAND``), the one entry point.

``predict`` segments a new DICOM series, ``batch`` every series of a cohort
(:mod:`lungseg.inference.batch`, a subpackage);
``qc`` judges an existing mask (:mod:`lungseg.inference.judge`); ``convert`` and ``anonymise`` wrap
:mod:`lungseg.io`. The project's commands (train, report, release, calibrate, bench, checked) keep
their options beside their code (``add_arguments``/``command`` in the module) and are registered here,
so that ``python -m lungseg.X`` is only an alias of ``lungseg X``.
Every subcommand has ``--help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lungseg import __version__, heap, paths
from lungseg.inference import postprocess, predict, qc
from lungseg.io import writing
from lungseg.io.dicom import DicomSeriesError, DicomWarning, Volume
from lungseg.io.masks import MaskError

PROG = "lungseg" if Path(sys.argv[0]).name == "lungseg" else "python -m lungseg"
"""How usage texts name the command: as it was typed (the installed script, or the module)."""
EXIT_ERROR = 1
EXIT_QC = 3
"""``predict --fail-on-qc fail|review``: the mask was written, but QC judged it at or below that level."""
DEBUG_ENV = "LUNGSEG_DEBUG"
"""Set to show the full traceback of a user error."""
# Failures that are the user's input, reported as one line rather than a traceback.
USER_ERRORS = (predict.PredictError, DicomSeriesError, MaskError, ValueError, OSError)

DESCRIPTION = ("Lung segmentation in chest CT with a 2D UNet. "
               "Run `python -m lungseg COMMAND --help` for the options of each command.")

PREDICT_EPILOG = f"""\
outputs (in OUT_DIR, written to a temporary folder beside it and renamed when complete):
  {predict.NIFTI_NAME:<22} labels, uint8, 1 = patient's right lung, 2 = left lung; (x, y, z)
  {'':<22} array, RAS affine from the DICOM geometry
  {predict.SEG_NAME:<22} DICOM Segmentation, segments "Right lung" and "Left lung" (SNOMED CT)
  {predict.RTSTRUCT_NAME:<22} RT Structure Set, ROIs Lung_R and Lung_L, contours on every slice
  {predict.OVERVIEW_NAME:<22} middle axial and coronal slices with both lungs, physical aspect
  {predict.STATS_NAME:<22} volumes (mL, per lung), slices, spacing, threshold, checkpoint, timings,
  {'':<22} and the quality control's verdict ("qc": pass, review or fail, reasons, scores)

The side of each lung comes from the DICOM geometry (ImageOrientationPatient/ImagePositionPatient),
never from array indices; any axis-aligned series (prone, feet first, coronal) is reoriented for the
model and the outputs written on the series' own grid. Oblique series are refused.

default model: the released model in models/ (trained on all 12 LCTSC cases, see its MODEL_CARD.md),
whatever was trained locally, so that the same command gives the same masks every day.
--checkpoint report takes the held-out-patient run of the latest local report that is not a smoke
test (its run.json holds the threshold and post-processing 03_eval chose); --checkpoint PATH a run
folder or model.pt. The model used and why is printed and recorded in stats.json ("model").

exit status: 0 done; 1 bad input or a failed run (one line on stderr, nothing written); 3 with
--fail-on-qc, when QC judged the written mask at or below that level.
"""


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment the lungs of a CT series (DICOM, NIfTI, NRRD, MetaImage)",
                       description="Segment the lungs of one CT series (a folder of DICOM files, any "
                                   "names/order, or a NIfTI/NRRD/MetaImage file) with a trained run.",
                       epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dicom_dir", metavar="INPUT",
                   help="a folder with one DICOM CT series, or a CT volume file (.nii, .nii.gz, .nrrd, "
                        ".nhdr, .mha, .mhd; HU, any axis-aligned orientation): its outputs are the NIfTI "
                        "mask, the overview and stats.json, plus the mask in the file's own format for "
                        "NRRD/MetaImage (no DICOM SEG/RTSTRUCT: no DICOM slices to reference)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a run's model.pt or run folder, or \"report\" (the latest local report's "
                        "run); default: the released model")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ... "
                                                    "(default %(default)s)")
    p.add_argument("--runtime", choices=predict.RUNTIMES, default="auto",
                   help="what runs the network: auto = ONNX Runtime on a CPU when installed (faster, "
                        "same masks), else PyTorch (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"slices per inference batch (default {predict.ort.BATCH})")
    p.add_argument("--threshold", type=float, default=None, metavar="P",
                   help="probability above which a voxel is lung (default: the run's manifest "
                        f"written by 03_eval, else {postprocess.DEFAULT_THRESHOLD})")
    p.add_argument("--no-postprocess", action="store_const", const=False, default=None,
                   dest="postprocess",
                   help="keep the raw thresholded mask (default: as 03_eval chose for the run, else "
                        "keep the 2 largest 3D components and fill enclosed holes)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an OUT_DIR holding an earlier predict output (nothing else)")
    p.add_argument("--no-qc", action="store_false", dest="qc",
                   help="skip the quality control of the mask (only to time predict without it)")
    p.add_argument("--record-input", action="store_true",
                   help="write the input's absolute path into stats.json (by default only a hash of it: "
                        "folder names are often patient identifiers)")
    p.add_argument("--fail-on-qc", choices=("fail", "review"), default=None,
                   help=f"exit with status {EXIT_QC} when QC's verdict is this or worse (fail; or review "
                        "and fail); the outputs are written all the same")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors and notes (no progress bar, no summary): for scripts, "
                        "which read the exit status and stats.json")
    _add_series_options(p)
    p.set_defaults(func=_run_predict)


def _add_series_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", metavar="UID", default=None,
                   help="SeriesInstanceUID to read when the folder holds several series (default: the "
                        "only one, or the one the series rule prefers: axial, original, thinnest, "
                        "most slices; said in a note)")
    p.add_argument("--recursive", action="store_true", default=None,
                   help="read subfolders too: the default, as batch reads a folder (kept so that old "
                        "scripts run)")


def _run_predict(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    choice = predict.choose_model(args.checkpoint)
    if not args.quiet:
        print(f"model: {choice.name} ({choice.reason or choice.source})", file=sys.stderr)
    stats = predict.predict(args.dicom_dir, args.out, choice, args.device, args.batch_size,
                            args.threshold, args.postprocess, args.overwrite, args.series, args.recursive,
                            args.runtime, args.qc, args.record_input, progress=not args.quiet)
    t = stats["timings_s"]
    if not args.quiet:
        print(f"{args.out}: lung volume {stats['lung_volume_ml']:.0f} mL over {stats['slices']} slices, "
              f"{t['total_s']:.1f} s (inference {t['inference_s']:.1f} s)")
        if "qc" in stats:
            print(qc.verdict_line(stats["qc"]))
    return _qc_exit(stats["qc"]["status"], args.fail_on_qc) if "qc" in stats else 0


BATCH_EPILOG = f"""\
what it does:
  finds every DICOM series under ROOT (any depth, DICOMDIR exports, files without extension, several
  series per folder); localizers and non-CT series are skipped with their reason; of each study the
  series predict would choose is segmented (axial before reformats, originals first, then the
  thinnest and the most slices; --all-series: every CT series; two series equal on every point
  fail the study, as predict refuses them), exactly as
  `predict` would (same reading, model, threshold, post-processing and outputs).

outputs (in OUT):
  FOLDER/                one folder per segmented series, named from its folder relative to ROOT
                         (FOLDER/series-UID where that folder holds several series), holding
                         predict's files ({", ".join(predict.OUTPUT_NAMES)})
  {"cohort.csv":<22} one row per series found: source, series_uid, status (done | failed |
                         skipped), message, output, slices, right/left/lung volume (mL),
                         lungs_touching, qc_status, qc_reasons, seconds, model, ...

Running the same command again skips every series already complete with the same model, settings
and input files; --retry-failed also retries the failed ones. The exit status is 0 only when no
series failed.

where it runs:
  default               a local Dask cluster, one worker process per core (nothing to set up)
  --workers 0           in this process, one series after the other
  --scheduler ADDRESS   an existing Dask cluster (tcp://HOST:8786, or tls://... with the TLS
                        settings of Dask's configuration); workers must reach ROOT and OUT at the
                        same paths and have lungseg installed
  --part K/N            every N-th series starting with the K-th, in this process (job arrays, e.g.
                        SLURM --array=1-N with --part $SLURM_ARRAY_TASK_ID/N)
"""


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="segment every CT series under a folder (a cohort)",
                       description="Segment the lungs of every CT series under ROOT, resumable and in "
                                   "parallel, into one predict-style folder per series plus "
                                   "OUT/cohort.csv.",
                       epilog=BATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="ROOT", help="folder holding the DICOM files, at any depth (only read)")
    p.add_argument("--out", required=True, metavar="OUT", help="output folder (created; not inside ROOT)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a run's model.pt or run folder (default: as predict, see its --help)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local Dask worker processes (default: one per core while memory allows "
                        "1.5 GB each; 0: run in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on the Dask cluster of this scheduler instead of a local one")
    p.add_argument("--part", metavar="K/N", default=None,
                   help="segment only every N-th series starting with the K-th (1 <= K <= N), in this "
                        "process, without Dask")
    p.add_argument("--retry-failed", action="store_true",
                   help="segment again the series that failed in an earlier run")
    p.add_argument("--all-series", action="store_true",
                   help="segment every CT series, not only the thinnest axial series of each study")
    p.add_argument("--threshold", type=float, default=None, metavar="P",
                   help="probability above which a voxel is lung (default: as predict)")
    p.add_argument("--no-postprocess", action="store_const", const=False, default=None, dest="postprocess",
                   help="keep the raw thresholded masks (default: as predict)")
    p.add_argument("--device", default="auto", help="as predict (default %(default)s)")
    p.add_argument("--runtime", choices=predict.RUNTIMES, default="auto",
                   help="what runs the network, as predict (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per inference batch (as predict)")
    p.add_argument("--report", action="store_true",
                   help="then render the cohort report OUT/report.html (notebooks/04_cohort.ipynb)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors and failed series (no progress bar, no summary)")
    p.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from lungseg.inference import batch
    from lungseg.inference.batch import plan

    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.part and args.scheduler:
        raise ValueError("--part runs without Dask: give either --part or --scheduler")
    part = plan.parse_part(args.part) if args.part else None
    choice = predict.choose_model(args.checkpoint)
    if not args.quiet:
        print(f"model: {choice.name} ({choice.reason or choice.source})", file=sys.stderr)
    summary = batch.run(args.root, args.out, choice, workers=args.workers, scheduler=args.scheduler,
                        part=part, retry_failed=args.retry_failed, all_series=args.all_series,
                        threshold=args.threshold, clean=args.postprocess, device=args.device,
                        runtime=args.runtime, batch_size=args.batch_size, progress=not args.quiet)
    for line in summary.lines():
        if not args.quiet or line.startswith(("failed:", "... and")):
            print(line)
    if args.report:
        from lungseg.report import cohort_report

        print(f"report: {cohort_report.render_report(args.out)}")
    return 0 if summary.failed + summary.failed_before == 0 else EXIT_ERROR


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="DICOM series -> .npy volume, or data-set cases -> cache",
                       description="Convert a DICOM folder to a (z, y, x) int16 HU .npy with a .json "
                                   "of its geometry (DICOM_DIR --out FILE.npy), or convert cases of "
                                   "the data set into the cache build/cache (--cases).")
    p.add_argument("dicom_dir", nargs="?", metavar="DICOM_DIR", help="folder with one CT series")
    p.add_argument("--out", metavar="FILE.npy", help="where to write the volume (with DICOM_DIR)")
    p.add_argument("--cases", metavar="IDS", help='"all" or "Case_000,Case_001" (cache mode)')
    p.add_argument("--data", metavar="DIR", help=f"data directory (default ${paths.DATA_ENV} or data/)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace FILE.npy/.json written by an earlier convert (nothing else)")
    _add_series_options(p)
    p.set_defaults(func=_run_convert)


CONVERT_MARK = "lungseg convert"


def _check_convert_out(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an output inside the source folder, and existing files unless ``overwrite`` and the
    .json beside them says convert wrote them."""
    writing.check_not_overlapping(out, [source], "output file")
    sidecar = out.with_suffix(".json")
    existing = [p for p in (out, sidecar) if p.exists() or p.is_symlink()]
    if not existing:
        return
    ours = False
    try:
        ours = json.loads(sidecar.read_text()).get("written_by") == CONVERT_MARK
    except (OSError, ValueError, AttributeError):
        pass
    if not overwrite or not ours or any(not p.is_file() or p.is_symlink() for p in existing):
        raise writing.UnsafeOutputError(
            f"{existing[0]} exists; " + ("pass --overwrite to replace an earlier convert output" if ours
                                         else "it was not written by lungseg convert: choose another --out"))


def _save_npy(volume: Volume, out: Path) -> None:
    """Write HU and geometry, each to a temporary name first, so no half file is left."""
    from lungseg.io.cache import volume_meta  # the cache's own record, so both formats agree

    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**volume_meta(volume), "files": list(volume.files), "written_by": CONVERT_MARK}
    writing.atomic_write(out, lambda f: np.save(f, volume.hu))
    writing.atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=1))


def _run_convert(args: argparse.Namespace) -> int:
    from lungseg.io import cache, dicom

    if (args.dicom_dir is None) == (args.cases is None):
        raise ValueError("give either DICOM_DIR --out FILE.npy, or --cases IDS")
    if args.dicom_dir is not None:
        if not args.out or not args.out.endswith(".npy"):
            raise ValueError("DICOM_DIR needs --out FILE.npy")
        source, out = Path(args.dicom_dir).absolute(), Path(args.out).absolute()
        _check_convert_out(out, source, args.overwrite)
        volume = dicom.load_series(source, args.series, args.recursive)
        _save_npy(volume, out)
        print(f"{args.out}: {volume.shape} HU, spacing {volume.spacing} mm (+ .json)")
        return 0
    for case in cache.load_cases(cache.resolve_cases(args.cases, args.data), args.data):
        print(f"{case.case_id}: {case.volume.shape} cached in {Path(case.volume.hu.filename).parent}")
    return 0


def _add_anonymise(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anonymise", help="de-identified copies of a DICOM series",
                       description="Write de-identified copies of every DICOM file in SRC into DST: "
                                   "the whole DICOM PS3.15 Table E.1-1 basic profile (UIDs and patient "
                                   "sex/age/size/weight retained, dates removed) at every depth, then "
                                   "an allowlist, then a verification of every written file. SRC is "
                                   "only read; copies are named PSEUDONYM_0001.dcm ...")
    p.add_argument("src", metavar="SRC", help="folder with the DICOM files")
    p.add_argument("dst", metavar="DST", help="new or empty output folder (not SRC, inside it, or above it)")
    p.add_argument("--pseudonym", default=None,
                   help="written as PatientName/PatientID (default: SRC's name if it is a case id like "
                        "Case_012, else ANONYMOUS; a folder name may be an MRN, so it is never used)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a DST holding an earlier anonymise output (nothing else)")
    p.add_argument("--recursive", action="store_true", default=None,
                   help="also read subfolders (automatic with a DICOMDIR or only subfolders)")
    p.set_defaults(func=_run_anonymise)


def _run_anonymise(args: argparse.Namespace) -> int:
    from lungseg.io import anonymise

    rep = anonymise.anonymise(args.src, args.dst, args.pseudonym, overwrite=args.overwrite,
                              recursive=args.recursive)
    phi = ", ".join(f"{k} ({n})" for k, n in sorted(rep.phi.items())) or "none"
    actions = ", ".join(f"{k}: {n}" for k, n in sorted(rep.actions.items()))
    print(f"{rep.dst}: {rep.n_files} files as {rep.case_id}_NNNN.dcm; patient PHI found: {phi}")
    print(f"  attributes {actions}; verified {rep.verified_values} values in the copies")
    for line in rep.skipped:
        print(f"  not copied: {line}")
    return 0


def _add_qc(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("qc", help="judge an existing lung mask of a CT (QC verdict, no network)",
                       description="Judge a lung mask that already exists (another tool's, or edited) with "
                                   "lungseg's quality control under the shipped limits. The mask (NIfTI, "
                                   "NRRD or MetaImage; any label above 0 is lung) must lie on the CT's own "
                                   "grid. The confidence checks need the network and are skipped.\n\n"
                                   "exit status: 0 judged; 1 bad input; 3 with --fail-on-qc, when the "
                                   "verdict is at or below that level.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ct", metavar="CT", help="DICOM folder or image file of the CT")
    p.add_argument("mask", metavar="MASK", help="the lung mask file on the CT's grid")
    p.add_argument("--series", metavar="UID", help="the series to judge when CT holds several")
    p.add_argument("--json", metavar="FILE", help="also write the QC record as JSON")
    p.add_argument("--fail-on-qc", choices=("fail", "review"),
                   help="exit 3 when the verdict is this or worse")
    p.set_defaults(func=_qc)


def _qc(args: argparse.Namespace) -> int:
    from lungseg.inference import judge

    record = judge.judge(args.ct, args.mask, args.series)
    print(qc.verdict_line(record))
    print(f"  right lung {record['right_lung_ml']} mL, left lung {record['left_lung_ml']} mL; "
          f"checks skipped without the network: {', '.join(record['skipped_checks'])}")
    if args.json:
        writing.atomic_write_text(Path(args.json), json.dumps(record, indent=1) + "\n")
    return _qc_exit(record["status"], args.fail_on_qc)


def _qc_exit(status: str, fail_on: str | None) -> int:
    """0, or :data:`EXIT_QC` when ``fail_on`` is set and ``status`` is at or below it."""
    if fail_on and qc.STATUSES.index(status) >= qc.STATUSES.index(fail_on):
        return EXIT_QC
    return 0


def _add_module(sub: argparse._SubParsersAction, name: str, module: str, help_text: str) -> None:
    """A subcommand whose options and action live in ``module`` (``add_arguments``, ``command``),
    imported only when the subcommand runs or asks for help: ``predict`` does not pay for Jupyter."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # the base install: no torch, Jupyter or papermill
        p = sub.add_parser(name, help=help_text, add_help=False, prefix_chars="\0")  # takes any words
        p.add_argument("rest", nargs="*")

        def missing(args: argparse.Namespace, exc: ImportError = exc) -> int:
            print(f"{PROG} {name}: needs {exc.name or 'a package'} (not installed): "
                  "pip install 'lungseg[report]'", file=sys.stderr)
            return EXIT_ERROR

        p.set_defaults(func=missing)
        return
    p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    mod.add_arguments(p)
    if hasattr(mod, "command"):  # else its own sub-subcommands set ``func`` (bench)
        p.set_defaults(func=mod.command)


PROJECT_COMMANDS = (
    ("train", "lungseg.train.loop", "train (or resume, or load) the run of a profile, without a notebook"),
    ("report", "lungseg.report.runner", "execute the report's notebooks headless (./run_all.sh calls it)"),
    ("release", "lungseg.report.release", "train the release recipe on every case and write models/"),
    ("calibrate", "lungseg.evaluation.qc_calibrate", "fit the QC limits on the cross-validation folds"),
    ("bench", "lungseg.report.bench", "benchmarks (DICOM reading, training)"),
    ("checked", "lungseg.report.checked", "refresh the notebooks' checked outputs as nbval runs them"),
)
"""Subcommands of the project (a checkout with the data), after the user's commands."""


def _deprecated_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="deprecated: use `report --only 03_eval`")
    p.add_argument("--profile", default=None)
    p.add_argument("--data", metavar="DIR")

    def run(args: argparse.Namespace) -> int:
        from lungseg.report import runner

        warnings.warn("`evaluate` is deprecated and will be removed: use `report --only 03_eval`",
                      DeprecationWarning, stacklevel=1)
        paths.data_dir(args.data)
        return runner.run(args.profile or runner.default_profile(), args.data, only=["03_eval"])

    p.set_defaults(func=run)


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand (a project subcommand's module is imported only when
    ``argv`` names it, or asks for the top-level help)."""
    ap = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(sub)
    _add_batch(sub)
    _add_convert(sub)
    _add_anonymise(sub)
    _add_qc(sub)
    words = set(argv or ())
    for name, module, help_text in PROJECT_COMMANDS:
        if argv is None or name in words:
            _add_module(sub, name, module, help_text)
        else:  # listed in the help; its options are only read when it is the command
            sub.add_parser(name, help=help_text)
    _deprecated_evaluate(sub)
    return ap


def _show_note(message: Warning | str, category: type[Warning], filename: str, lineno: int,
               file: object = None, line: str | None = None) -> None:
    """Warnings of the package as one readable line ("note: ..."), not with source locations."""
    print(f"{PROG}: note: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors print one line on stderr and return 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(argv).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    heap.apply()  # for this process and the kernels and workers it starts
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("always", category=DicomWarning)  # the user must see each note
            warnings.filterwarnings("always", category=predict.SideWarning)
            warnings.filterwarnings("always", category=DeprecationWarning, module=__name__)
            warnings.showwarning = _show_note
            return func(args)
    except USER_ERRORS as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
