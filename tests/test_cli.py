"""``python -m lungseg``: predict on synthetic series (NIfTI geometry, DICOM SEG, atomic output),
the wrapper subcommands, and ``--help`` of each."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from builders import (
    DZ,
    REAL_CASE,
    REFERENCE_WEIGHTS,
    median_threshold,
    run_cli,
    tilt_series,
    write_checkpoint,
)
from synthetic import DEFAULT_PIXEL_SPACING, PHI, write_case, write_series

from lungseg import cli, paths
from lungseg.inference import postprocess, predict
from lungseg.io import dicom, export, overlay, rtstruct, writing
from lungseg.network import runs, selection
from lungseg.report import runner
from lungseg.train import loop

TINY_SIZE = 16  # synthetic slices are 16x16; the UNet needs H, W divisible by 2**3
N_SLICES = 6
SUBCOMMANDS = ("predict", "batch", "convert", "anonymise", "qc", "train", "report", "release", "calibrate",
               "bench", "checked", "evaluate")


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "run" / "model.pt")


@pytest.fixture
def series(tmp_path: Path) -> Path:
    folder = tmp_path / "in" / "Case_900"
    write_series(folder, n=N_SLICES, dz=DZ, shuffle=True)
    return folder


def sha256_tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def seg_pixels(path: Path, volume: dicom.Volume) -> np.ndarray:
    """The SEG as (z, y, x): bool for one segment, else labels (segment number per voxel), frames
    matched to the volume's slices by SOPInstanceUID."""
    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.files]
    numbers = [d.SegmentNumber for d in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers).astype(bool)
    if len(numbers) == 1:
        return pixels[..., 0]
    return (pixels * np.asarray(numbers, dtype=np.uint8)).max(axis=-1)


# ---- NIfTI geometry ---------------------------------------------------------------------------


def test_nifti_affine_maps_voxel_to_image_position_in_ras(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", n=N_SLICES, dz=DZ, shuffle=True)
    row, col = tilt_series(files)
    vol = dicom.load_series(tmp_path / "s")
    affine = export.nifti_affine(vol)
    dy, dx = DEFAULT_PIXEL_SPACING
    for k, j, i in [(0, 0, 0), (N_SLICES - 1, 0, 0), (2, 5, 0), (3, 0, 7), (N_SLICES - 1, 15, 15)]:
        ipp = np.asarray(pydicom.dcmread(files[k]).ImagePositionPatient, dtype=float)  # slice k
        lps = ipp + j * dy * col + i * dx * row
        ras = lps * [-1.0, -1.0, 1.0]
        np.testing.assert_allclose(affine @ [i, j, k, 1.0], [*ras, 1.0], atol=1e-4)


def test_nifti_file_reloads_with_shape_affine_and_axis_order(tmp_path: Path, series: Path) -> None:
    vol = dicom.load_series(series)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[1, 2, 9] = mask[4, 12, 3] = True
    out = export.write_nifti(mask, vol, tmp_path / "m.nii.gz")
    img = nib.load(out)
    assert img.shape == (16, 16, N_SLICES)
    np.testing.assert_allclose(img.affine, export.nifti_affine(vol), atol=1e-5)
    assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == export.NIFTI_XFORM_SCANNER
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8 and data[9, 2, 1] == 1 and data[3, 12, 4] == 1 and data.sum() == 2
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # standard axial CT seen from RAS


# ---- DICOM SEG --------------------------------------------------------------------------------

def test_seg_reads_back_with_frames_codes_and_reference(tmp_path: Path, series: Path) -> None:
    vol = dicom.load_series(series)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[1:4, 3:9, 2:12] = True
    mask[2, 0, 0] = False
    out = export.write_seg(mask, vol, tmp_path / "m.seg.dcm")
    seg = hd.seg.segread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.NumberOfFrames == 3  # empty slices are omitted
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_uid
    assert seg.FrameOfReferenceUID == pydicom.dcmread(vol.files[0]).FrameOfReferenceUID
    desc = seg.SegmentSequence[0]
    assert desc.SegmentLabel == "Lung"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # SCT Lung
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    np.testing.assert_array_equal(seg_pixels(out, vol), mask)


# ---- predict ----------------------------------------------------------------------------------

def test_quiet_predict_prints_nothing_and_still_writes(tmp_path: Path, series: Path, ckpt: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    assert run_cli("predict", series, "--out", tmp_path / "out", "--checkpoint", ckpt, "--quiet") == 0
    out, err = capfd.readouterr()
    assert out == "" and all(": note: " in line for line in err.splitlines())  # notes stay: they warn
    assert (tmp_path / "out" / predict.STATS_NAME).is_file()


def test_predict_writes_consistent_outputs(tmp_path: Path, series: Path, ckpt: Path) -> None:
    p, logits = median_threshold(series, ckpt)
    out = tmp_path / "out"
    assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt, "--threshold", p,
                   "--no-postprocess", "--batch-size", "4", "--runtime", "torch") == 0
    assert sorted(f.name for f in out.iterdir()) == sorted([*predict.OUTPUT_NAMES, writing.MARKER])
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temp left
    vol = dicom.load_series(series)
    labels = np.asarray(nib.load(out / predict.NIFTI_NAME).dataobj).transpose(2, 1, 0)
    mask = labels > 0
    np.testing.assert_array_equal(mask, postprocess.binarize(logits, p))
    assert 0 < mask.sum() < mask.size and set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_array_equal(seg_pixels(out / predict.SEG_NAME, vol), labels)
    structures = rtstruct.read_rtstruct(out / predict.RTSTRUCT_NAME, vol)
    np.testing.assert_array_equal(rtstruct.labels_from_structures(structures), labels)
    stats = json.loads((out / predict.STATS_NAME).read_text())
    assert stats["slices"] == N_SLICES and stats["postprocess"] is False
    assert stats["threshold"] == pytest.approx(p) and stats["checkpoint"] == str(ckpt)
    assert stats["lung_volume_ml"] == pytest.approx(mask.sum() * DZ * 0.75 * 0.8 / 1000)
    assert stats["right_lung_ml"] + stats["left_lung_ml"] == pytest.approx(stats["lung_volume_ml"])
    assert {"read_dicom_s", "inference_s", "seg_s", "total_s"} <= set(stats["timings_s"])
    assert (out / predict.OVERVIEW_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shuffled_and_sorted_file_names_give_identical_outputs(tmp_path: Path, ckpt: Path) -> None:
    uid = pydicom.uid.generate_uid()
    masks, affines = [], []
    for shuffle in (True, False):
        folder = tmp_path / f"shuffle{shuffle}" / "Case_900"
        write_series(folder, n=N_SLICES, dz=DZ, shuffle=shuffle, series_uid=uid)
        if shuffle:
            p, _ = median_threshold(folder, ckpt)
        out = tmp_path / f"out{shuffle}"
        assert run_cli("predict", folder, "--out", out, "--checkpoint", ckpt, "--threshold", p) == 0
        img = nib.load(out / predict.NIFTI_NAME)
        masks.append(np.asarray(img.dataobj))
        affines.append(img.affine)
        masks.append(seg_pixels(out / predict.SEG_NAME, dicom.load_series(folder)))
    assert 0 < masks[0].sum() < masks[0].size
    np.testing.assert_array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(masks[1], masks[3])
    np.testing.assert_array_equal(affines[0], affines[1])


def test_missing_checkpoint_leaves_no_output_and_input_unchanged(
        tmp_path: Path, series: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sha256_tree(series)
    out = tmp_path / "results" / "out"
    assert run_cli("predict", series, "--out", out, "--checkpoint", tmp_path / "none.pt") == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert not out.exists() and not out.parent.exists()
    assert sha256_tree(series) == before


@pytest.mark.filterwarnings("ignore::lungseg.inference.predict.SideWarning")  # a synthetic blob: one part
def test_failed_export_leaves_no_partial_output(tmp_path: Path, series: Path, ckpt: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(overlay, "write_overview", boom)
    with pytest.raises(OSError, match="disk full"):
        predict.predict(series, tmp_path / "out", ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "run"]


def test_out_dir_is_replaced_only_with_overwrite_and_only_when_ours(
        tmp_path: Path, series: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt) == 0
    assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt) == 1
    assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt, "--overwrite") == 0
    (out / "notes.txt").write_text("mine")
    assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt, "--overwrite") == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert run_cli("predict", series, "--out", series / "pred", "--checkpoint", ckpt) == 1


def test_a_guessed_side_is_a_note_on_the_command_line(tmp_path: Path, series: Path, ckpt: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("predict", series, "--out", tmp_path / "o", "--checkpoint", ckpt) == 0
    stats = json.loads((tmp_path / "o" / predict.STATS_NAME).read_text())
    err = capsys.readouterr().err
    assert stats["side_split_method"] == "single"  # this synthetic model predicts one blob
    assert "note: Case_900: the predicted lungs form one part" in err and "check the labels" in err


def test_missing_input_folder_is_a_clear_error(tmp_path: Path, ckpt: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("predict", tmp_path / "nope", "--out", tmp_path / "o", "--checkpoint", ckpt) == 1
    assert "DICOM folder not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _fake_run(folder: Path, name: str, steps: int = 0) -> SimpleNamespace:
    (folder / name).mkdir(parents=True)
    (folder / name / "model.pt").write_bytes(b"")
    return SimpleNamespace(run_dir=folder / name, config=SimpleNamespace(max_steps_per_epoch=steps))


def test_the_default_is_the_released_model_and_report_runs_are_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(selection, "RELEASED", tmp_path / "models" / "none")
    monkeypatch.delenv(selection.PROFILE_ENV, raising=False)  # the tests' own 03_eval setting
    with pytest.raises(predict.PredictError, match="no released model"):
        predict.default_checkpoint()
    with pytest.raises(predict.PredictError, match="run ./run_all.sh first or pass --checkpoint"):
        predict.choose_model("report")
    released = _fake_run(tmp_path / "models", "rel").run_dir
    monkeypatch.setattr(selection, "RELEASED", released)
    cpu = {"cases": _fake_run(tmp_path, "a"), "slices": _fake_run(tmp_path, "b")}
    selection.record_profile_runs("cpu", cpu, [], "cases", "figures")
    # One model every time: a local report does not change the default.
    choice = predict.choose_model()
    assert (choice.path, choice.source) == (released, "released") and "--checkpoint report" in choice.reason
    assert predict.choose_model("report").path == tmp_path / "a"
    assert predict.choose_model("report").source == "report"
    time.sleep(0.01)
    paper = {"slices": _fake_run(tmp_path, "c"), "cases": _fake_run(tmp_path, "d")}
    selection.record_profile_runs("paper", paper, [], "slices", "figures")
    assert predict.choose_model("report").path == tmp_path / "d"  # latest report, its held-out run
    assert selection.default_run("cpu") == tmp_path / "a"
    # A newer smoke-test report (capped epochs, as the quick profile and the tests train) is never
    # chosen: the latest real report stays, and the reason names what was skipped.
    time.sleep(0.01)
    quick = {"cases": _fake_run(tmp_path, "e", steps=4), "slices": _fake_run(tmp_path, "f", steps=4)}
    selection.record_profile_runs("quick", quick, [], "cases", "build/quick")
    choice = predict.choose_model("report")
    assert choice.path == tmp_path / "d" and "skipped: quick" in choice.reason
    # Only smoke reports: no report run to take, said with what was skipped.
    for name in ("cpu", "paper"):
        (tmp_path / "runs" / "reports" / f"{name}.json").unlink()
    with pytest.raises(predict.PredictError, match="skipped: quick"):
        predict.choose_model("report")
    # A record from before the smoke flag is judged by its main run's manifest.
    rec = json.loads((tmp_path / "runs" / "reports" / "quick.json").read_text())
    del rec["smoke"]
    (tmp_path / "e" / "run.json").write_text(json.dumps({"config": {"max_steps_per_epoch": 4}}))
    assert selection.is_smoke(rec)
    # The latest report names a profile without a held-out run, or one not finished: clear errors.
    selection.record_profile_runs("paper", {"slices": _fake_run(tmp_path, "g")}, [], "slices", "figures")
    with pytest.raises(runs.RunNotFoundError, match="trained no cases-split run"):
        selection.default_run()
    selection.record_profile_runs("cpu", cpu, [], "cases", "figures")
    (tmp_path / "a" / "model.pt").unlink()  # recorded but not finished
    with pytest.raises(runs.RunNotFoundError, match="not finished"):
        selection.default_run("cpu")


def test_checkpoint_given_is_recorded_as_given(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "r").run_dir
    choice = predict.choose_model(run)
    assert (choice.source, choice.name, choice.path) == ("given", "r", run)
    assert choice.record()["reason"] == "named with --checkpoint"


# ---- the other subcommands --------------------------------------------------------------------

def test_convert_writes_npy_and_geometry(tmp_path: Path, series: Path) -> None:
    out = tmp_path / "vol" / "ct.npy"
    assert run_cli("convert", series, "--out", out) == 0
    vol = dicom.load_series(series)
    np.testing.assert_array_equal(np.load(out), vol.hu)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["spacing"] == list(vol.spacing) and meta["files"] == list(vol.files)
    assert run_cli("convert", series) == 1  # needs --out


def test_convert_cases_fills_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "cache"))
    write_case(tmp_path / "data", "Case_900", n=3)
    assert run_cli("convert", "--cases", "all", "--data", tmp_path / "data") == 0
    assert len(list((tmp_path / "cache" / "Case_900").glob("*/hu.npy"))) == 1


def test_anonymise_wrapper_removes_phi(tmp_path: Path) -> None:
    src = tmp_path / "Case_901"
    write_series(src, n=2, phi=True)
    assert run_cli("anonymise", src, tmp_path / "anon") == 0
    copies = sorted((tmp_path / "anon").glob("*.dcm"))
    assert [f.name for f in copies] == ["Case_901_0001.dcm", "Case_901_0002.dcm"]
    for f in copies:
        ds = pydicom.dcmread(f)
        assert ds.PatientName == "Case_901" and "PatientBirthTime" not in ds
        assert PHI["PatientName"] not in str(ds)


@pytest.mark.parametrize(("argv", "notebooks"), [(("report", "--only", "02_train"), ["02_train"]),
                                                  (("evaluate",), ["03_eval"])])
def test_notebook_commands_call_report_run(argv: tuple[str, ...], notebooks: list[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    calls = []
    monkeypatch.setattr(runner, "run", lambda *a, **k: calls.append((a, k)) or 0)
    if argv[0] == "evaluate":  # deprecated: warned, then the same call as report --only 03_eval
        assert run_cli(*argv, "--profile", "quick", "--data", tmp_path) == 0
        assert "deprecated" in capsys.readouterr().err  # one "note:" line
        assert calls == [(("quick", str(tmp_path)), {"only": notebooks})]
    else:
        assert run_cli(*argv, "--profile", "quick", "--data", tmp_path) == 0
        assert calls == [(("quick", str(tmp_path), notebooks, runner.KERNEL, False), {})]


def test_module_aliases_are_the_one_command_line() -> None:
    """``python -m lungseg.train`` and ``python -m lungseg.report`` are the subcommands, not other tools."""
    for module, command in (("lungseg.train", "train"), ("lungseg.report", "report")):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and f"usage: python -m lungseg {command}" in out.stdout, out.stderr


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand_exits_0(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: python -m lungseg" in capsys.readouterr().out


def test_module_entry_point_help() -> None:
    out = subprocess.run([sys.executable, "-m", "lungseg", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(c in out.stdout for c in SUBCOMMANDS)


# ---- real data (optional) ---------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.skipif(not REAL_CASE.is_dir(), reason=f"needs {REAL_CASE}")
def test_predict_on_a_real_case_with_a_tiny_model(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=64)
    before = {f.name: f.stat().st_mtime_ns for f in REAL_CASE.iterdir()}
    out = tmp_path / "out"
    assert run_cli("predict", REAL_CASE, "--out", out, "--checkpoint", ckpt, "--threshold", "0.5") == 0
    vol = dicom.load_series(REAL_CASE)
    img = nib.load(out / predict.NIFTI_NAME)
    assert img.shape == vol.shape[::-1]
    first = pydicom.dcmread(vol.files[0], stop_before_pixels=True)
    ras = np.asarray(first.ImagePositionPatient, dtype=float) * [-1, -1, 1]
    np.testing.assert_allclose(img.affine[:3, 3], ras, atol=1e-4)
    seg = hd.seg.segread(out / predict.SEG_NAME)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_uid
    assert seg.PatientID == first.PatientID
    assert {f.name: f.stat().st_mtime_ns for f in REAL_CASE.iterdir()} == before
    # No input path or folder name (often an MRN) in stats.json unless asked for
    text = (out / predict.STATS_NAME).read_text()
    assert str(REAL_CASE) not in text and REAL_CASE.name not in text
    assert json.loads(text)["input_id"] == predict.input_id(vol)
    named = tmp_path / "named"
    assert run_cli("predict", REAL_CASE, "--out", named, "--checkpoint", ckpt, "--record-input") == 0
    assert json.loads((named / predict.STATS_NAME).read_text())["input"] == str(REAL_CASE)


def test_inference_settings_follow_the_runs_choice(tmp_path: Path) -> None:
    ckpt = tmp_path / "run" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    assert predict.inference_settings(ckpt, None, None) == (postprocess.DEFAULT_THRESHOLD, True)
    runs.write_manifest(ckpt.parent, {"key": "k", "inference": {"threshold": 0.55, "postprocess": True}})
    assert predict.inference_settings(ckpt, None, None) == (0.55, True)  # released model, older runs
    manifest = (ckpt.parent / runs.MANIFEST).read_bytes()
    runs.save_inference(ckpt.parent, 0.7, False, "the training patients")
    assert (ckpt.parent / runs.MANIFEST).read_bytes() == manifest  # run.json is never rewritten
    assert predict.inference_settings(ckpt, None, None) == (0.7, False)
    assert predict.inference_settings(ckpt, 0.4, True) == (0.4, True)  # explicit options win


def test_run_folders_are_readable_and_found_by_key(tmp_path: Path) -> None:
    key = "0123456789abcdef"
    cfg = loop.TrainConfig(split="cases", kfold=3, fold=1, profile="cpu")
    assert runs.run_folder(tmp_path, cfg, key) == tmp_path / "cpu-cases-fold1-01234567"
    plain = loop.TrainConfig(split="slices")
    assert runs.run_folder(tmp_path, plain, key) == tmp_path / "run-slices-01234567"
    (tmp_path / key).mkdir()  # the old layout: still found
    assert runs.run_folder(tmp_path, cfg, key) == tmp_path / key
    (tmp_path / "quick-cases-01234567").mkdir()  # any profile's folder of the same key
    runs.write_manifest(tmp_path / "quick-cases-01234567", {"key": key})
    assert runs.run_folder(tmp_path, cfg, key) == tmp_path / "quick-cases-01234567"
    runs.write_manifest(tmp_path / "quick-cases-01234567", {"key": "01234567ffffffff"})  # prefix clash
    assert runs.run_folder(tmp_path, cfg, key) == tmp_path / key


# ---- left and right lungs on a real case (the course's reference weights) ----------------------

REAL_SLICES = slice(50, 80)  # 30 slices through both lungs of Case_000


@pytest.mark.realdata
def test_predict_on_a_real_case_labels_the_patients_right_lung_1(tmp_path: Path) -> None:
    """As an outside check would: labels 1/2 through the NIfTI affine, ROIs Lung_R/Lung_L whose
    contours reference the CT's instances and rasterise back to the labels, per-lung SEG."""
    if not REAL_CASE.is_dir() or not REFERENCE_WEIGHTS.is_file():
        pytest.skip("Case_000 or the course's reference weights are absent")
    files = dicom.load_series(REAL_CASE).files[REAL_SLICES]
    series = tmp_path / "Case_000"
    series.mkdir()
    for f in files:
        (series / Path(f).name).write_bytes(Path(f).read_bytes())
    out = tmp_path / "out"
    assert run_cli("predict", series, "--out", out, "--checkpoint", REFERENCE_WEIGHTS) == 0
    img = nib.load(out / predict.NIFTI_NAME)
    labels = np.asarray(img.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2}
    ijk = {v: np.argwhere(labels == v).mean(axis=0) for v in (1, 2)}
    ras_x = {v: (img.affine @ [*ijk[v], 1.0])[0] for v in (1, 2)}
    assert ras_x[1] > ras_x[2]  # RAS x grows towards the patient's right
    vol = dicom.load_series(series)
    ct_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in vol.files}
    rs = pydicom.dcmread(out / predict.RTSTRUCT_NAME)
    assert rs.Modality == "RTSTRUCT"
    assert sorted(r.ROIName for r in rs.StructureSetROISequence) == ["Lung_L", "Lung_R"]
    refs = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
            for roi in rs.ROIContourSequence for c in roi.ContourSequence}
    assert refs and refs <= ct_uids
    zyx = labels.transpose(2, 1, 0)
    back = rtstruct.labels_from_structures(rtstruct.read_rtstruct(out / predict.RTSTRUCT_NAME, vol))
    for v in (1, 2):
        dice = 2 * np.sum((back == v) & (zyx == v)) / (np.sum(back == v) + np.sum(zyx == v))
        assert dice >= 0.98, (v, dice)
    np.testing.assert_array_equal(seg_pixels(out / predict.SEG_NAME, vol), zyx)


def test_a_script_without_the_main_guard_gets_a_clear_error(tmp_path) -> None:
    """Workers are spawned and import the calling script again: an unguarded script is told what to
    do instead of seeing a broken pool."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("import math\nfrom lungseg.io import parallel\n"
                      "print(parallel.map_cases(math.sqrt, [1.0, 4.0], 'demo', workers=2))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert 'demo: a worker process stopped' in out.stderr and '__name__ == "__main__"' in out.stderr
    guarded = tmp_path / "guarded.py"
    guarded.write_text("import math\nfrom lungseg.io import parallel\nif __name__ == '__main__':\n"
                       "    print(parallel.map_cases(math.sqrt, [1.0, 4.0], 'demo', workers=2))\n")
    out = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[1.0, 2.0]", out.stderr[-2000:]
