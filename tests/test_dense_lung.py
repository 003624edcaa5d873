"""Dense lung: the training augmentation (lungseg.network.disease), the evaluation's own 3D generator
(lungseg.evaluation.dense), its summary, and the bottleneck dilation option. Synthetic inputs with
known answers."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from test_qc import _volume, phantom

from lungseg.evaluation import dense
from lungseg.network import config, data, disease, model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 64² slices: body 40 HU, two lungs at -850 HU (masks), normalised as training does."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    body = ((yy - 32) / 26) ** 2 + ((xx - 32) / 30) ** 2 <= 1
    lungs = ((((yy - 32) / 16) ** 2 + ((xx - 20) / 9) ** 2 <= 1)
             | (((yy - 32) / 16) ** 2 + ((xx - 44) / 9) ** 2 <= 1))
    hu = torch.where(body, 40.0, -1000.0)
    hu[lungs] = -850.0
    x = data.normalise(hu.expand(4, 1, 64, 64).clone())
    return x, lungs.float().expand(4, 1, 64, 64).clone()


def _simulate(spec: disease.DiseaseSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = _batch()
    out = disease.simulate(x, y, spec, disease.step_generator(seed, 0, 0), data.denormalise, data.normalise)
    return x, y, out


def test_disease_changes_only_the_lung_denser_and_is_seeded() -> None:
    for kind in disease.KINDS:
        spec = disease.DiseaseSpec(p=1.0, kinds=(kind,))
        x, y, out = _simulate(spec, 3)
        changed = (out - x).abs() > 1e-6
        assert changed.any(), kind
        assert not (changed & (y < 0.5)).any(), kind  # outside the true lung nothing moves
        hu_in, hu_out = data.denormalise(x), data.denormalise(out)
        if kind == "lucent":  # towards air, never below it
            assert float((hu_out - hu_in)[changed].mean()) < -20 and float(hu_out.min()) >= -1000.5, kind
        else:
            assert float((hu_out - hu_in)[changed].mean()) > 100, kind  # denser, on average
        assert torch.equal(out, _simulate(spec, 3)[2]), kind  # same (seed, epoch, step): same draw
    x, _, out = _simulate(disease.DiseaseSpec(p=0.0), 3)
    assert torch.equal(out, x)


def test_disease_spec_refuses_bad_fields() -> None:
    with pytest.raises(ValueError, match="unknown disease kinds"):
        disease.DiseaseSpec(p=0.5, kinds=("tumour",))
    with pytest.raises(ValueError, match="disease_p"):
        disease.DiseaseSpec(p=1.5)
    with pytest.raises(ValueError, match="low <= high"):
        disease.DiseaseSpec(p=0.5, dense_hu=(70.0, -100.0))
    with pytest.raises(ValueError, match="dilation"):
        dataclasses.replace(config.TrainConfig(cases=["Case_000"], test_cases=[]), dilation=0).resolved()


def test_every_dense_kind_keeps_the_truth_and_changes_only_lung() -> None:
    hu, mask = phantom()
    hu.flags.writeable = False
    vol = _volume(hu)
    before = hashlib.sha256(hu.tobytes()).hexdigest()
    for i, kind in enumerate(dense.KINDS):
        dv = dense.make_dense(vol, mask, kind, np.random.default_rng(i))
        v = dv.variant
        assert np.array_equal(v.truth, mask) and v.kind == kind
        changed = v.volume.hu != hu
        assert changed.any() and not (changed & ~mask).any(), kind
        assert 0 < dv.extent <= 1, (kind, dv)
        if kind == "emphysema":  # lucent: darker than the phantom's lung, never below air
            assert -1000 <= dv.density_hu < -850 and v.volume.hu.min() >= hu.min(), (kind, dv.density_hu)
        else:
            assert dv.density_hu > -700, (kind, dv)
        again = dense.make_dense(vol, mask, kind, np.random.default_rng(i))
        assert np.array_equal(again.variant.volume.hu, v.volume.hu)
    assert hashlib.sha256(hu.tobytes()).hexdigest() == before
    shift = dense.make_dense(vol, mask, "dense_shift", np.random.default_rng(0))
    xs = np.flatnonzero((shift.variant.volume.hu != hu).any(axis=(0, 1)))
    assert xs.max() < 64  # the patient's right lung: the image's left half here
    with pytest.raises(ValueError, match="unknown dense-lung kind"):
        dense.make_dense(vol, mask, "nope", np.random.default_rng(0))


def test_summary_counts_the_goal_and_qc_per_kind_and_model() -> None:
    def row(case: str, kind: str, model_name: str, dice: float, qc: str) -> dict:
        return {"case": case, "kind": kind, "model": model_name, "dice": dice, "qc": qc}

    rows = [row("A", "original", "aug", 0.98, "pass"), row("B", "original", "aug", 0.96, "pass"),
            row("A", "lobe", "aug", 0.96, "pass"), row("B", "lobe", "aug", 0.85, "review"),
            row("A", "original", "plain", 0.98, ""), row("A", "lobe", "plain", 0.80, "")]
    by = {(r["kind"], r["model"]): r for r in dense.summary(rows)}
    lobe = by["lobe", "aug"]
    assert lobe["reach_0.95"] == "1/1"  # B's unchanged scan is below 0.97: not counted
    assert lobe["below_0.9"] == 1 and lobe["qc_flagged_of_those"] == 1 and lobe["qc_flagged_all"] == 1
    assert lobe["dice_min"] == 0.85 and lobe["dice_mean"] == pytest.approx(0.905)
    assert by["lobe", "plain"]["qc_flagged_of_those"] == "–"  # not judged
    assert by["lobe", "plain"]["reach_0.95"] == "0/1"


def test_a_dilated_bottleneck_keeps_the_parameters_and_the_shape() -> None:
    plain, wide = model.UNet(), model.UNet(dilation=4)
    assert plain.state_dict().keys() == wide.state_dict().keys()
    assert model.count_parameters(plain) == model.count_parameters(wide)
    wide.load_state_dict(plain.state_dict())
    with torch.no_grad():
        out = wide.eval()(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_the_wall_gap_sees_a_lung_that_stops_short_of_the_ribs() -> None:
    from test_qc import SPACING, labels_of

    from lungseg.inference import qc_scores

    hu, mask = _ribbed_phantom()  # ribs: a bony ring just outside the lungs
    sound = qc_scores.wall_scores(hu, labels_of(mask), SPACING)["wall_gap_share"]
    short = mask.copy()
    short[:, :, :30] = False  # the patient's right lung loses its outer 7 voxels (27 mm): dense lung left out
    missed = qc_scores.wall_scores(hu, labels_of(short), SPACING)["wall_gap_share"]
    assert sound is not None and missed is not None
    assert sound < 0.05 and missed > 0.15  # the cut face lies 27 mm inside the ribs
    assert qc_scores.wall_scores(hu, labels_of(np.zeros_like(mask)), SPACING)["wall_gap_share"] is None


def _ribbed_phantom() -> tuple[np.ndarray, np.ndarray]:
    """test_qc's phantom with a bony ring (ribs, 400 HU) just outside the lungs, in the body."""
    from test_qc import SHAPE

    hu, mask = phantom()
    z, y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]].astype(np.float32)
    shell = ((y - 62) / 27) ** 2 + ((x - 64) / 42) ** 2
    return np.where((shell >= 1.0) & (shell <= 1.15) & (hu > -900), 400, hu).astype(np.int16), mask


def test_the_back_wall_gap_sees_dense_lung_left_out_of_both_lungs_alike() -> None:
    """Both lungs losing their back 20 rows (78 mm, of 48): the one-lung-against-the-other gap
    cannot see it, the distance to the bone behind the lungs can; a softer kernel (the bone blurred)
    hardly moves it."""
    from scipy import ndimage
    from test_qc import SPACING, labels_of

    from lungseg.inference import qc_scores

    def back(hu, mask):
        return qc_scores.wall_scores(hu, labels_of(mask), SPACING)["back_wall_mm"]

    hu, mask = _ribbed_phantom()
    sound = back(hu, mask)
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    short = mask.copy()
    short[:, rows[-1] - 19:, :] = False
    missed = back(hu, short)
    assert sound is not None and missed is not None
    assert sound < 15 and missed > sound + 30
    assert qc_scores.posterior_gap(labels_of(short), SPACING) == 0.0
    soft = ndimage.gaussian_filter(hu.astype(np.float32), (0, 0.8, 0.8))
    assert back(soft, mask) == pytest.approx(sound, abs=SPACING[1])
    assert back(hu, np.zeros_like(mask)) is None
    assert back(np.where(hu > 150, 40, hu).astype(np.int16), mask) is None  # no bone: nothing to measure


def test_the_front_wall_gap_sees_anterior_dense_lung_left_out_of_one_lung() -> None:
    """One lung losing its front 16 rows (62 mm): neither the back's distance to bone nor the
    one-lung-against-the-other gap at the back moves; the distance from its front to the bone does."""
    from test_qc import SPACING, labels_of

    from lungseg.inference import qc_scores

    hu, mask = _ribbed_phantom()
    sound = qc_scores.wall_scores(hu, labels_of(mask), SPACING)
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    short = mask.copy()
    short[:, : rows[0] + 16, :64] = False  # the patient's right lung: the image's left half here
    missed = qc_scores.wall_scores(hu, labels_of(short), SPACING)
    assert sound["front_wall_mm"] is not None and missed["front_wall_mm"] is not None
    assert sound["front_wall_mm"] < 15 and missed["front_wall_mm"] > sound["front_wall_mm"] + 30
    assert missed["back_wall_mm"] == pytest.approx(sound["back_wall_mm"])
    gap = qc_scores.posterior_gap
    assert gap(labels_of(short), SPACING) == gap(labels_of(mask), SPACING)
    no_bone = np.where(hu > 150, 40, hu).astype(np.int16)
    assert qc_scores.wall_scores(no_bone, labels_of(mask), SPACING)["front_wall_mm"] is None


def test_the_end_gaps_measure_one_lung_ending_short_of_the_other() -> None:
    """The phantom's lungs are mirror images (gaps 0); one lung losing its top or bottom 6 slices
    (30 mm) moves that end by 6 slices or a little less (the lost end's thin tip did not count)."""
    from test_qc import SPACING, labels_of

    from lungseg.inference import qc_scores

    _, mask = phantom()
    labels = labels_of(mask)
    assert qc_scores.end_gaps(labels, SPACING) == {"apex_gap_mm": 0.0, "base_gap_mm": 0.0}
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    top, bottom = labels.copy(), labels.copy()
    top[zs[-1] - 5:, :, :64] = 0
    bottom[:zs[0] + 6, :, 64:] = 0
    for cut, key in ((top, "apex_gap_mm"), (bottom, "base_gap_mm")):
        gaps = qc_scores.end_gaps(cut, SPACING)
        assert 4 * SPACING[0] <= gaps[key] <= 6 * SPACING[0], (key, gaps)
        assert gaps["base_gap_mm" if key == "apex_gap_mm" else "apex_gap_mm"] == 0.0
    assert qc_scores.end_gaps(np.where(labels == 2, 0, labels), SPACING)["apex_gap_mm"] is None


def test_depth_on_the_lungs_box_equals_the_whole_scans_transform() -> None:
    """_depth_mm crops the transform to the lung's box (+1 voxel where the array has it): the same
    distances, also for a lung that touches the array's edge."""
    from scipy import ndimage

    from lungseg.evaluation import dense

    rng = np.random.default_rng(0)
    lung = ndimage.binary_opening(rng.random((12, 40, 48)) > 0.35, iterations=1)
    lung[:, :, :5] = False
    lung[3:9, 10:30, 0] = True  # touches the array's edge
    spacing = (2.5, 0.8, 0.9)
    expected = ndimage.distance_transform_edt(lung, sampling=spacing)
    np.testing.assert_array_equal(dense._depth_mm(lung, spacing), expected)
    assert not dense._depth_mm(np.zeros((3, 4, 5), bool), spacing).any()
