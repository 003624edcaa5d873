"""Known-answer tests for lungseg.evaluation.metrics (hand-computed, brute force, and MONAI cross-check)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from lungseg.evaluation import metrics as m

ANISO = (3.0, 0.5, 0.5)  # (dz, dy, dx) mm: thick CT slices, fine in-plane pixels


# --------------------------------------------------------------------------- per slice
def _slice_stack() -> tuple[np.ndarray, np.ndarray]:
    """Four 4x4 slices with hand-countable overlaps."""
    pred = np.zeros((4, 4, 4), dtype=bool)
    gt = np.zeros((4, 4, 4), dtype=bool)
    pred[0, 0:2, 0:2] = True  # |P| = 4
    gt[0, 0:2, 0:3] = True  # |G| = 6, |P∩G| = 4
    # slice 1: both empty
    pred[2, 0, 0:2] = True  # P = {(0,0), (0,1)}
    gt[2, 0:3, 1] = True  # G = {(0,1), (1,1), (2,1)}, |P∩G| = 1 (pixel (0,1))
    pred[3, 3, 3] = True  # P = 1 pixel, G empty
    return pred, gt


def test_slice_dice_report_hand_computed() -> None:
    pred, gt = _slice_stack()
    eps = m.DICE_EPS
    # slice 0: 2*4 / (4+6+eps); slice 1: 0 / (0+0+eps) = 0 (report convention);
    # slice 2: 2*1 / (2+3+eps); slice 3: 0 / (1+0+eps) = 0
    expected = np.array([8 / (10 + eps), 0.0, 2 / (5 + eps), 0.0])
    got = m.slice_dice_report(pred, gt)
    assert got.shape == (4,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, [0.8, 0.0, 0.4, 0.0], atol=1e-6)
    assert got[1] == 0.0


def test_slice_dice_standard_hand_computed() -> None:
    pred, gt = _slice_stack()
    # slice 0: 8/10 = 0.8; slice 1: both empty -> 1; slice 2: 2/5 = 0.4; slice 3: 0/1 = 0
    np.testing.assert_allclose(m.slice_dice_standard(pred, gt), [0.8, 1.0, 0.4, 0.0], atol=1e-15)


def test_slice_dice_single_voxel_overlap() -> None:
    pred = np.zeros((1, 3, 3), dtype=bool)
    gt = np.zeros((1, 3, 3), dtype=bool)
    pred[0, 1, 1] = gt[0, 1, 1] = True  # 2*1 / (1+1) = 1
    assert m.slice_dice_standard(pred, gt)[0] == 1.0
    assert m.slice_dice_report(pred, gt)[0] == pytest.approx(2 / (2 + m.DICE_EPS), abs=1e-15)


def test_slice_accuracy_hand_computed() -> None:
    pred, gt = _slice_stack()
    # 16 pixels per slice. Mismatches: slice 0: 2 (G minus P) -> 14/16; slice 1: 0 -> 1;
    # slice 2: {(0,0),(1,1),(2,1)} = 3 -> 13/16; slice 3: 1 -> 15/16
    np.testing.assert_allclose(m.slice_accuracy(pred, gt), [0.875, 1.0, 0.8125, 0.9375])


def test_slice_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        m.slice_dice_report(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 3), bool))


# --------------------------------------------------------------------------- volume dice
def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    vol = np.zeros(shape, dtype=bool)
    vol[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = True
    return vol


def test_volume_dice_known_answers() -> None:
    a = _cube((8, 8, 8), (1, 1, 1), 2)
    b = _cube((8, 8, 8), (5, 5, 5), 2)
    c = _cube((8, 8, 8), (2, 1, 1), 2)  # a shifted by 1 along z: overlap 4 of 8 + 8
    empty = np.zeros((8, 8, 8), dtype=bool)
    assert m.volume_dice(a, a) == 1.0
    assert m.volume_dice(a, b) == 0.0
    assert m.volume_dice(a, c) == pytest.approx(2 * 4 / 16)
    assert m.volume_dice(empty, empty) == m.DICE_BOTH_EMPTY == 1.0
    assert m.volume_dice(a, empty) == m.volume_dice(empty, a) == m.DICE_ONE_EMPTY == 0.0


# --------------------------------------------------------------------------- surface distances
@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_parallel_slabs_every_distance_is_k_spacing(axis: int, k: int) -> None:
    # Two one-voxel-thick 6x6 slabs, k voxels apart along `axis`. Every voxel is surface, and
    # its nearest counterpart is straight across, so every distance is k*spacing[axis]:
    # HD95 = MSD = k*spacing[axis] (k*3.0 mm along z, k*0.5 mm along x).
    shape = [12, 12, 12]
    pred = np.zeros(shape, dtype=bool)
    idx: list[slice | int] = [slice(3, 9)] * 3
    idx[axis] = 2
    pred[tuple(idx)] = True
    gt = np.roll(pred, k, axis=axis)
    expected = k * ANISO[axis]
    d_pg, d_gp = m.surface_distances(pred, gt, ANISO)
    assert d_pg.size == d_gp.size == 36
    np.testing.assert_allclose(d_pg, expected)
    np.testing.assert_allclose(d_gp, expected)
    assert m.hd95(pred, gt, ANISO) == pytest.approx(expected)
    assert m.mean_surface_distance(pred, gt, ANISO) == pytest.approx(expected)


def test_cube_shift_z_hand_derived() -> None:
    # 6x6x6 cube (z, y, x in 2..7) vs the same cube shifted by k=1 along z (z in 3..8),
    # spacing (3.0, 0.5, 0.5). 152 surface voxels (216 - 4^3). Distances pred->gt:
    #   bottom face z=2 (36 voxels): nearest is the gt bottom face 1 slice up -> 3.0
    #   side ring at z=3..6 (4*20 = 80) and ring of top face z=7 (20): on the gt ring -> 0
    #   top-face interior z=7 (4x4 = 16): gt interior there, so go in-plane to the gt ring:
    #     outer 12 are 1 px away -> 0.5, inner 4 are 2 px away -> 1.0 (gt top face is 3.0)
    # gt->pred is the mirror image (same multiset). Sorted: 100x0, 12x0.5, 4x1.0, 36x3.0.
    # P95 (linear) sits at position 0.95*151 = 143.45, inside the 3.0 block -> HD95 = 3.0.
    # MSD = (36*3.0 + 12*0.5 + 4*1.0) / 152 = 118/152.
    pred = _cube((12, 12, 12), (2, 2, 2), 6)
    gt = np.roll(pred, 1, axis=0)
    d_pg, d_gp = m.surface_distances(pred, gt, ANISO)
    expected = np.array([0.0] * 100 + [0.5] * 12 + [1.0] * 4 + [3.0] * 36)
    np.testing.assert_allclose(np.sort(d_pg), expected)
    np.testing.assert_allclose(np.sort(d_gp), expected)
    assert m.hd95(pred, gt, ANISO) == pytest.approx(3.0)
    assert m.mean_surface_distance(pred, gt, ANISO) == pytest.approx(118 / 152)


def test_cube_shift_x_hand_derived() -> None:
    # Same cube shifted by 1 along x (dx = 0.5). Low-x face (36): 0.5. Ring parallel to x
    # (100): 0. High-x face interior (16): gt x-face 1 px away -> 0.5 (the in-plane ring is
    # at least 1 px in y (0.5) or 1 slice in z (3.0) away). 52 values of 0.5, 100 zeros:
    # P95 position 143.45 > 99 -> HD95 = 0.5 = k*dx; MSD = 52*0.5/152 = 26/152.
    pred = _cube((12, 12, 12), (2, 2, 2), 6)
    gt = np.roll(pred, 1, axis=2)
    assert m.hd95(pred, gt, ANISO) == pytest.approx(0.5)
    assert m.mean_surface_distance(pred, gt, ANISO) == pytest.approx(26 / 152)


@pytest.mark.parametrize(("axis", "k"), [(0, 2), (2, 2), (1, 3)])
def test_cube_shift_max_distance_is_k_spacing(axis: int, k: int) -> None:
    # A shift by k voxels maps every surface voxel onto a surface voxel of the other mask,
    # so no distance exceeds k*spacing[axis]. The trailing face reaches exactly that value.
    pred = _cube((16, 16, 16), (3, 3, 3), 7)
    gt = np.roll(pred, k, axis=axis)
    d_pg, d_gp = m.surface_distances(pred, gt, ANISO)
    assert d_pg.max() == pytest.approx(k * ANISO[axis])
    assert d_gp.max() == pytest.approx(k * ANISO[axis])
    assert m.hd95(pred, gt, ANISO) <= k * ANISO[axis] + 1e-12


def test_identical_masks_zero_distance() -> None:
    a = _cube((8, 8, 8), (1, 2, 3), 4)
    assert m.hd95(a, a, ANISO) == 0.0
    assert m.mean_surface_distance(a, a, ANISO) == 0.0


def test_border_voxels_count_as_surface() -> None:
    # A mask filling the whole array: only the border voxels are surface (5^3 - 3^3 = 98).
    full = np.ones((5, 5, 5), dtype=bool)
    d_pg, d_gp = m.surface_distances(full, full, ANISO)
    assert d_pg.size == d_gp.size == 98
    assert not d_pg.any()


def test_empty_mask_conventions() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    a = _cube((6, 6, 6), (1, 1, 1), 3)
    assert m.hd95(empty, empty, ANISO) == m.DISTANCE_BOTH_EMPTY == 0.0
    assert m.mean_surface_distance(empty, empty, ANISO) == 0.0
    for p, g in [(a, empty), (empty, a)]:
        assert m.hd95(p, g, ANISO) == m.DISTANCE_ONE_EMPTY == np.inf
        assert m.mean_surface_distance(p, g, ANISO) == np.inf
    d_pg, d_gp = m.surface_distances(a, empty, ANISO)
    assert d_pg.size == 26 and np.all(np.isinf(d_pg)) and d_gp.size == 0
    d_pg, d_gp = m.surface_distances(empty, empty, ANISO)
    assert d_pg.size == d_gp.size == 0


def test_bad_spacing_raises() -> None:
    a = _cube((6, 6, 6), (1, 1, 1), 3)
    with pytest.raises(ValueError, match="spacing"):
        m.hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        m.surface_distances(a, a, (1.0, 1.0))


def test_per_patient_metrics() -> None:
    pred = _cube((12, 12, 12), (2, 2, 2), 6)
    gt = np.roll(pred, 1, axis=0)
    out = m.per_patient_metrics(pred, gt, ANISO)
    assert set(out) == {"dice", "hd95_mm", "msd_mm", "volume_pred_ml", "volume_gt_ml"}
    # overlap 5*36 = 180 of 216 + 216 -> 360/432; volume 216 voxels * 0.75 mm^3 = 0.162 mL
    assert out["dice"] == pytest.approx(360 / 432)
    assert out["hd95_mm"] == pytest.approx(3.0)
    assert out["msd_mm"] == pytest.approx(118 / 152)
    assert out["volume_pred_ml"] == pytest.approx(0.162)
    assert out["volume_gt_ml"] == pytest.approx(0.162)
    empty = np.zeros_like(pred)
    out = m.per_patient_metrics(pred, empty, ANISO)
    assert (out["dice"], out["hd95_mm"], out["msd_mm"]) == (0.0, np.inf, np.inf)
    assert out["volume_gt_ml"] == 0.0
    out = m.per_patient_metrics(empty, empty, ANISO)
    assert (out["dice"], out["hd95_mm"], out["msd_mm"]) == (1.0, 0.0, 0.0)


# --------------------------------------------------------------------------- random blobs
def _blob_pair(seed: int, shape: tuple[int, int, int] = (20, 24, 24)) -> tuple[np.ndarray, ...]:
    """Smoothed-noise blobs (a gt and a perturbed prediction) that touch the array borders."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random(shape), sigma=2.0)
    noisy = ndimage.gaussian_filter(rng.random(shape), sigma=2.0)
    gt = base > np.quantile(base, 0.6)
    mix = base + 0.5 * noisy
    pred = mix > np.quantile(mix, 0.6)
    return pred, gt


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface with explicit 6-neighbour checks (outside the array = background)."""
    padded = np.pad(mask, 1)
    surf = np.zeros_like(mask)
    for z, y, x in itertools.product(*(range(s) for s in mask.shape)):
        if not mask[z, y, x]:
            continue
        zz, yy, xx = z + 1, y + 1, x + 1
        neigh = [
            padded[zz - 1, yy, xx], padded[zz + 1, yy, xx],
            padded[zz, yy - 1, xx], padded[zz, yy + 1, xx],
            padded[zz, yy, xx - 1], padded[zz, yy, xx + 1],
        ]  # fmt: skip
        surf[z, y, x] = not all(neigh)
    return surf


def _brute_directed(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    a = np.argwhere(src) * np.asarray(spacing)
    b = np.argwhere(dst) * np.asarray(spacing)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_surface_distances_match_brute_force(seed: int) -> None:
    pred, gt = _blob_pair(seed, shape=(8, 12, 12))
    sp, sg = _brute_surface(pred), _brute_surface(gt)
    d_pg, d_gp = m.surface_distances(pred, gt, ANISO)
    # both are listed in C order over the same voxels, so compare element-wise
    np.testing.assert_allclose(d_pg, _brute_directed(sp, sg, ANISO), rtol=1e-12)
    np.testing.assert_allclose(d_gp, _brute_directed(sg, sp, ANISO), rtol=1e-12)


@pytest.mark.parametrize(("near_mm", "max_far"), [(10.0, 20_000), (0.5, 20_000), (0.5, 0)])
def test_directed_ways_agree(monkeypatch: pytest.MonkeyPatch, near_mm: float, max_far: int) -> None:
    """The bounded tree, the unbounded re-query of far voxels and the feature transform give the
    same distances as brute force (a far stray blob makes voxels beyond the bound)."""
    pred, gt = _blob_pair(3, shape=(10, 16, 16))
    pred[8:, 13:, 13:] = True  # a stray corner blob far from the truth
    sp, sg = _brute_surface(pred), _brute_surface(gt)
    monkeypatch.setattr(m, "NEAR_MM", near_mm)
    monkeypatch.setattr(m, "MAX_FAR_BY_TREE", max_far)
    np.testing.assert_allclose(m._directed(sp, sg, ANISO), _brute_directed(sp, sg, ANISO), rtol=1e-12)
    np.testing.assert_allclose(m._directed(sg, sp, ANISO), _brute_directed(sg, sp, ANISO), rtol=1e-12)


# MONAI 1.6.1 uses the same surface definition: get_mask_edges crops to the union's bounding
# box with a 1-voxel background margin (padding if needed), then takes
# binary_erosion(mask) ^ mask with scipy's default cross structure. Its euclidean distances
# are exact (a KD-tree over edge voxels scaled by spacing), percentiles are torch.quantile
# (linear, like np.percentile), and ASSD with symmetric=True is torch.cat(both).mean(). The
# two implementations therefore compute the same quantity. The only difference is that MONAI
# returns float32, so the tolerance is float32 rounding: rtol 1e-5 (float32 eps ~ 1.2e-7).
MONAI_RTOL = 1e-5
MONAI_ATOL = 1e-5


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own internal deprecation notice
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai(seed: int) -> None:
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, gt = _blob_pair(seed)
    spacing = (2.5, 0.7, 0.8)
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yt = torch.from_numpy(gt[None, None].astype(np.float32))
    ref_hd = monai_metrics.compute_hausdorff_distance(
        yp, yt, include_background=True, percentile=95, spacing=spacing
    ).item()
    ref_asd = monai_metrics.compute_average_surface_distance(
        yp, yt, include_background=True, symmetric=True, spacing=spacing
    ).item()
    assert ref_hd > 0 and ref_asd > 0
    assert m.hd95(pred, gt, spacing) == pytest.approx(ref_hd, rel=MONAI_RTOL, abs=MONAI_ATOL)
    assert m.mean_surface_distance(pred, gt, spacing) == pytest.approx(
        ref_asd, rel=MONAI_RTOL, abs=MONAI_ATOL
    )


# --------------------------------------------------------------------------- select_examples
SEL_DICE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
SEL_CASES = ["A", "A", "A", "B", "B", "C", "C", "D", "D"]


def test_select_lowest_skips_repeated_patient() -> None:
    # the three lowest (0, 1, 2) are all patient A -> take 0, then B's 3, then C's 5
    assert m.select_examples(SEL_DICE, SEL_CASES, "lowest") == [0, 3, 5]


def test_select_highest_skips_repeated_patient() -> None:
    # descending: 8 (D), 7 (D, skip), 6 (C), 5 (C, skip), 4 (B)
    assert m.select_examples(SEL_DICE, SEL_CASES, "highest") == [8, 6, 4]


def test_select_median_walks_outward() -> None:
    # N=9, median rank 4. Visit ranks 4, 3, 5, 2, ...: 4 (B), 3 (B, skip), 5 (C), 2 (A)
    assert m.select_examples(SEL_DICE, SEL_CASES, "median") == [4, 5, 2]
    # unsorted input: ascending order is idx 1, 3, 2, 4, 0, so median rank 2 is idx 2,
    # then rank 1 (idx 3), then rank 3 (idx 4)
    assert m.select_examples([0.9, 0.1, 0.5, 0.3, 0.7], list("ABCDE"), "median") == [2, 3, 4]
    # even N=4: centre 1.5, ranks 1 and 2 are equally close (lower first), then rank 0
    assert m.select_examples([0.1, 0.2, 0.3, 0.4], list("ABCD"), "median") == [1, 2, 0]


def test_select_ties_by_index() -> None:
    assert m.select_examples([0.5, 0.1, 0.1, 0.1], list("ABCD"), "lowest") == [1, 2, 3]
    assert m.select_examples([0.2, 0.9, 0.9, 0.9], list("ABCD"), "highest", n=2) == [1, 2]
    assert m.select_examples([0.3] * 5, list("AABCD"), "lowest") == [0, 2, 3]


def test_select_errors() -> None:
    with pytest.raises(ValueError, match="different patients"):
        m.select_examples([0.1, 0.2, 0.3], ["A", "B", "A"], "lowest")
    with pytest.raises(ValueError, match="which"):
        m.select_examples(SEL_DICE, SEL_CASES, "worst")
    with pytest.raises(ValueError, match="length"):
        m.select_examples(SEL_DICE, SEL_CASES[:-1], "lowest")
