"""Cross-validation bookkeeping: the fold rule and the summary of per-lung rows."""

from __future__ import annotations

import math

from lungseg.evaluation import crossval


def _row(case: str, structure: str, dice: float, hd95: float, msd: float) -> dict:
    return {"case": case, "structure": structure, "dice": dice, "hd95_mm": hd95, "msd_mm": msd}


def test_folds_cover_every_case_once() -> None:
    cases = [f"Case_{i:03d}" for i in range(12)]
    folds = crossval.folds(cases, 3)
    assert sorted(c for f in folds for c in f) == cases
    assert [len(f) for f in folds] == [4, 4, 4]


def test_an_empty_prediction_is_counted_and_named_not_averaged_as_inf() -> None:
    rows = [_row("Case_000", "both lungs", 0.98, 2.0, 0.5), _row("Case_001", "both lungs", 0.96, 4.0, 1.5),
            _row("Case_002", "both lungs", 0.0, math.inf, math.inf)]
    s = crossval.summarise(rows)["both lungs"]
    assert s["empty_predictions"] == ["Case_002"]
    assert s["hd95_mm"]["mean"] == 3.0 and s["msd_mm"]["max"] == 1.5  # over the two with a surface
    assert math.isclose(s["dice"]["mean"], (0.98 + 0.96) / 3)  # Dice 0 counts: it is a real score
    table = crossval.summary_rows({"both lungs": s})[0]
    assert "inf" not in table["HD95 mm"] and "nan" not in table["HD95 mm"]
    assert table["HD95 mm"].endswith("(without 1 empty: Case_002)")
    assert "empty" not in table["Dice"]


def test_all_predictions_empty_gives_dashes() -> None:
    rows = [_row("Case_000", "both lungs", 0.0, math.inf, math.inf)]
    table = crossval.summary_rows(crossval.summarise(rows))[0]
    assert table["HD95 mm"] == "– (without 1 empty: Case_000)"
