"""Quality control of masks (lungseg.inference.qc), the failures made from cases
(lungseg.evaluation.failures) and the
calibration's protocol (lungseg.evaluation.qc_calibrate): known answers on a phantom, then on a real case."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli, write_checkpoint
from synthetic import write_series

from lungseg import cli, paths
from lungseg.evaluation import failures, qc_calibrate
from lungseg.inference import qc, qc_scores, sides
from lungseg.io import dicom

SPACING = (5.0, 3.9, 3.9)  # (dz, dy, dx) mm: a 500 mm field of view on 128 pixels
SHAPE = (48, 128, 128)


def phantom(seed: int = 0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(HU int16, lung mask bool), z y x: air, an elliptic body of soft tissue (40 HU), two
    ellipsoid lungs (-850 HU) from slice ~10 to ~38, noise 15 HU. ``scale`` sizes the lungs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]].astype(np.float32)
    body = ((y - 64) / 40) ** 2 + ((x - 64) / 55) ** 2 <= 1
    lungs = np.zeros(SHAPE, dtype=bool)
    for cx in (64 - 24, 64 + 24):
        lungs |= (((z - 24) / (14 * scale)) ** 2 + ((y - 62) / (24 * scale)) ** 2
                  + ((x - cx) / (15 * scale)) ** 2 <= 1)
    hu = np.where(body, 40.0, -1000.0)
    hu[lungs] = -850.0
    hu += rng.normal(0, 15, SHAPE)
    return np.clip(hu, -1024, 3071).astype(np.int16), lungs


def labels_of(mask: np.ndarray) -> np.ndarray:
    """1 = the lung on the image's left (the patient's right in a standard axial image), 2 = the other."""
    out = mask.astype(np.uint8)
    out[:, :, SHAPE[2] // 2:] *= 2
    return out


def scores_of(hu: np.ndarray, mask: np.ndarray) -> dict:
    logits = np.where(mask, 6.0, -6.0).astype(np.float32)
    return qc_scores.measure(hu, SPACING, logits, mask, labels_of(mask), 0.5)


@pytest.fixture(scope="module")
def rule() -> dict:
    """Limits fitted on four sound phantoms (other noise, lungs 95-105 % in size)."""
    return qc.fit([scores_of(*phantom(seed, scale)) for seed, scale in
                   ((1, 0.95), (2, 1.0), (3, 1.05), (4, 1.0))])


# ---- the scores, known answers ------------------------------------------------------------------

def test_scores_of_a_plausible_phantom() -> None:
    hu, mask = phantom()
    s = scores_of(hu, mask)
    assert s["bottom_cut_share"] == s["top_cut_share"] == 0.0
    assert s["edge_slice_share"] == s["open_slice_share"] == 0.0
    assert s["air_hu"] == pytest.approx(-1000, abs=40)
    assert s["tissue_hu"] == pytest.approx(40, abs=10)
    assert s["noise_hu"] == pytest.approx(15, rel=0.2)
    voxel_ml = np.prod(SPACING) / 1000
    assert s["lung_ml"] == pytest.approx(mask.sum() * voxel_ml)
    assert s["right_ml"] + s["left_ml"] == pytest.approx(s["lung_ml"])
    assert s["side_balance"] == pytest.approx(1.0, abs=0.02)
    assert s["mask_mean_hu"] == pytest.approx(-850, abs=5)
    assert s["stray_share"] == 0.0 and s["uncertain_share"] == 0.0


def test_uncertain_share_counts_doubt_near_the_lungs_not_far_air() -> None:
    """Known answers, per lung voxel on the SUBSAMPLE grid: doubt (logit 0) over the lungs of one
    slice counts; the same amount over the air of a slice 50 mm from the lungs (an airway, outside
    air) does not; over soft tissue that far it does."""
    hu, mask = phantom()
    sub = (slice(None, None, qc_scores.SUBSAMPLE),) * 3
    lung_voxels = np.count_nonzero(mask[sub])
    logits = np.where(mask, 6.0, -6.0).astype(np.float32)
    in_lungs = logits.copy()
    in_lungs[24][mask[24]] = 0.0  # slice 24 is subsampled slice 12
    doubt = np.count_nonzero(mask[sub][12])
    assert qc_scores.uncertain_share(in_lungs, mask, hu, SPACING) == pytest.approx(doubt / lung_voxels)
    far = logits.copy()
    far[0][mask[24]] = 0.0  # the same pixels on slice 0, 50 mm below the lungs' first slice
    far_hu = hu.copy()
    far_hu[0] = -1000.0  # air there
    assert qc_scores.uncertain_share(far, mask, far_hu, SPACING) == 0.0
    far_hu[0] = 40.0  # soft tissue there
    assert qc_scores.uncertain_share(far, mask, far_hu, SPACING) == pytest.approx(doubt / lung_voxels)
    assert qc_scores.uncertain_share(far, np.zeros_like(mask), far_hu, SPACING) is None


def test_coverage_of_a_mask_cut_by_the_first_slice_and_by_the_image_edge() -> None:
    mask = np.zeros((4, 10, 10), dtype=bool)
    mask[0:3, 3:7, 3:7] = True  # widest slice 16 pixels; slice 0 holds all 16
    mask[1, 4, 0:2] = True  # slice 1 reaches the left image edge
    hu = np.where(mask, -850, 40).astype(np.int16)
    hu[:, 0, :] = hu[:, -1, :] = hu[:, :, 0] = hu[:, :, -1] = -1000  # air all round the body
    s = qc_scores.coverage_scores(mask, hu)
    assert s["bottom_cut_share"] == pytest.approx(16 / 18) and s["top_cut_share"] == 0.0
    assert s["edge_slice_share"] == pytest.approx(1 / 3)
    assert s["open_slice_share"] == pytest.approx(1 / 3)  # only slice 1's lung reaches the outside air


def test_a_lung_cut_by_a_reconstruction_circle_runs_into_the_padding() -> None:
    hu, mask = phantom()
    yy, xx = np.mgrid[0:SHAPE[1], 0:SHAPE[2]]
    inside = (yy - 64) ** 2 + (xx - 80) ** 2 <= 45 ** 2  # cuts the lung on the image's left
    for fill in (-3024, -1000):
        cut = np.where(inside, hu, fill).astype(np.int16)
        s = qc_scores.coverage_scores(mask & inside, cut)
        assert s["edge_slice_share"] == 0.0 and s["open_slice_share"] > 0.5, fill


def test_a_bite_out_of_one_lungs_back_shows_in_the_gap_and_the_solidity() -> None:
    _, mask = phantom()
    labels = labels_of(mask)
    assert qc_scores.posterior_gap(labels, SPACING) == 0.0  # mirror-image lungs
    solid = qc_scores.anatomy_scores(np.zeros(SHAPE, np.int16), mask, labels, SPACING)["solidity_balance"]
    assert solid == pytest.approx(1.0, abs=0.02)
    zyx = np.moveaxis(np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]], 0, -1)
    ball = (((zyx - (24, 80, 40)) * SPACING) ** 2).sum(axis=-1) <= 40 ** 2
    bitten = np.where(ball, 0, labels).astype(np.uint8)  # a ball out of the back of one lung, mid-height
    assert qc_scores.posterior_gap(bitten, SPACING) > 20
    scores = qc_scores.anatomy_scores(np.zeros(SHAPE, np.int16), bitten > 0, bitten, SPACING)
    assert scores["solidity_balance"] < solid - 0.02 and scores["posterior_gap_mm"] > 20


def test_otsu_splits_two_clusters() -> None:
    values = np.concatenate([np.full(500, -1000.0), np.full(300, 40.0)])
    assert -1000 < qc_scores.otsu(values) < 40


def test_input_scores_see_a_lost_intercept_and_a_wrong_slope() -> None:
    hu, _ = phantom()
    shifted = qc_scores.input_scores(hu.astype(np.int32) + 1024)
    assert shifted["air_hu"] == pytest.approx(24, abs=40)
    assert shifted["tissue_hu"] == pytest.approx(1064, abs=10)
    scaled = qc_scores.input_scores((hu.astype(np.float32) + 1024) * 2 - 1024)
    assert scaled["tissue_hu"] == pytest.approx(1104, abs=20)


def test_flip_agreement_of_a_mirror_symmetric_network_is_one_and_of_a_one_sided_one_zero() -> None:
    hu, _ = phantom()
    sym = hu.copy()
    sym[:, :, 64:] = np.flip(hu[:, :, :64], axis=2)  # an image that is its own mirror image

    def by_density(h: np.ndarray) -> np.ndarray:  # "lung" wherever the HU is below -500
        return np.where(h < -500, 5.0, -5.0)

    assert qc_scores.flip_dice(sym, by_density(sym) > 0, by_density, 0.0) == 1.0

    def left_half_only(h: np.ndarray) -> np.ndarray:  # never sees anything in the image's right half
        out = by_density(h)
        out[:, :, 64:] = -5.0
        return out

    assert qc_scores.flip_dice(sym, left_half_only(sym) > 0, left_half_only, 0.0) == 0.0


# ---- the rule -----------------------------------------------------------------------------------

def test_fit_check_pushes_the_sound_extreme_out_by_the_margin() -> None:
    check = qc.Check("t", "s", "above", "coverage", floor=0.1, sentence="{value} {limit}")
    r = qc.fit_check(check, [1.0, 2.0, 3.0])
    assert r["limit"] == pytest.approx(3.0 + qc.MARGIN_OF_SPREAD * 2.0) and r["sound_range"] == [1.0, 3.0]
    assert qc.fit_check(check, [0.0, 0.0])["limit"] == pytest.approx(0.1)  # no spread: the floor
    low = qc.Check("t", "s", "below", "anatomy", floor=0.1, sentence="", scale="log")
    r = qc.fit_check(low, [1000.0, 4000.0])
    assert r["limit"] == pytest.approx(1000.0 / 2.0 ** (qc.MARGIN_OF_SPREAD * 2))  # log scale


def test_a_plausible_phantom_passes(rule: dict) -> None:
    result = qc.assess(scores_of(*phantom(seed=9)), rule)
    assert result.status == "pass" and result.reasons == [] and result.flagged == []


def test_a_mask_cut_by_the_top_slice_is_flagged_for_review(rule: dict) -> None:
    hu, mask = phantom(seed=9)
    result = qc.assess(scores_of(hu[:30], mask[:30]), rule)  # the scan stops inside the lungs
    assert result.status == "review" and "cut_top" in result.flagged
    assert any("top slice" in r and "apex" in r for r in result.reasons)


def test_hu_shifted_by_1024_fails_as_not_hounsfield(rule: dict) -> None:
    hu, mask = phantom(seed=9)
    result = qc.assess(scores_of((hu.astype(np.int32) + 1024).astype(np.int16), mask), rule)
    assert result.status == "fail" and "air" in result.flagged
    assert "not in Hounsfield units" in result.reasons[0]


def test_no_lung_fails_and_a_whole_body_mask_fails(rule: dict) -> None:
    hu, mask = phantom(seed=9)
    empty = qc.assess(scores_of(hu, np.zeros_like(mask)), rule)
    assert empty.status == "fail" and empty.reasons == [qc.NO_LUNG]
    body = qc.assess(scores_of(hu, hu > -500), rule)  # soft tissue labelled as lung
    assert body.status == "fail" and "density" in body.flagged


def test_unset_or_dropped_checks_are_skipped(rule: dict) -> None:
    hu, mask = phantom(seed=9)
    s = scores_of(hu[:30], mask[:30])
    assert qc.assess(s, {"checks": {}}).status == "pass"
    dropped = json.loads(json.dumps(rule))
    dropped["checks"]["cut_top"]["kept"] = False
    assert "cut_top" not in qc.assess(s, dropped).flagged


def test_qc_columns_and_the_verdict_line() -> None:
    stats = {"qc": {"status": "review", "reasons": ["a", "b"]}}
    assert qc.qc_columns(stats) == {"qc_status": "review", "qc_reasons": "a; b"}
    assert qc.qc_columns({}) == {"qc_status": "", "qc_reasons": ""}
    assert qc.verdict_line(stats["qc"]) == "QC: review — a; b"
    assert qc.verdict_line({"status": "pass", "reasons": []}) == "QC: pass"


def test_the_shipped_thresholds_name_known_checks() -> None:
    shipped = qc.load_thresholds()
    if not shipped:
        pytest.skip("no shipped thresholds (lungseg calibrate writes them)")
    names = {c.name for c in qc.CHECKS}
    assert set(shipped["checks"]) <= names
    for name, r in shipped["checks"].items():
        lo, hi = r["sound_range"]
        assert lo <= hi and (r["limit"] >= hi if r["bad_when"] == "above" else r["limit"] <= lo), name
    assert shipped["calibration"]["cases"]  # where the numbers come from


# ---- failures made from a case -------------------------------------------------------------------

def _volume(hu: np.ndarray) -> dicom.Volume:
    nz = hu.shape[0]
    return dicom.Volume(hu=hu, spacing=SPACING, origin=(-250.0, -250.0, 0.0),
                        positions=np.arange(nz) * SPACING[0], files=tuple(f"f{i}" for i in range(nz)),
                        case_id="Case_900", series_uid="1.2.3", orientation=(1, 0, 0, 0, 1, 0),
                        sort_key="ImagePositionPatient")


def test_every_kind_leaves_its_input_unchanged_and_has_the_expected_truth() -> None:
    hu, mask = phantom()
    hu.flags.writeable = False
    vol = _volume(hu)
    before = hashlib.sha256(hu.tobytes()).hexdigest()
    for i, kind in enumerate(failures.KINDS):
        v = failures.make_failure(vol, mask, kind, np.random.default_rng(i))
        assert v.kind == kind and v.volume.hu.shape == v.truth.shape
        assert v.volume.shape[1] == v.volume.shape[2], kind  # square slices, as predict needs
        cut = ("truncate_top", "truncate_bottom", "crop_fov", "zoom_fov", "circle_fov")
        assert v.lungs_cut == (kind in cut), kind
        if kind == "no_lung":
            assert not v.truth.any()
        elif kind not in (*cut, "trim", "shift"):
            assert np.array_equal(v.truth, mask), kind  # same grid, same anatomy
    assert hashlib.sha256(hu.tobytes()).hexdigest() == before
    lost = failures.make_failure(vol, mask, "lost_intercept", np.random.default_rng(0))
    assert np.array_equal(lost.volume.hu.astype(np.int32), hu.astype(np.int32) + 1024)
    top = failures.make_failure(vol, mask, "truncate_top", np.random.default_rng(0))
    assert top.truth[-1].any() and not top.truth[0].any()
    assert top.volume.positions[0] == vol.positions[0]
    bottom = failures.make_failure(vol, mask, "truncate_bottom", np.random.default_rng(0))
    assert bottom.volume.origin[2] == bottom.volume.positions[0] > vol.positions[0]
    with pytest.raises(ValueError, match="unknown variant kind"):
        failures.make_failure(vol, mask, "nope", np.random.default_rng(0))


def test_consolidation_replaces_part_of_one_lung_with_soft_tissue() -> None:
    hu, mask = phantom()
    v = failures.make_failure(_volume(hu), mask, "consolidation", np.random.default_rng(3))
    changed = v.volume.hu != hu
    assert changed.sum() > 0.15 * mask.sum() / 2 and not (changed & ~mask).any()  # inside the lungs only
    assert abs(float(np.median(v.volume.hu[changed])) - 35) < 10
    xs = np.flatnonzero(changed.any(axis=(0, 1)))
    assert xs.max() < 64 or xs.min() >= 64  # one lung


# ---- the held-out protocol ----------------------------------------------------------------------

def _row(case: str, fold: int, group: str, value: float, kind: str = "original") -> dict:
    return {"case": case, "fold": fold, "kind": kind, "detail": "", "group": group, "dice": 0.95,
            "scores": {"lung_ml": 4000.0, "top_cut_share": value}}


def test_heldout_limits_come_from_the_other_folds_only() -> None:
    rows = [_row("A", 0, "sound", 0.0), _row("B", 1, "sound", 0.5),  # B's sound value is odd
            _row("A", 0, "bad", 0.3, "truncate_top"), _row("B", 1, "bad", 0.3, "truncate_top")]
    judged = {(r["case"], r["group"]): r for r in qc_calibrate.heldout(rows)}
    # Fold 0 is judged by B's limit (0.5 + floor): A's cut scan passes; fold 1 by A's (0 + floor).
    assert not judged[("A", "bad")]["flagged"] and judged[("B", "bad")]["flagged"]
    assert judged[("B", "sound")]["flagged"]  # its own odd value never set its limit
    s = qc_calibrate.summary(list(judged.values()))
    assert (s["bad"]["series"], s["bad"]["flagged"]) == (2, 1) and s["sound"]["flagged"] == 1


def test_a_fold_without_sound_series_is_judged_without_limits() -> None:
    rows = [_row("A", 0, "bad", 0.3), _row("B", 1, "bad", 0.3)]
    judged = qc_calibrate.heldout(rows)
    assert [r["calibration_sound_series"] for r in judged] == [0, 0]
    assert not any(r["flagged"] for r in judged)


# ---- predict records the verdict -------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::lungseg.inference.predict.SideWarning")
def test_predict_records_and_prints_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = tmp_path / "in" / "Case_900"
    write_series(series, n=6, dz=2.5)
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt")
    assert run_cli("predict", series, "--out", tmp_path / "o", "--checkpoint", ckpt) == 0
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["qc"]["status"] in qc.STATUSES and "qc_s" in stats["timings_s"]
    assert set(stats["qc"]["scores"]) >= {"air_hu", "lung_ml", "top_cut_share"}
    # the flip agreement (a second network pass) is measured only when the shipped rule judges by it
    assert ("flip_dice" in stats["qc"]["scores"]) == qc.judges("flip")
    out = capsys.readouterr().out
    assert f"QC: {stats['qc']['status']}" in out
    assert run_cli("predict", series, "--out", tmp_path / "n", "--checkpoint", ckpt, "--no-qc") == 0
    assert "qc" not in json.loads((tmp_path / "n" / "stats.json").read_text())
    # a synthetic phantom and an untrained model: QC does not pass it, and --fail-on-qc says so
    assert stats["qc"]["status"] in ("review", "fail")
    expected = {"review": 3, "fail": 3 if stats["qc"]["status"] == "fail" else 0}
    for level, status in expected.items():
        out = tmp_path / f"q-{level}"
        assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt, "--fail-on-qc", level) == status
        assert (out / "stats.json").is_file()  # written all the same


# ---- a real case --------------------------------------------------------------------------------

REAL = paths.ROOT / "data" / "Images" / "Case_000"


@pytest.fixture(scope="module")
def real_case():
    if not REAL.is_dir():
        pytest.skip(f"needs {REAL}")
    from lungseg.io import cache

    return cache.load_case("Case_000")


def _judge(volume: dicom.Volume, truth: np.ndarray) -> qc.QCResult:
    """The shipped rule on a 'prediction' that is the truth itself (sided by the rule predict uses)."""
    labels, _ = sides.split_lungs_with_info(truth, volume)
    logits = np.where(truth, 6.0, -6.0).astype(np.float32)
    return qc.assess(qc_scores.measure(volume.hu, volume.spacing, logits, truth, labels, 0.5))


@pytest.mark.realdata
def test_a_real_case_passes_and_its_cut_and_shifted_variants_are_flagged(real_case) -> None:
    if not qc.load_thresholds():
        pytest.skip("no shipped thresholds")
    truth = np.asarray(real_case.mask, dtype=bool)
    assert _judge(real_case.volume, truth).status == "pass"
    expected = (("truncate_top", "cut_top", "review"), ("crop_fov", "fov", "review"),
                ("truncate_bottom", "cut_bottom", "review"), ("lost_intercept", "air", "fail"))
    for kind, check, status in expected:
        v = failures.make_failure(real_case.volume, truth, kind, np.random.default_rng(1))
        verdict = _judge(v.volume, v.truth)
        assert check in verdict.flagged and verdict.status in (status, "fail"), (kind, verdict)
        assert math.isfinite(verdict.scores["lung_ml"])


def test_calibration_entry_point_describes_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["calibrate", "--help"])
    assert exit_.value.code == 0 and "--profile" in capsys.readouterr().out


def test_the_rule_judges_only_by_checks_with_a_kept_limit() -> None:
    rule = {"checks": {"air": {"limit": -850, "kept": True}, "flip": {"limit": 0.93, "kept": False},
                       "noise": {"limit": 50}}}
    assert qc.judges("air", rule) and qc.judges("noise", rule)  # no "kept": set limits are kept
    assert not qc.judges("flip", rule) and not qc.judges("shape", rule)
