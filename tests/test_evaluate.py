"""Evaluation plumbing: which slices are test slices, example picks, tables (known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from lungseg import data, evaluate


def test_test_mask_cases_split() -> None:
    masks = evaluate.test_case_mask("cases", ["A", "B", "C"], [2, 3, 1], ["B"], 42)
    assert [m.tolist() for m in masks] == [[False, False], [True, True, True], [False]]


def test_test_mask_slice_split_matches_the_random_split() -> None:
    n = [4, 5, 3]
    masks = evaluate.test_case_mask("slices", ["A", "B", "C"], n, [], 42)
    flat = np.concatenate(masks)
    _, test_idx = data.split_slices(sum(n), 42)
    assert sorted(np.flatnonzero(flat).tolist()) == sorted(test_idx)
    assert [len(m) for m in masks] == n


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
    rows = evaluate.results_rows(summary)
    assert rows[0]["Dice mean [min–max]"] == "0.8500 [0.8000–0.9000]"
    assert rows[-1]["Dice mean [min–max]"] == "0.95–0.98"


def test_load_runs_refuses_to_train(tmp_path, monkeypatch) -> None:
    from lungseg import paths, train

    try:
        root = paths.data_dir()
    except FileNotFoundError:
        pytest.skip("needs the data dir")
    if not paths.images_dir(root, "Case_000").is_dir():
        pytest.skip("needs Case_000")
    monkeypatch.setattr(train, "RUNS", tmp_path)
    cfg = train.TrainConfig(cases=["Case_000"], split="slices", image_size=32, epochs=1)
    with pytest.raises(FileNotFoundError, match="run 02_train with the same parameters first"):
        evaluate.load_runs(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing was trained or created


def test_non_square_slices_are_refused_clearly() -> None:
    from lungseg import cache, data, dicom, model

    hu = np.zeros((2, 16, 24), dtype=np.int16)
    vol = dicom.Volume(hu=hu, spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                       positions=np.array([0.0, 3.0]), files=("a", "b"), case_id="Case_X",
                       series_uid="1", orientation=(1, 0, 0, 0, 1, 0), sort_key="ImagePositionPatient")
    case = cache.Case(vol, np.zeros(hu.shape, dtype=bool))
    with pytest.raises(ValueError, match="Case_X: slices of .16, 24. pixels are not square"):
        evaluate.predict_logits(model.UNet(base_channels=4), case, 16)
    with pytest.raises(ValueError, match="not square"):
        data.case_tensors(case, 16, "window")
