"""Evaluation plumbing: which slices are test slices, example picks, tables (known answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import case_of

from lungseg.evaluation import evaluate
from lungseg.inference import forward
from lungseg.network import data, model, runs, selection
from lungseg.network.config import TrainConfig
from lungseg.report import tables


def _run_with_split(per_case: dict) -> runs.TrainResult:
    return runs.TrainResult(model.UNet(base_channels=4), {}, TrainConfig(), Path("run"),
                            manifest={"split": {"per_case": per_case}})


def test_split_record_and_test_masks_round_trip() -> None:
    case_ids = ["A", "A", "B", "B", "B", "C"]
    index = [0, 1, 0, 1, 2, 0]
    rec = runs.split_record(case_ids, index, [1, 2, 4])
    assert rec == {"A": {"slices": 2, "test": [1]}, "B": {"slices": 3, "test": [0, 2]},
                   "C": {"slices": 1, "test": []}}
    masks = runs.test_masks(_run_with_split(rec), ["A", "B", "C"], [2, 3, 1])
    assert [m.tolist() for m in masks] == [[False, True], [True, False, True], [False]]


def test_test_masks_follow_the_slice_split_of_the_dataset_order() -> None:
    n = [4, 5, 3]
    ids = [c for c, k in zip("ABC", n, strict=True) for _ in range(k)]
    index = [i for k in n for i in range(k)]
    _, test_idx = data.split_slices(sum(n), 42)
    masks = runs.test_masks(_run_with_split(runs.split_record(ids, index, test_idx)), list("ABC"), n)
    assert sorted(np.flatnonzero(np.concatenate(masks)).tolist()) == sorted(test_idx)


def test_test_masks_refuse_other_data() -> None:
    run = _run_with_split({"A": {"slices": 2, "test": [1]}})
    with pytest.raises(ValueError, match="case A with 3 slices was not in this run's data"):
        runs.test_masks(run, ["A"], [3])
    with pytest.raises(ValueError, match="case Z"):
        runs.test_masks(run, ["Z"], [3])
    with pytest.raises(runs.RunNotFoundError, match="no split record"):
        runs.test_masks(runs.TrainResult(model.UNet(base_channels=4), {}, TrainConfig(), Path("r")),
                        ["A"], [2])


def _rows() -> list[dict]:
    dice = [0.1, 0.2, 0.9, 0.5, 0.95, 0.3]
    cases = ["A", "A", "B", "B", "C", "C"]
    return [{"case": c, "slice": i, "split": "test", "dice": d, "dice_standard": d,
             "accuracy": 1.0, "mask_empty": False, "location_mm": float(i)}
            for i, (c, d) in enumerate(zip(cases, dice, strict=True))]


def test_pick_examples_three_patients() -> None:
    low = evaluate.pick_examples(_rows(), "test", "lowest")
    assert [(r["case"], r["dice"]) for r in low] == [("A", 0.1), ("C", 0.3), ("B", 0.5)]
    high = evaluate.pick_examples(_rows(), "test", "highest")
    assert [r["case"] for r in high] == ["C", "B", "A"]


def test_pick_examples_with_fewer_patients_than_three() -> None:
    rows = [r for r in _rows() if r["case"] == "A"]
    assert len(evaluate.pick_examples(rows, "test", "median")) == 1


def test_summarise_and_results_rows() -> None:
    patients = [{"case": "A", "dice": 0.9, "hd95_mm": 4.0, "msd_mm": 1.0},
                {"case": "B", "dice": 0.8, "hd95_mm": 6.0, "msd_mm": 2.0}]
    s = evaluate.summarise_patients(patients)
    assert s["dice"] == {"mean": pytest.approx(0.85), "min": 0.8, "max": 0.9}
    summary = evaluate.results_summary({"split": "cases", "image_size": 64}, _rows(), patients, None)
    rows = tables.results_rows(summary)
    assert rows[0]["Dice mean [min–max]"] == "0.8500 [0.8000–0.9000]"
    assert rows[-1]["Dice mean [min–max]"] == "0.95–0.98"


def test_report_runs_never_train_and_name_the_missing_record(tmp_path: Path) -> None:
    with pytest.raises(runs.RunNotFoundError, match="no trained runs recorded for profile 'cpu'.*run_all.sh"):
        selection.profile_runs("cpu", tmp_path)
    with pytest.raises(runs.RunNotFoundError, match="run ./run_all.sh"):
        selection.profile_runs("", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing was trained or created


def test_non_square_slices_are_inferred_through_a_square_field_but_never_trained_on() -> None:
    case = case_of(np.zeros((2, 16, 24), dtype=np.int16))
    logits = forward.predict_hu(model.UNet(base_channels=4), case.volume.hu, 16, name=case.case_id)
    assert logits.shape == (2, 16, 24) and np.isfinite(logits).all()  # via lungseg.inference.fov
    with pytest.raises(ValueError, match="Case_X: slices of .16, 24. pixels are not square"):
        data.case_tensors(case, 16, "window")
