"""The cohort report of a batch output folder: ``notebooks/04_cohort.ipynb`` rendered to ``OUT/report.html``.

A batch folder (``python -m lungseg batch ROOT --out OUT``) holds ``OUT/cohort.csv`` -- one row per
series: source, series_uid, status (done | failed | skipped), message, output (its folder, relative to
OUT), slices, right_lung_ml, left_lung_ml, lung_volume_ml, lungs_touching, qc_status, qc_reasons,
seconds, model -- and, for each done series, predict's files in its folder (``stats.json``,
``overview.png``, ...). :func:`load` reads both; the tables and figures below are what the notebook
shows; :func:`render_report` executes the notebook with papermill and writes it as HTML (inputs
hidden, images embedded) to ``OUT/report.html``. :func:`demo_cohort` makes a small real cohort for the
notebook's own default and its test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lungseg import paths
from lungseg.inference import batch
from lungseg.io import writing
from lungseg.report import execute

COHORT_CSV = batch.COHORT
REPORT_HTML = "report.html"
MARK = "<!-- written by lungseg.report.cohort_report -->"
"""In the head of every report.html it writes: another file of that name is never replaced."""
NOTEBOOK = paths.ROOT / "notebooks" / "04_cohort.ipynb"
COLUMNS = batch.COLUMNS
"""cohort.csv's columns: the one definition is :data:`lungseg.inference.batch.COLUMNS`."""
NUMBERS = ("slices", "right_lung_ml", "left_lung_ml", "lung_volume_ml", "seconds")
QC_ORDER = {"fail": 0, "review": 1, "pass": 2, "": 3}
QC_COLOURS = {"fail": "tab:red", "review": "tab:orange", "pass": "tab:green", "": "tab:grey"}
DEMO = "build/quick/cohort-demo"
"""Where :func:`demo_cohort` builds its cohort (under the build folder); its inputs lie beside it."""
DEMO_SOURCES = "demo-cohort-sources"
"""The marker's tool name of the demo's input folder (:func:`demo_sources`)."""


@dataclass
class Series:
    """One row of cohort.csv with what its output folder adds (for done series)."""

    row: dict
    stats: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def name(self) -> str:
        return self.row.get("output") or Path(self.row.get("source", "?")).name

    @property
    def status(self) -> str:
        return self.row.get("status", "")

    @property
    def qc_status(self) -> str:
        return (self.stats.get("qc") or {}).get("status") or self.row.get("qc_status") or ""

    @property
    def qc_reasons(self) -> list[str]:
        if self.stats.get("qc"):
            return list(self.stats["qc"].get("reasons", []))
        text = self.row.get("qc_reasons") or ""
        return [r.strip() for r in text.split(";") if r.strip()]

    @property
    def overview(self) -> Path | None:
        p = self.folder / "overview.png" if self.folder else None
        return p if p is not None and p.is_file() else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def load(out_dir: str | os.PathLike[str]) -> list[Series]:
    """The series of a batch folder: cohort.csv's rows (numbers parsed), each with its stats.json."""
    out = Path(out_dir)
    table = out / COHORT_CSV
    if not table.is_file():
        raise FileNotFoundError(f"no {COHORT_CSV} in {out}: not a batch output folder")
    rows = batch.read_rows(table)
    series = []
    for row in rows:
        for key in NUMBERS:
            row[key] = _number(row.get(key))
        folder = out / row["output"] if row.get("output") else None
        stats_file = folder / "stats.json" if folder else None
        stats = json.loads(stats_file.read_text()) if stats_file and stats_file.is_file() else {}
        series.append(Series(row, stats, folder))
    return series


def counts(cohort: Sequence[Series]) -> dict[str, int]:
    """Series per batch status and, for done series, per QC verdict."""
    out = {"series": len(cohort)}
    for s in (batch.DONE, batch.FAILED, batch.SKIPPED):
        out[s] = sum(c.status == s for c in cohort)
    for v in ("pass", "review", "fail"):
        out[f"QC {v}"] = sum(c.status == "done" and c.qc_status == v for c in cohort)
    return out


def done(cohort: Sequence[Series]) -> list[Series]:
    return [c for c in cohort if c.status == "done"]


def volume_table(cohort: Sequence[Series]) -> list[dict]:
    """Median and range of the right, left and total lung volume (mL) over the done series, and over
    those QC passed."""
    rows = []
    for label, sel in (("all done series", done(cohort)),
                       ("QC pass only", [c for c in done(cohort) if c.qc_status == "pass"])):
        for key, name in (("right_lung_ml", "right lung"), ("left_lung_ml", "left lung"),
                          ("lung_volume_ml", "both lungs")):
            v = np.asarray([c.row[key] for c in sel if c.row.get(key) is not None], dtype=float)
            rows.append({"series": label, "structure": name, "n": int(v.size),
                         "median mL": f"{np.median(v):.0f}" if v.size else "–",
                         "range mL": f"{v.min():.0f}–{v.max():.0f}" if v.size else "–"})
    return rows


def volume_figure(cohort: Sequence[Series]) -> Figure:
    """Right, left and total lung volume of every done series (one point each, coloured by QC
    verdict), with the median marked."""
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    keys = (("right_lung_ml", "right lung"), ("left_lung_ml", "left lung"), ("lung_volume_ml", "both lungs"))
    rng = np.random.default_rng(0)  # jitter only, fixed so the figure is the same on every run
    for i, (key, _) in enumerate(keys):
        values = [(c.row[key], c.qc_status) for c in done(cohort) if c.row.get(key) is not None]
        for verdict, colour in QC_COLOURS.items():
            y = [v for v, q in values if q == verdict]
            if y:
                ax.scatter(i + rng.uniform(-0.15, 0.15, len(y)), y, s=22, color=colour,
                           label=f"QC {verdict or 'none'}")
        if values:
            ax.hlines(np.median([v for v, _ in values]), i - 0.3, i + 0.3, color="k", lw=1.5)
    ax.set_xticks(range(len(keys)), [name for _, name in keys])
    ax.set_ylabel("volume (mL)")
    ax.set_title("Lung volumes per series (black: median)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per verdict
    if unique:
        ax.legend(unique.values(), unique.keys(), frameon=False, fontsize="small")
    return fig


def qc_table(cohort: Sequence[Series]) -> list[dict]:
    """Done series, flagged first (fail, then review, then pass), with their reasons and volumes."""
    sel = sorted(done(cohort), key=lambda c: (QC_ORDER.get(c.qc_status, 3), c.name))
    return [{"series": c.name, "QC": c.qc_status or "–", "reasons": "; ".join(c.qc_reasons) or "–",
             "right mL": _fmt(c.row.get("right_lung_ml")), "left mL": _fmt(c.row.get("left_lung_ml")),
             "slices": _fmt(c.row.get("slices"))} for c in sel]


def flagged(cohort: Sequence[Series]) -> list[Series]:
    """Done series QC did not pass, worst first."""
    return [c for c in sorted(done(cohort), key=lambda c: (QC_ORDER.get(c.qc_status, 3), c.name))
            if c.qc_status in ("fail", "review")]


def overviews(cohort: Sequence[Series], cap: int) -> list[Series]:
    """The done series whose overview the report shows: every flagged one (worst first), then the
    others in name order until ``cap`` series in all."""
    shown = flagged(cohort)
    rest = [c for c in sorted(done(cohort), key=lambda c: c.name) if c not in shown]
    return [c for c in shown + rest[:max(0, cap - len(shown))] if c.overview is not None]


def failures_table(cohort: Sequence[Series]) -> list[dict]:
    """Failed and skipped series with their messages."""
    return [{"series": c.row.get("source", ""), "status": c.status, "message": c.row.get("message", "")}
            for c in cohort if c.status in ("failed", "skipped")]


def time_table(cohort: Sequence[Series]) -> list[dict]:
    """Seconds per batch status: series, total, median and slowest."""
    rows = []
    for status in ("done", "failed", "skipped"):
        t = np.asarray([c.row["seconds"] for c in cohort if c.status == status and c.row.get("seconds")
                        is not None], dtype=float)
        if t.size:
            rows.append({"status": status, "series": int(t.size), "total s": f"{t.sum():.1f}",
                         "median s": f"{np.median(t):.1f}", "slowest s": f"{t.max():.1f}"})
    return rows


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


# ---- rendering ----------------------------------------------------------------------------------

def render_report(out_dir: str | os.PathLike[str], kernel: str | None = None) -> Path:
    """Execute 04_cohort for the batch folder ``out_dir`` (papermill) and write it as HTML, inputs
    hidden and images embedded, to ``out_dir/report.html`` (atomically); return that path.
    ``kernel`` None: the project's kernel "lungseg" when registered, else this Python's "python3"."""
    import nbformat
    from jupyter_client.kernelspec import find_kernel_specs
    from nbconvert import HTMLExporter

    out = Path(out_dir).absolute()
    load(out)  # a clear error before a kernel starts
    target = out / REPORT_HTML
    if target.exists() and MARK not in target.read_text(errors="replace")[:1000]:
        raise FileExistsError(f"{target} exists and was not written by lungseg: not replaced")
    if kernel is None:
        kernel = "lungseg" if "lungseg" in find_kernel_specs() else "python3"
    with tempfile.TemporaryDirectory(prefix="lungseg-report-") as tmp:
        executed = Path(tmp) / NOTEBOOK.name
        execute.execute(NOTEBOOK, executed, {"out_dir": str(out)}, kernel, NOTEBOOK.parent)
        body, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                               exclude_output_prompt=True).from_notebook_node(nbformat.read(executed, 4))
    head, sep, rest = body.partition("\n")  # the mark after the doctype line: no quirks mode
    return writing.atomic_write_text(target, head + sep + MARK + "\n" + rest)


# ---- a small real cohort ------------------------------------------------------------------------

def demo_cohort(out_dir: str | os.PathLike[str] = DEMO, checkpoint: str | os.PathLike[str] | None = None,
                cases: Sequence[str] = ("Case_000", "Case_005"), data: str | None = None,
                rebuild: bool = False) -> Path:
    """A cohort made by the batch command (in this process) from a small folder of real inputs
    (:func:`demo_sources`): the given cases, Case_000 with its top fifth of slices removed (a cut apex,
    for QC to flag), a damaged series (failed) and a localizer (skipped). ``checkpoint``: the model
    (default: the quick profile's held-out run, else batch's default). Kept and reused unless
    ``rebuild``."""
    from lungseg.inference.batch import command
    from lungseg.network import runs, selection

    out = paths.resolve(out_dir)
    if (out / COHORT_CSV).is_file() and not rebuild:
        return out
    if checkpoint is None:
        try:
            checkpoint = selection.default_run("quick")
        except runs.RunNotFoundError:
            checkpoint = None  # batch's own default
    if out.is_dir() and any(out.iterdir()) and not (out / COHORT_CSV).is_file():
        # Only a cohort folder (batch's output, with its table) is ever replaced: never a user's files.
        raise writing.UnsafeOutputError(f"{out} holds files but no {COHORT_CSV}: not a cohort folder made by "
                                        "batch; refusing to replace it (choose another folder)")
    shutil.rmtree(out, ignore_errors=True)
    sources = demo_sources(out.with_name(out.name + "-sources"), cases, data)
    command.run(sources, out, checkpoint, workers=0, progress=False)
    return out


def demo_sources(folder: Path, cases: Sequence[str], data: str | None = None) -> Path:
    """``folder`` (made anew; refused when it holds anything this function did not write) holding
    links to the ``cases``' image files and three inputs made from Case_000, each a new study: its
    lower four fifths (a cut apex), one of its images as a localizer, and ten of its slices with one
    file cut short (damaged). The data set is only read."""
    from lungseg.io import derive

    writing.check_replaceable(folder, True, DEMO_SOURCES)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    images = paths.data_dir(data) / "Images"
    for c in cases:  # a link per file (the marker lists files; the sources stay where they are)
        (folder / c).mkdir()
        for f in sorted((images / c).iterdir()):
            (folder / c / f.name).symlink_to(f)
    files = sorted((images / "Case_000").glob("*.dcm"), key=_z)
    derive.copy_as_series(files[:len(files) * 4 // 5], folder / "Case_000_cut_apex")
    derive.copy_as_series(files[len(files) // 2:len(files) // 2 + 1], folder / "scout",
                          {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    middle = len(files) // 2
    damaged = folder / "Case_000_damaged"
    derive.copy_as_series(files[middle - 5:middle + 5], damaged)
    cut_short = sorted(damaged.iterdir())[4]  # one image's pixel data cut short: the series fails
    cut_short.write_bytes(cut_short.read_bytes()[:cut_short.stat().st_size // 2])
    writing.write_marker(folder, DEMO_SOURCES)
    return folder


def _z(f: Path) -> float:
    from lungseg.io import dicom

    return float(dicom.read_dataset(f, stop_before_pixels=True).ImagePositionPatient[2])
