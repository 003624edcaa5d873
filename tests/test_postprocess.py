"""Post-processing and threshold choice on synthetic volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungseg import postprocess


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
    study = postprocess.threshold_study([Case(gt)], [lg], (0.3, 0.5))
    assert study[0]["mean volume Dice"] < study[1]["mean volume Dice"] == 1.0
    assert postprocess.best_threshold(study) == 0.5
