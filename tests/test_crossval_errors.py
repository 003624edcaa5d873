"""The weakest-patient analysis: per-slice missed/extra volumes with known answers, and its figure."""

from __future__ import annotations

import numpy as np
from builders import case_of

from lungseg.evaluation import crossval
from lungseg.io import cache
from lungseg.report import plots


def _case() -> cache.Case:
    mask = np.zeros((4, 8, 8), dtype=bool)
    mask[1:3, 2:6, 2:6] = True  # 16 voxels on slices 1 and 2
    return case_of(np.full((4, 8, 8), -1000, dtype=np.int16), mask, spacing=(2.0, 0.5, 0.5))


def test_error_profile_counts_missed_and_extra_millilitres() -> None:
    case = _case()
    pred = case.mask.copy()
    pred[2] = False  # 16 voxels missed on slice 2
    pred[3, 0, :3] = True  # 3 voxels extra on slice 3
    prof = crossval.error_profile(case, pred)
    voxel_ml = 2.0 * 0.5 * 0.5 / 1000
    np.testing.assert_allclose(prof["missed_ml"], [0, 0, 16 * voxel_ml, 0])
    np.testing.assert_allclose(prof["extra_ml"], [0, 0, 0, 3 * voxel_ml])
    fig = plots.error_figure(case, pred, prof, "test", n_slices=2)
    titles = [a.get_title() for a in fig.axes[1:]]
    assert titles[0].startswith("slice 2 ") and titles[1].startswith("slice 3 ")


def test_worst_patient_is_the_lowest_both_lungs_dice() -> None:
    rows = [{"case": "A", "structure": "both lungs", "dice": 0.97},
            {"case": "B", "structure": "Lung_R", "dice": 0.5},
            {"case": "B", "structure": "both lungs", "dice": 0.96}]
    assert crossval.worst_patient(rows)["case"] == "B"
