"""The released model (models/): weights that match their card, a card generated from the run, and
``predict`` using it on a build folder with no report run (a fresh clone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungseg import cli, paths
from lungseg.evaluation import metrics
from lungseg.inference import predict, sides
from lungseg.io import cache, writing
from lungseg.network import runs, selection
from lungseg.report import release

RELEASED = selection.RELEASED
needs_release = pytest.mark.skipif(not (RELEASED / runs.WEIGHTS).is_file(),
                                   reason=f"no released model in {RELEASED}")


@needs_release
def test_released_weights_match_the_checksum_of_run_json_and_the_card() -> None:
    manifest = runs.read_manifest(RELEASED)
    digest = writing.sha256_file(RELEASED / runs.WEIGHTS)
    assert manifest["release"]["weights_sha256"] == digest
    assert manifest["release"]["weights_bytes"] == (RELEASED / runs.WEIGHTS).stat().st_size
    assert f"SHA-256 `{digest}`" in (RELEASED / release.CARD).read_text()


@needs_release
def test_card_is_generated_from_run_json_and_names_licence_and_settings() -> None:
    manifest = runs.read_manifest(RELEASED)
    card = (RELEASED / release.CARD).read_text()
    assert card == release.model_card(manifest)  # never edited by hand
    assert "Creative Commons Attribution 3.0" in card and "10.7937/K9/TCIA.2017.3r3fvz08" in card
    assert manifest["config"]["split"] == "all" and len(manifest["config"]["cases"]) == 12
    inf = manifest["inference"]
    assert 0 < inf["threshold"] < 1 and f"Threshold **{inf['threshold']}**" in card
    cv = manifest["release"]["expected_accuracy"]["per_structure"]
    assert f"{cv['both lungs']['dice']['mean']:.4f}" in card
    assert set(manifest["data"]["case_keys"]) == set(manifest["config"]["cases"])


def test_model_card_renders_from_a_manifest_alone(tmp_path: Path) -> None:
    """Known values through the generator, without the committed files."""
    per = {"dice": {"mean": 0.9, "sd": 0.01, "min": 0.8, "max": 0.95},
           "hd95_mm": {"mean": 3.0, "sd": 1.0, "min": 1.0, "max": 5.0},
           "msd_mm": {"mean": 1.0, "sd": 0.1, "min": 0.5, "max": 1.5}, "patients": 12,
           "worst_case": {"case": "Case_011", "dice": 0.8, "hd95_mm": 5.0, "msd_mm": 1.5}}
    manifest = {
        "config": {"cases": ["Case_000"], "image_size": 160, "split": "all"},
        "code": {"lungseg_version": "0", "git_commit": "abc", "training_code_sha256": "def"},
        "provenance": {"machine": "m", "torch": "t", "device": "cpu"}, "train_wall_s": 12.3,
        "preprocessing": {"input_mode": "window", "hu_window": [-1024.0, 600.0], "image_size": 160,
                          "full_size": 512},
        "inference": {"threshold": 0.7, "postprocess": True, "chosen_on": "x"},
        "data": {"case_keys": {"Case_000": "k0"}},
        "release": {"name": "n", "made_by": "cmd", "profile": "cpu", "released": "d", "source_run": "r",
                    "weights_sha256": "0" * 64, "weights_bytes": 1000,
                    "tuning": {"threshold_study": [{"threshold": 0.7, "mean volume Dice": 0.98}],
                               "postprocess_study": [{"post-processing": "none", "mean HD95 mm": 9.0}]},
                    "expected_accuracy": {"source": "s", "report_commit": "c", "report_profile": "cpu",
                                          "folds": 3, "per_structure": {"both lungs": per}},
                    "licence": release.LICENCE, "attribution": release.LCTSC_ATTRIBUTION}}
    card = release.model_card(manifest)
    assert "Threshold **0.7**, post-processing **on**" in card
    assert "0.9000 ± 0.0100 [0.8000–0.9500]" in card and "Case_011 (0.8000)" in card
    assert "training took 12 s" in card and "| Case_000 | k0 |" in card


def test_expected_accuracy_needs_a_report_summary(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no report summary"):
        release.expected_accuracy(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text(json.dumps({"per_patient": []}))
    with pytest.raises(ValueError, match="no cross-validation"):
        release.expected_accuracy(tmp_path / "summary.json")


CASE = "Case_005"


@needs_release
@pytest.mark.realdata
def test_predict_on_a_fresh_build_uses_the_released_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The default whatever was trained locally (a newer report is recorded, and not taken)."""
    data = paths.data_dir()
    if not paths.images_dir(data, CASE).is_dir():
        pytest.skip(f"needs {CASE}")
    monkeypatch.setattr(runs, "RUNS", tmp_path / "runs")
    (tmp_path / "runs" / "reports").mkdir(parents=True)
    (tmp_path / "runs" / "reports" / "quick.json").write_text(json.dumps(
        {"profile": "quick", "written": 1e12, "main": "cases", "smoke": True, "runs": {}, "folds": []}))
    out = tmp_path / "out"
    assert cli.main(["predict", str(paths.images_dir(data, CASE)), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"model: {RELEASED.name}" in err and "--checkpoint report" in err
    stats = json.loads((out / predict.STATS_NAME).read_text())
    assert stats["model"]["source"] == "released" and stats["model"]["name"] == RELEASED.name
    assert stats["model"]["path"] == "models/" + RELEASED.name
    manifest = runs.read_manifest(RELEASED)
    assert stats["threshold"] == manifest["inference"]["threshold"]
    # A sanity check, not an accuracy claim (the released model trained on this patient; its
    # expected accuracy is the cross-validation in its card): a lung mask, not a body mask.
    import nibabel as nib

    labels = np.asarray(nib.load(out / predict.NIFTI_NAME).dataobj).transpose(2, 1, 0)
    truth = np.asarray(cache.load_case(CASE).mask, dtype=bool)
    assert metrics.volume_dice(labels > 0, truth) > 0.95
    assert set(np.unique(labels)) == {0, sides.RIGHT, sides.LEFT}


def test_released_manifest_is_strict_json_without_machine_paths() -> None:
    """run.json is read by any JSON parser (no NaN for the test loss a run on every case lacks) and
    names no folder of the machine it was made on."""
    text = (RELEASED / runs.MANIFEST).read_text()

    def no_constant(name: str) -> None:
        raise AssertionError(f"{name} in the released run.json is not JSON")

    json.loads(text, parse_constant=no_constant)
    assert str(paths.ROOT) not in text and str(Path.home()) not in text
    assert "dir" not in json.loads(text)["data"]
