"""Post-processing and threshold choice on synthetic volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from lungseg.evaluation import metrics, tuning
from lungseg.inference import postprocess


def _two_lungs_and_noise() -> np.ndarray:
    m = np.zeros((10, 20, 20), dtype=bool)
    m[2:8, 2:9, 2:9] = True  # left lung, 294 voxels
    m[2:8, 2:9, 11:18] = True  # right lung, 294 voxels
    m[0, 18, 18] = True  # a stray voxel far away
    m[4, 5, 5] = False  # an enclosed hole
    return m


def test_keep_largest_drops_the_stray_voxel() -> None:
    m = _two_lungs_and_noise()
    kept = postprocess.keep_largest(m, 2)
    assert not kept[0, 18, 18] and kept.sum() == m.sum() - 1


def test_clean_fills_enclosed_holes() -> None:
    cleaned = postprocess.clean(_two_lungs_and_noise())
    assert cleaned[4, 5, 5] and cleaned.sum() == 2 * 6 * 7 * 7


def test_logit_round_trip() -> None:
    assert postprocess.logit(0.5) == 0.0
    assert 1 / (1 + math.exp(-postprocess.logit(0.3))) == pytest.approx(0.3)


def test_threshold_study_and_choice() -> None:
    class Case:  # the two attributes the study reads
        def __init__(self, mask):
            self.mask = mask
            self.volume = type("V", (), {"spacing": (1.0, 1.0, 1.0)})()

    gt = np.zeros((4, 8, 8), dtype=bool)
    gt[1:3, 2:6, 2:6] = True
    # logits: +1 inside the mask, a ring at -0.6 (p≈0.35) around it, -5 elsewhere
    lg = np.full(gt.shape, -5.0)
    lg[1:3, 1:7, 1:7] = -0.6
    lg[gt] = 1.0
    study = tuning.threshold_study([Case(gt)], [lg], (0.3, 0.5))
    assert study[0]["mean volume Dice"] < study[1]["mean volume Dice"] == 1.0
    assert tuning.best_threshold(study) == 0.5


def test_threshold_study_is_volume_dice_at_each_threshold() -> None:
    """The one-pass study gives exactly metrics.volume_dice of binarize at every threshold, also for an
    empty truth, an empty prediction and thresholds out of order."""
    rng = np.random.default_rng(3)
    gt = rng.random((5, 16, 16)) < 0.3
    lg = (rng.normal(0, 2, gt.shape) + 2 * gt).astype(np.float32)
    for truth, logits in ((gt, lg), (np.zeros_like(gt), lg), (gt, np.full(gt.shape, -9, np.float32)),
                          (np.zeros_like(gt), np.full(gt.shape, -9, np.float32))):
        thresholds = (0.7, 0.2, 0.5, 0.9)
        got = tuning._dice_per_threshold(logits, truth, thresholds)
        assert got == [metrics.volume_dice(postprocess.binarize(logits, p), truth) for p in thresholds]


class _Case:  # the attributes the studies read (a module-level class: the pool pickles it)
    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.volume = type("V", (), {"spacing": (1.0, 1.0, 1.0)})


@pytest.mark.parametrize("workers", [1, 2])
def test_postprocess_study_known_answer_on_the_pool_and_in_process(workers: int) -> None:
    """A stray voxel 18 mm from the true lungs: without clean HD95 is > 0 and Dice < 1; clean removes
    it and fills the hole, and both rows are exact; the same on worker processes as in this one."""
    truth = _two_lungs_and_noise()
    truth[0, 18, 18], truth[4, 5, 5] = False, True  # the two clean lungs
    logits = np.where(_two_lungs_and_noise(), 3.0, -3.0)
    study, by_threshold = tuning.postprocess_study([_Case(truth), _Case(truth)], [logits, logits], 0.5,
                                                   workers)
    none, cleaned = study
    assert by_threshold.shape == (2, len(tuning.THRESHOLDS)) and np.all(by_threshold == 1.0)
    assert cleaned["mean volume Dice"] == 1.0 and cleaned["mean HD95 mm"] == 0.0
    assert none["mean volume Dice"] == pytest.approx(2 * 587 / (588 + 588))
    assert none["mean HD95 mm"] == 0.0 < none["mean MSD mm"]  # one voxel of 588 is not the 95th percentile
    assert tuning.helps(study) is False  # HD95 is not lowered: the rule keeps it off


def _rim_and_strays() -> tuple[np.ndarray, np.ndarray]:
    """Truth: two lungs, each with a rim column the network doubts (p 0.55); logits: the lungs' cores
    at p 0.85, three stray blobs at p 0.65 and one at p 0.95, all far from the lungs."""
    truth = np.zeros((6, 30, 30), dtype=bool)
    truth[1:5, 2:10, 2:11] = truth[1:5, 2:10, 14:23] = True
    logits = np.full(truth.shape, postprocess.logit(0.05))
    logits[truth] = postprocess.logit(0.85)
    logits[1:5, 2:10, 10] = logits[1:5, 2:10, 22] = postprocess.logit(0.55)
    for x in (2, 8, 14):
        logits[1:5, 20:23, x:x + 3] = postprocess.logit(0.65)
    logits[1:5, 25:28, 25:28] = postprocess.logit(0.95)
    return truth, logits


def test_tune_chooses_the_threshold_again_on_the_post_processed_masks() -> None:
    """Raw masks: a low threshold keeps the doubted rims but also the strays, so 0.7 is best (ties with
    0.8, the lower first); post-processing helps there (the p 0.95 blob goes); on the post-processed
    masks every threshold up to 0.5 is exact (the strays are small components, the rims are lung)."""
    truth, logits = _rim_and_strays()
    threshold, keep, study, pp_study = tuning.tune([_Case(truth)], [logits], workers=1)
    raw = {r["threshold"]: r["mean volume Dice"] for r in study}
    cleaned = {r["threshold"]: r[tuning.CLEANED] for r in study}
    assert tuning.best_threshold(study) == 0.7 and raw[0.7] == raw[0.8] > raw[0.5]
    assert pp_study[1]["mean HD95 mm"] < pp_study[0]["mean HD95 mm"] and keep is True
    assert all(cleaned[p] == 1.0 for p in (0.2, 0.3, 0.4, 0.5)) and cleaned[0.5] > cleaned[0.6]
    assert threshold == 0.2  # the first of the tied best
    assert cleaned[0.6] == pytest.approx(2 * 512 / (512 + 576))


def test_tune_keeps_the_first_threshold_without_post_processing() -> None:
    """Nothing for post-processing to remove: the threshold is the raw study's."""
    truth = _two_lungs_and_noise()
    truth[0, 18, 18], truth[4, 5, 5] = False, True
    logits = np.where(truth, 3.0, -3.0)
    threshold, keep, study, _ = tuning.tune([_Case(truth)], [logits], workers=1)
    assert keep is False and threshold == tuning.best_threshold(study) == 0.2


def _reference_keep_largest(mask: np.ndarray, n: int) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= n:
        return mask.copy()
    keep = np.argsort(np.bincount(labels.ravel())[1:], kind="stable")[::-1][:n] + 1
    return np.isin(labels, keep)


@pytest.mark.parametrize("seed", range(6))
def test_fast_clean_equals_scipy_on_random_masks(seed: int) -> None:
    """The bounding-box implementations give exactly scipy's full-grid answer, also for blobs that
    touch the edge of the grid and holes that open onto it."""
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((12, 20, 18)) > 0.45 + 0.05 * seed)
    if seed % 2:
        mask[:, :, 0] = True  # touches the grid edge
    assert np.array_equal(postprocess.fill_holes(mask), ndimage.binary_fill_holes(mask))
    for n in (1, 2, 3):
        assert np.array_equal(postprocess.keep_largest(mask, n), _reference_keep_largest(mask, n))
    assert not postprocess.clean(np.zeros((3, 4, 4), dtype=bool)).any()


def test_the_one_binarize_keeps_probabilities_strictly_above_the_threshold() -> None:
    prob = np.array([0.2, 0.5, 0.51, 0.9])
    logits = np.log(prob / (1 - prob))  # binarize takes logits: sigmoid(logit) > threshold
    np.testing.assert_array_equal(postprocess.binarize(logits, 0.5), [False, False, True, True])
    np.testing.assert_array_equal(postprocess.binarize(logits, 0.85), [False, False, False, True])



def test_components_number_as_scipy_does() -> None:
    """Known answer: scipy.ndimage.label (face connectivity) on random masks, views and empty ones."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        shape = tuple(int(s) for s in rng.integers(1, 24, size=3))
        mask = rng.random(shape) > rng.uniform(0.3, 0.8)
        for m in (mask, mask[::2, :, ::-1], np.zeros_like(mask)):
            want, n = ndimage.label(m)
            got, k = postprocess.components(m)
            assert k == n and np.array_equal(got, want)
