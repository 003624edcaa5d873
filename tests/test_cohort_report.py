"""The cohort report of a batch folder (lungseg.report.cohort_report, notebooks/04_cohort.ipynb)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from lungseg.report import cohort_report, plots


def fake_batch(out: Path) -> Path:
    """A batch folder as the batch command writes it: three done series (QC pass, review, fail), one
    failed, one skipped."""
    rows = []
    done = (("s_pass", "pass", [], 2100.0, 1900.0),
            ("s_review", "review", ["the lungs are cut by the top slice"], 1500.0, 1400.0),
            ("s_fail", "fail", ["air measures 24 HU instead of about -1000 HU"], 900.0, 5000.0))
    for name, status, reasons, right, left in done:
        folder = out / name
        folder.mkdir(parents=True)
        (folder / "stats.json").write_text(json.dumps({"qc": {"status": status, "reasons": reasons}}))
        fig = Figure(figsize=(1, 1))
        fig.subplots().plot([0, 1])
        plots.save_figure(fig, folder / "overview.png")
        rows.append({"source": f"/in/{name}", "series_uid": "1.2", "status": "done", "message": "",
                     "output": name, "slices": "100", "right_lung_ml": str(right), "left_lung_ml": str(left),
                     "lung_volume_ml": str(right + left), "lungs_touching": "False", "qc_status": status,
                     "qc_reasons": "; ".join(reasons), "seconds": "8.5", "model": "m"})
    rows.append({**{c: "" for c in cohort_report.COLUMNS}, "source": "/in/broken", "status": "failed",
                 "message": "no DICOM files in /in/broken", "seconds": "0.4"})
    rows.append({**{c: "" for c in cohort_report.COLUMNS}, "source": "/in/scout", "status": "skipped",
                 "message": "a localizer series"})
    with open(out / cohort_report.COHORT_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(cohort_report.COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_tables_put_flagged_series_first_and_list_failures(tmp_path: Path) -> None:
    cohort = cohort_report.load(fake_batch(tmp_path / "out"))
    assert cohort_report.counts(cohort) == {"series": 5, "done": 3, "failed": 1, "skipped": 1, "QC pass": 1,
                                            "QC review": 1, "QC fail": 1}
    assert [r["series"] for r in cohort_report.qc_table(cohort)] == ["s_fail", "s_review", "s_pass"]
    assert [s.name for s in cohort_report.flagged(cohort)] == ["s_fail", "s_review"]
    assert all(s.overview is not None for s in cohort_report.flagged(cohort))
    assert cohort_report.failures_table(cohort) == [
        {"series": "/in/broken", "status": "failed", "message": "no DICOM files in /in/broken"},
        {"series": "/in/scout", "status": "skipped", "message": "a localizer series"}]
    volumes = {(r["series"], r["structure"]): r for r in cohort_report.volume_table(cohort)}
    assert volumes[("all done series", "right lung")]["median mL"] == "1500"
    assert volumes[("QC pass only", "both lungs")]["range mL"] == "4000–4000"
    times = {r["status"]: r for r in cohort_report.time_table(cohort)}
    assert times["done"]["total s"] == "25.5" and times["failed"]["series"] == 1 and "skipped" not in times
    assert isinstance(cohort_report.volume_figure(cohort), Figure)


def test_a_folder_without_cohort_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cohort.csv"):
        cohort_report.load(tmp_path)


def test_render_report_writes_self_contained_html(tmp_path: Path) -> None:
    out = fake_batch(tmp_path / "out")
    html = cohort_report.render_report(out).read_text()
    assert (out / "report.html").is_file()
    assert html.index("s_fail") < html.index("s_pass")  # flagged series first
    assert "air measures 24 HU" in html and "no DICOM files in /in/broken" in html
    assert "data:image/png;base64" in html  # overviews and the figure embedded
    assert "cohort_report.load(" not in html  # inputs hidden


def test_render_report_never_replaces_a_report_html_it_did_not_write(tmp_path: Path) -> None:
    out = fake_batch(tmp_path / "out")
    (out / cohort_report.REPORT_HTML).write_text("my own notes")
    with pytest.raises(FileExistsError, match="not written by lungseg"):
        cohort_report.render_report(out)
    assert (out / cohort_report.REPORT_HTML).read_text() == "my own notes"


def test_demo_sources_are_inputs_batch_plans_as_the_demo_says(tmp_path: Path, real_case: Path) -> None:
    """The demo cohort's inputs (made beside the data, which is only read): a case as a link, the cut
    copy of Case_000 as a study of its own, a localizer batch skips and a damaged series (one file cut
    short, which predict refuses: the demo's failed row)."""
    from lungseg.inference.batch import discover, plan
    from lungseg.io import dicom

    data = real_case.parent.parent
    before = {f.name: f.stat().st_mtime_ns for f in real_case.iterdir()}
    folder = cohort_report.demo_sources(tmp_path / "src", ("Case_000",), str(data))
    scans = [discover.scan_folder(str(folder), rel, names) for rel, names in discover.walk(folder)]
    series, orphans = discover.merge_scans(scans)
    entries = {e.scan.folder: e for e in plan.plan(series)}
    assert set(entries) == {"Case_000", "Case_000_cut_apex", "Case_000_damaged", "scout"}
    assert entries["scout"].status == "skipped" and "localizer" in entries["scout"].reason
    assert {entries[k].status for k in ("Case_000", "Case_000_cut_apex", "Case_000_damaged")} == {"todo"}
    assert entries["Case_000"].scan.uid != entries["Case_000_cut_apex"].scan.uid
    n = len(list(real_case.glob("*.dcm")))
    assert len(entries["Case_000_cut_apex"].scan.files) == n * 4 // 5
    assert not orphans
    with pytest.raises(Exception, match="Case_000_damaged"):
        dicom.load_series(folder / "Case_000_damaged")
    cut = dicom.read_dataset(next((folder / "Case_000_cut_apex").iterdir()), stop_before_pixels=True)
    assert cut.SeriesInstanceUID == entries["Case_000_cut_apex"].scan.uid
    assert {f.name: f.stat().st_mtime_ns for f in real_case.iterdir()} == before
    assert cohort_report.demo_sources(folder, ("Case_000",), str(data)) == folder  # its own: made anew
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="did not write"):
        cohort_report.demo_sources(folder, ("Case_000",), str(data))
    assert (folder / "notes.txt").read_text() == "mine"


def test_demo_cohort_never_replaces_a_folder_that_is_not_a_cohort(tmp_path: Path) -> None:
    """``demo_cohort(out, rebuild=True)`` replaces a cohort folder only: a folder of someone's files
    (no cohort table) is refused before anything is removed or a model is loaded."""
    from lungseg.io import writing

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(writing.UnsafeOutputError, match="not a cohort folder"):
        cohort_report.demo_cohort(out, checkpoint="unused", rebuild=True)
    assert (out / "notes.txt").read_text() == "mine"
