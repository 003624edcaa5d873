"""The series rule (lungseg.io.series): one answer for predict/convert (dicom.load_series) and batch."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from synthetic import edit, write_series

from lungseg.inference.batch import discover, plan
from lungseg.io import dicom, series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def facts(uid: str, **kw: object) -> series.SeriesFacts:
    base = {"modality": "CT", "images": 100, "orientation": AXIAL, "thickness": 2.0}
    return series.SeriesFacts(uid=uid, **{**base, **kw})  # type: ignore[arg-type]


def test_axial_original_beats_a_larger_coronal_reformat_and_thinner_beats_thicker() -> None:
    axial = facts("a", images=80)
    mpr = facts("m", images=400, orientation=CORONAL, derived=True, thickness=1.0)
    assert series.choose([mpr, axial]) is axial
    thin = facts("t", images=60, thickness=1.0)
    assert series.choose([axial, thin]) is thin
    derived_axial = facts("d", derived=True, thickness=0.5, images=500)
    assert series.choose([derived_axial, axial]) is axial  # an original before any reformat
    more = facts("z", images=120)
    assert series.choose([axial, more]) is more


def test_a_tie_is_refused_and_non_volumes_are_named() -> None:
    with pytest.raises(series.AmbiguousSeries, match="series a .* and series b"):
        series.choose([facts("a"), facts("b")])
    assert "not CT" in series.not_a_volume(facts("x", modality="MR"))
    assert "localizer" in series.not_a_volume(facts("x", localizer=True))
    assert "2 slice(s)" in series.not_a_volume(facts("x", images=2))
    assert series.not_a_volume(facts("x")) == ""
    assert series.is_derived(["DERIVED\\SECONDARY\\MPR"])
    assert not series.is_derived(["ORIGINAL\\PRIMARY\\AXIAL"])


def _study_with_mpr(folder: Path) -> tuple[str, str]:
    """An axial original (6 slices) and a coronal MPR of the same study with more images (10)."""
    axial = write_series(folder, n=6, names=[f"ax{i}.dcm" for i in range(6)])
    mpr = write_series(folder, n=10, names=[f"cor{i}.dcm" for i in range(10)])
    first = pydicom.dcmread(axial[0])
    for i, path in enumerate(mpr):
        edit(path, StudyInstanceUID=first.StudyInstanceUID, ImageOrientationPatient=list(CORONAL),
             ImagePositionPatient=[-20.0, -40.0 + 2.0 * i, 0.0], ImageType=["DERIVED", "SECONDARY", "MPR"])
    return first.SeriesInstanceUID, pydicom.dcmread(mpr[0]).SeriesInstanceUID


def test_predict_and_batch_choose_the_same_series(tmp_path: Path) -> None:
    axial_uid, mpr_uid = _study_with_mpr(tmp_path / "study")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = dicom.load_series(tmp_path / "study")
    assert volume.series_uid == axial_uid and volume.shape[0] == 6
    assert any(axial_uid in str(w.message) and series.RULE in str(w.message) for w in caught)
    names = sorted(p.name for p in (tmp_path / "study").iterdir())
    scan = discover.scan_folder(str(tmp_path), "study", names)
    entries = plan.plan(scan.series)
    todo = [e.scan.uid for e in entries if e.status == "todo"]
    assert todo == [axial_uid]
    skipped = next(e for e in entries if e.scan.uid == mpr_uid)
    assert axial_uid in skipped.reason and series.RULE in skipped.reason


def test_a_tie_is_refused_by_predict_and_failed_by_batch(tmp_path: Path) -> None:
    # Two axial originals of one study, equal on every point of the rule: predict refuses the folder,
    # and batch must not quietly skip both (exit 0 with nothing segmented): the study fails, with why.
    a = write_series(tmp_path / "study", n=6, names=[f"a{i}.dcm" for i in range(6)])
    b = write_series(tmp_path / "study", n=6, names=[f"b{i}.dcm" for i in range(6)])
    study = pydicom.dcmread(a[0]).StudyInstanceUID
    for path in b:
        edit(path, StudyInstanceUID=study)
    with pytest.raises(dicom.DicomSeriesError, match="no single best CT series"):
        dicom.load_series(tmp_path / "study")
    names = sorted(p.name for p in (tmp_path / "study").iterdir())
    entries = plan.plan(discover.scan_folder(str(tmp_path), "study", names).series)
    assert [e.status for e in entries] == ["failed", "failed"]
    assert all("no single best series" in e.reason and "--all-series" in e.reason for e in entries)
    assert [e.status for e in plan.plan(discover.scan_folder(str(tmp_path), "study", names).series,
                                        all_series=True)] == ["todo", "todo"]


def test_a_volume_too_small_to_be_a_chest_ct_is_named() -> None:
    assert "2 slice(s)" in series.too_small((2, 512, 512))
    assert "4x4 pixels" in series.too_small((40, 4, 4))
    assert series.too_small((3, series.MIN_PIXELS, 512)) == ""
