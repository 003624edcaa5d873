"""``python -m lungseg batch``: a hospital-like tree (nesting, a DICOMDIR file set, a scout beside a
CT, a PET series, several reconstructions of one study, a coronal MPR, a truncated file, non-DICOM
files), resumption after ``kill -9``, ``--part``, and a real Dask cluster on 127.0.0.1 (a scheduler
and two worker processes started and stopped here by their process ids) with a worker killed
mid-run.

The series are small synthetic ones (16 x 16 pixels) and the model an untrained tiny UNet: what is
checked is the bookkeeping and that every mask equals a lone ``predict`` of the series' folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from builders import image_of, write_checkpoint
from corpus import ORIENTATIONS, write_oriented
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid
from synthetic import edit, write_series

from lungseg import cli, paths
from lungseg.inference import batch, predict
from lungseg.inference.batch import discover, plan, table
from lungseg.io import dicom, writing

TIMEOUT_S = 120


# ---- the tree -----------------------------------------------------------------------------------

def _edit_all(files: list[Path], **attributes: object) -> list[Path]:
    for f in files:
        edit(f, **attributes)
    return files


def _dicomdir_export(root: Path, staging: Path) -> None:
    """A DICOMDIR file set written by pydicom: ``root/DICOMDIR`` and ``PT*/ST*/SE*/IM*`` files
    without extension."""
    fs = FileSet()
    for f in write_series(staging, n=5, dz=2.0):
        ds = pydicom.dcmread(f)
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20200101", "120000", "1", 1
        fs.add(ds)
    fs.write(root)


def hospital_tree(root: Path, staging: Path) -> dict[str, str]:
    """Write the tree; returns the series UIDs of some CT series by name, and the file cut short."""
    uids: dict[str, str] = {}
    study = generate_uid()
    thick = write_series(root / "P001" / "ST1" / "SE_AX3", n=6, dz=3.0)
    thin = write_series(root / "P001" / "ST1" / "SE_AX1", n=10, dz=1.5, z0=-119.0)
    for files in (thick, thin):
        _edit_all(files, StudyInstanceUID=study)
    uids["thin"] = pydicom.dcmread(thin[0]).SeriesInstanceUID
    uids["thick"] = pydicom.dcmread(thick[0]).SeriesInstanceUID
    _dicomdir_export(root / "P002", staging / "dicomdir")
    ct = write_series(root / "P003" / "mixed", n=6, names=[f"ct{i}.dcm" for i in range(6)])
    pet = write_series(root / "P003" / "mixed", n=4, names=[f"pt{i}.dcm" for i in range(4)])
    _edit_all(pet, Modality="PT")
    uids["mixed"] = pydicom.dcmread(ct[0]).SeriesInstanceUID
    write_series(root / "P004" / "scan", n=6, names=[f"CT{i:04d}" for i in range(6)])  # no extension
    scout = write_series(root / "P004" / "scan", n=1, names=["scout"], z0=200.0)
    _edit_all(scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    broken = write_series(root / "P005" / "broken", n=6)
    broken[3].write_bytes(broken[3].read_bytes()[:-200])  # truncated in its pixel data
    cut = write_series(root / "P007" / "header", n=6)
    cut[-1].write_bytes(cut[-1].read_bytes()[:400])  # the last slice cut inside its header
    uids["cut file"] = cut[-1].name
    r, c = np.mgrid[0:12, 0:16]
    phantom = np.where((np.abs(c - 8) < 5) & (np.abs(r - 6) < 4), -850, 40).astype(np.int16)
    write_oriented(root / "P006" / "coronal", np.stack([phantom] * 8), (2.5, 1.5, 0.7), (-20.0, -30.0, 100.0),
                   ORIENTATIONS["coronal"])
    (root / "notes.txt").write_text("export of 2024-01-01\n")
    (root / "P001" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (root / "P004" / "scan" / "report.pdf").write_bytes(b"%PDF-1.4\n")
    return uids


def tree_checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cohort(out: Path) -> dict[str, dict[str, str]]:
    """Rows of OUT/cohort.csv by source (the series UID added where a folder has several)."""
    rows = list(csv.DictReader((out / batch.COHORT).open(encoding="utf-8")))
    by = {}
    for r in rows:
        shared = sum(x["source"] == r["source"] for x in rows) > 1
        by[f"{r['source']}#{r['series_uid']}" if shared else r["source"]] = r
    return by


def stats_mtimes(out: Path) -> dict[str, int]:
    return {p.parent.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob(predict.STATS_NAME)}


def leftovers(out: Path) -> list[str]:
    """Temporary files or folders left in OUT (batch's own names, or any hidden name but markers)."""
    return [p.relative_to(out).as_posix() for p in out.rglob(".*") if p.name != writing.MARKER]


def nifti(folder: Path) -> nib.Nifti1Image:
    return nib.load(folder / predict.NIFTI_NAME)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("run") / "model.pt", image_size=16)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    uids = hospital_tree(tmp_path / "export", tmp_path / "staging")
    return tmp_path / "export", uids


def run_batch(*args: object) -> int:
    """``lungseg batch ARGS`` in this process (its progress bars on stderr, its summary on stdout)."""
    return cli.main(["batch", *(str(a) for a in args)])


# ---- in process ---------------------------------------------------------------------------------

def test_a_hospital_tree_is_segmented_series_by_series(tree: tuple[Path, dict[str, str]], ckpt: Path,
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root, uids = tree
    before = tree_checksums(root)
    out = tmp_path / "out"
    assert run_batch(root, "--out", out, "--checkpoint", ckpt, "--workers", "0") == 1  # one series failed
    err = capsys.readouterr().err
    assert "Traceback" not in err
    rows = cohort(out)
    status = {k: r["status"] for k, r in rows.items()}
    mixed_ct = f"P003/mixed#{uids['mixed']}"
    assert status["P001/ST1/SE_AX1"] == "done" and status["P001/ST1/SE_AX3"] == "skipped"
    assert "P001/ST1/SE_AX1" in rows["P001/ST1/SE_AX3"]["message"]  # names the series chosen
    assert status[mixed_ct] == "done"
    others = [r["status"] for k, r in rows.items() if k.startswith("P003/mixed#") and k != mixed_ct]
    assert others == ["skipped"]
    assert any("Modality PT, not CT" in r["message"] for r in rows.values())
    assert status["P002/PT000000/ST000000/SE000000"] == "done"  # the DICOMDIR file set
    scan = {k: r for k, r in rows.items() if k.startswith("P004/scan")}
    assert sorted(r["status"] for r in scan.values()) == ["done", "skipped"]
    assert any("localizer" in r["message"] for r in scan.values())
    assert status["P006/coronal"] == "done" and rows["P006/coronal"]["plane"] == "coronal"
    assert status["P005/broken"] == "failed" and "truncated pixel data" in rows["P005/broken"]["message"]
    assert status["P007/header"] == "failed" and uids["cut file"] in rows["P007/header"]["message"]
    assert len(rows) == 10 and not any("notes" in k or "Thumbs" in k for k in rows)  # non-DICOM ignored
    assert rows[mixed_ct]["output"] == f"P003/mixed/series-{uids['mixed']}"
    # Every mask is the one a lone predict of the folder gives (same reading, model, threshold, files).
    for key, r in rows.items():
        if r["status"] != "done":
            continue
        lone = tmp_path / "lone" / key.replace("/", "_").replace("#", "_")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its notes on the sides and the non-DICOM file
            predict.predict(root / r["source"], lone, ckpt, series_uid=r["series_uid"])
        a, b = nifti(out / r["output"]), nifti(lone)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj), err_msg=key)
        np.testing.assert_array_equal(a.affine, b.affine)
        assert sorted(p.name for p in (out / r["output"]).iterdir()) == sorted(
            p.name for p in lone.iterdir())  # exactly predict's files
        assert r["model"] and float(r["seconds"]) > 0 and int(r["slices"]) > 0
        verdict = json.loads((out / r["output"] / "stats.json").read_text())["qc"]
        assert r["qc_status"] == verdict["status"] in ("pass", "review", "fail")
        assert r["qc_reasons"] == "; ".join(verdict["reasons"])
    assert set(tree_checksums(root).items()) == set(before.items()) and tree_checksums(root) == before
    assert leftovers(out) == []

    # A rerun recomputes nothing; the failure stays failed (and the exit status says so) ...
    written = stats_mtimes(out)
    assert run_batch(root, "--out", out, "--checkpoint", ckpt, "--workers", "0", "--report") == 1
    printed = capsys.readouterr().out
    assert "5 already done" in printed and stats_mtimes(out) == written
    assert run_batch(root, "--out", out, "--checkpoint", ckpt, "--workers", "0", "--quiet") == 1
    quiet = capsys.readouterr()
    assert quiet.out.splitlines() == [line for line in printed.splitlines() if line.startswith("failed:")]
    html = (out / "report.html").read_text()  # the cohort report (04_cohort) of this folder
    assert f"report: {out / 'report.html'}" in printed and "P005/broken" in html
    assert cohort(out) == rows
    # ... until the series is repaired and --retry-failed given.
    broken = root / "P005" / "broken"
    write_series(broken, n=6, series_uid=rows["P005/broken"]["series_uid"])  # the same series, whole
    assert run_batch(root, "--out", out, "--checkpoint", ckpt, "--workers", "0") == 1  # not retried
    assert run_batch(root, "--out", out, "--checkpoint", ckpt, "--workers", "0", "--retry-failed") == 1
    assert cohort(out)["P005/broken"]["status"] == "done" and stats_mtimes(out).items() >= written.items()


def test_another_model_recomputes_and_parts_share_the_work(tree: tuple[Path, dict[str, str]],
                                                           ckpt: Path, tmp_path: Path) -> None:
    root, _ = tree
    out = tmp_path / "out"
    assert run_batch(root, "--out", out, "--checkpoint", ckpt, "--part", "1/2", "--all-series") in (0, 1)
    first = stats_mtimes(out)
    rows = cohort(out)
    assert 0 < len(first) < 6  # this part's share only
    assert {r["status"] for r in rows.values()} <= {"done", "failed", "skipped"}
    assert run_batch(root, "--out", out, "--checkpoint", ckpt, "--part", "2/2", "--all-series") == 1
    both = stats_mtimes(out)
    assert len(both) == 6 and all(both[k] == v for k, v in first.items())  # all CT series, each once
    statuses = sorted(r["status"] for r in cohort(out).values())
    assert statuses == ["done"] * 6 + ["failed"] * 2 + ["skipped"] * 2  # 8 CT series, 2 broken
    other = write_checkpoint(tmp_path / "other" / "model.pt", image_size=16, seed=1)
    assert run_batch(root, "--out", out, "--checkpoint", other, "--workers", "0", "--all-series") in (0, 1)
    assert all(stats_mtimes(out)[k] != v for k, v in both.items())  # another model: every series again
    assert {r["model"] for r in cohort(out).values() if r["status"] == "done"} == {"other"}


def test_bad_roots_and_outputs_are_one_line_errors(tree: tuple[Path, dict[str, str]], ckpt: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = tree
    before = tree_checksums(root)
    o = tmp_path / "o"
    for args in ([tmp_path / "nope", "--out", o], [root, "--out", root / "P001" / "out"],
                 [root, "--out", o, "--part", "3/2"], [root, "--out", o, "--part", "x"]):
        assert run_batch(*args, "--checkpoint", ckpt) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) <= 2 and "error:" in err[-1] and "Traceback" not in "".join(err), err
    assert tree_checksums(root) == before


def test_output_names_never_nest_and_show_only_the_source_path() -> None:
    def scan(folder: str, uid: str) -> discover.SeriesScan:
        return discover.SeriesScan(folder, uid, "s", "CT", True, False, (1, 0, 0, 0, 1, 0), 1.0, 1.0, ["a"],
                                   "k")

    names = plan.output_names([scan("a", "1"), scan("a/b", "2"), scan("c", "3"), scan("c", "4"),
                                scan(".", "5")])
    assert names == {("a", "1"): "a/series-1", ("a/b", "2"): "a/b", ("c", "3"): "c/series-3",
                     ("c", "4"): "c/series-4", (".", "5"): "series-5"}


# ---- kill -9 and a real Dask cluster ---------------------------------------------------------------

def _many_series(root: Path, n: int) -> None:
    for i in range(n):
        write_series(root / f"patient{i:02d}" / "ct", n=12, rows=32, cols=32, dz=2.0)


def _wait_for_done(out: Path, proc: subprocess.Popen, at_least: int = 1) -> int:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read()[-2000:] if proc.stderr else ""
            pytest.fail(f"batch ended before it could be interrupted (rc {proc.returncode}): {err}")
        try:
            done = sum(r["status"] == "done" for r in csv.DictReader((out / batch.COHORT).open()))
        except (OSError, KeyError):
            done = 0
        if done >= at_least:
            return done
        time.sleep(0.02)
    pytest.fail("no series finished in time")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(paths.ROOT), "OMP_NUM_THREADS": "1"}


def _batch_cmd(root: Path, out: Path, ckpt: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lungseg", "batch", str(root), "--out", str(out), "--checkpoint", str(ckpt),
            *args]


def test_kill_9_then_rerun_finishes_without_recomputing(tmp_path: Path, ckpt: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _many_series(root, 14)
    before = tree_checksums(root)
    proc = subprocess.Popen(_batch_cmd(root, out, ckpt, "--workers", "0"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_done(out, proc, 2)
        time.sleep(0.15)  # somewhere inside the next series
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = stats_mtimes(out)
    assert 2 <= len(finished) < 14
    for folder in finished:  # no half-written series folder under its real name
        marker = json.loads((out / folder / writing.MARKER).read_text())
        assert table.is_complete(out / folder, marker["batch"])
    visible = {p.parent.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
               and not any(part.startswith(".") for part in p.relative_to(out).parts)} - {"."}
    assert visible <= set(finished)
    rerun = subprocess.run(_batch_cmd(root, out, ckpt, "--workers", "0"), env=_env(), capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr
    assert f"{len(finished)} already done" in rerun.stdout
    after = stats_mtimes(out)
    assert len(after) == 14 and all(after[k] == v for k, v in finished.items())  # not recomputed
    assert leftovers(out) == [] and tree_checksums(root) == before
    assert sum(r["status"] == "done" for r in cohort(out).values()) == 14


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A scheduler and two single-threaded worker processes (no nanny: each pid is the worker) on
    127.0.0.1, stopped by their process ids."""
    scheduler_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline, address = time.monotonic() + TIMEOUT_S, None
        while address is None and time.monotonic() < deadline:  # the file appears before its content
            time.sleep(0.1)
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                pass
        assert address, "the scheduler did not start"
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
                 "--local-directory", str(tmp_path / f"w{i}")],
                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=TIMEOUT_S) as client:
            client.wait_for_workers(2, timeout=TIMEOUT_S)
        yield address, procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_a_dask_cluster_loses_a_worker_and_still_writes_every_series_once(
        tmp_path: Path, ckpt: Path, dask_cluster: tuple[str, list[subprocess.Popen]]) -> None:
    address, procs = dask_cluster
    root, out = tmp_path / "in", tmp_path / "out"
    _many_series(root, 12)
    before = tree_checksums(root)
    proc = subprocess.Popen(_batch_cmd(root, out, ckpt, "--scheduler", address), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from distributed import Client

    try:
        _wait_for_done(out, proc, 1)
        with Client(address, timeout=TIMEOUT_S) as client:  # a worker dies while it segments a series
            busy = [a for a, keys in client.processing().items() if keys]
            name = client.scheduler_info()["workers"][busy[0]]["name"]
            os.kill(procs[1 + int(str(name)[1:])].pid, signal.SIGKILL)
        finished_at_kill = stats_mtimes(out)
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert "on the Dask cluster at" in stdout
    after = stats_mtimes(out)
    assert len(after) == 12 and all(after[k] == v for k, v in finished_at_kill.items())
    rows = cohort(out)
    assert len(rows) == 12 and {r["status"] for r in rows.values()} == {"done"}
    assert leftovers(out) == [] and tree_checksums(root) == before
    # The same masks as a run in this process.
    local = tmp_path / "local"
    assert run_batch(root, "--out", local, "--checkpoint", ckpt, "--workers", "0") == 0
    for r in rows.values():
        np.testing.assert_array_equal(np.asarray(nifti(out / r["output"]).dataobj),
                                      np.asarray(nifti(local / r["output"]).dataobj))


def test_the_default_local_cluster_gives_the_masks_of_one_process(tmp_path: Path, ckpt: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    _many_series(root, 4)
    run = subprocess.run(_batch_cmd(root, out, ckpt, "--workers", "2"), env=_env(), capture_output=True,
                         text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "warn" not in run.stderr.lower(), run.stderr  # no unexplained warning
    assert "on a local Dask cluster of 2 worker processes" in run.stdout
    assert run_batch(root, "--out", tmp_path / "one", "--checkpoint", ckpt, "--workers", "0") == 0
    for r in cohort(out).values():
        assert r["status"] == "done"
        np.testing.assert_array_equal(np.asarray(nifti(out / r["output"]).dataobj),
                                      np.asarray(nifti(tmp_path / "one" / r["output"]).dataobj))


def test_image_files_beside_dicom_series_are_segmented_and_said_so(tmp_path: Path, ckpt: Path) -> None:
    """A NIfTI export beside its DICOM series, an NRRD in a folder of its own and a label map given as
    a CT: the files are found, segmented on their own grid (the NIfTI's mask is the DICOM series'),
    cohort.csv says which input is which, the label map fails with its reason, a rerun reuses all."""
    root, out = tmp_path / "export", tmp_path / "out"
    write_series(root / "P010" / "ct", n=6, intercept=-2048.0)  # HU about -1000: air, as in a CT
    vol = dicom.load_series(root / "P010" / "ct")
    sitk.WriteImage(image_of(vol), str(root / "P010" / "ct.nii.gz"))
    (root / "P011").mkdir()
    sitk.WriteImage(image_of(vol, "reversed"), str(root / "P011" / "scan.nrrd"))
    (root / "P012").mkdir()
    sitk.WriteImage(image_of(replace(vol, hu=(np.asarray(vol.hu) > -500).astype(np.int16))),
                    str(root / "P012" / "labels.nii.gz"))
    before = tree_checksums(root)
    assert run_batch(root, "--out", out, "--checkpoint", ckpt) == 1  # the label map failed
    rows = cohort(out)
    dcm, nii, nrrd, bad = rows["P010/ct"], rows["P010/ct.nii.gz"], rows["P011/scan.nrrd"], rows[
        "P012/labels.nii.gz"]
    assert (dcm["input"], nii["input"], nrrd["input"], bad["input"]) == ("dicom", "nifti", "nrrd", "nifti")
    assert dcm["status"] == nii["status"] == nrrd["status"] == batch.DONE and nii["series_uid"] == ""
    assert bad["status"] == batch.FAILED
    assert "label map" in bad["message"] and "labels.nii.gz" in bad["message"]
    assert nii["output"] == "P010/ct-nifti" and nrrd["output"] == "P011"
    assert (out / "P011" / "lung_mask.nrrd").is_file() and not (out / "P011" / predict.SEG_NAME).exists()
    np.testing.assert_array_equal(np.asarray(nifti(out / dcm["output"]).dataobj),
                                  np.asarray(nifti(out / nii["output"]).dataobj))
    assert tree_checksums(root) == before  # the input is only read
    mtimes = stats_mtimes(out)
    assert run_batch(root, "--out", out, "--checkpoint", ckpt) == 1
    assert stats_mtimes(out) == mtimes  # finished files are not recomputed
