"""The slice viewer builds its widgets and draws the requested slice with both overlays."""

from __future__ import annotations

import numpy as np
from builders import case_of

from lungseg.io import cache
from lungseg.report import viewer


def _case() -> cache.Case:
    mask = np.zeros((3, 16, 16), dtype=bool)
    mask[1, 4:8, 4:8] = True
    return case_of(np.full((3, 16, 16), -1000, dtype=np.int16), mask)


def test_draw_slice_has_image_and_two_overlays() -> None:
    case = _case()
    fig = viewer.draw_slice(case, case.mask.copy(), 1, (-1350, 150))
    assert len(fig.axes[0].images) == 3
    assert "slice 1 (z = 3.0 mm)" in fig.axes[0].get_title()


def test_viewer_widget_controls() -> None:
    box = viewer.slice_viewer(_case())
    slider = box.children[0].children[0]
    assert (slider.min, slider.max, slider.value) == (0, 2, 1)
    pred_toggle = box.children[1].children[1]
    assert pred_toggle.disabled  # no prediction given


def test_right_and_left_labels_get_the_overview_colours() -> None:
    from lungseg.report.plots import LABEL_COLOURS

    case = _case()
    labels = np.zeros(case.mask.shape, dtype=np.uint8)
    labels[1, 4:8, 4:6], labels[1, 4:8, 6:8] = 1, 2
    fig = viewer.draw_slice(case, labels, 1, (-1350, 150), show_gt=False)
    rgba = fig.axes[0].images[-1].get_array()
    assert tuple(rgba[5, 4, :3]) == LABEL_COLOURS[1] and tuple(rgba[5, 7, :3]) == LABEL_COLOURS[2]


def test_the_window_starts_at_the_reports_window() -> None:
    from lungseg.report.plots import DISPLAY_WINDOW_HU

    window = viewer.slice_viewer(_case()).children[0].children[1]
    assert window.value == tuple(int(v) for v in DISPLAY_WINDOW_HU) == (-1350, 150)


def test_the_legend_names_the_colour_where_truth_and_prediction_overlap() -> None:
    # red 0.4 over green 0.4: alpha 0.4 + 0.4 * 0.6 = 0.64; red 0.4 / 0.64, green 0.24 / 0.64
    assert np.allclose(viewer.over((1, 0, 0, 0.4), (0, 1, 0, 0.4)), (0.625, 0.375, 0, 0.64))
    case = _case()
    fig = viewer.draw_slice(case, case.mask.copy(), 1, (-1350, 150))
    box = fig.axes[0].get_legend()
    legend = {t.get_text(): h.get_facecolor()
              for t, h in zip(box.get_texts(), box.legend_handles, strict=True)}
    assert np.allclose(legend["prediction and truth (agree)"],
                       viewer.over(viewer.PRED_COLOUR, viewer.GT_COLOUR))
