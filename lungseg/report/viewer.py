"""An interactive slice viewer for JupyterLab: axial slices with ground-truth and prediction overlays.

Used by 03_eval when run interactively (``interactive = True``); headless runs (papermill, nbval)
skip it, since widgets need a live kernel and a browser.
"""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lungseg.io.cache import Case
from lungseg.report.plots import DISPLAY_WINDOW_HU, LABEL_COLOURS, LABEL_NAMES, MASK_ALPHA, overlay_rgba

GT_COLOUR = (0.1, 0.8, 0.2, 0.4)
PRED_COLOUR = (1.0, 0.2, 0.1, 0.4)
HU_RANGE = (-2000, 3000)
"""The window slider's range: wide enough for the report's window (DISPLAY_WINDOW_HU, −1350…150) and
for bone and metal, on a 10 HU step that holds both ends of the report's window exactly."""


def over(top: tuple[float, ...], bottom: tuple[float, ...]) -> tuple[float, float, float, float]:
    """The RGBA seen where ``top`` is drawn over ``bottom`` (both RGBA; alpha compositing)."""
    a = top[3] + bottom[3] * (1 - top[3])
    rgb = [(t * top[3] + b * bottom[3] * (1 - top[3])) / a for t, b in zip(top[:3], bottom[:3], strict=True)]
    return (*rgb, a)


def draw_slice(case: Case, prediction: np.ndarray | None, z: int, window: tuple[float, float],
               show_gt: bool = True, show_pred: bool = True) -> Figure:
    """One axial slice ``z`` (HU, ``window``) with ground truth (green) and the final prediction, with a
    legend: a bool (z, y, x) mask (red), as :func:`lungseg.inference.postprocess.segment` gives with the
    run's chosen
    threshold and post-processing, or its right/left labels (1/2, :mod:`lungseg.inference.sides`) in the
    colours of ``overview.png``."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(case.volume.hu[z], cmap="gray", vmin=window[0], vmax=window[1])
    if show_gt:
        ax.imshow(overlay_rgba(np.asarray(case.mask[z], dtype=bool), {1: GT_COLOUR}))
    handles = [Patch(color=GT_COLOUR, label="ground truth")] if show_gt else []
    if show_pred and prediction is not None:
        pred = np.asarray(prediction[z])
        # bool: one colour; labels (1 = right, 2 = left lung): the colours of overview.png
        colours = ({"prediction": PRED_COLOUR} if pred.dtype == bool else
                   {f"prediction: {LABEL_NAMES[v]}": (*LABEL_COLOURS[v], MASK_ALPHA)
                    for v in sorted(LABEL_COLOURS)})
        ax.imshow(overlay_rgba(pred, {1: PRED_COLOUR} if pred.dtype == bool else None))
        handles += [Patch(color=c, label=name) for name, c in colours.items()]
        if show_gt:  # where both are drawn the colours mix: say what the mix means
            handles += [Patch(color=over(c, GT_COLOUR), label=f"{name} and truth (agree)")
                        for name, c in colours.items()]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                  ncols=min(len(handles), 3), frameon=False, fontsize=8)
    ax.set_title(f"{case.case_id}, slice {z} (z = {case.volume.positions[z]:.1f} mm)")
    ax.axis("off")
    return fig


def slice_viewer(case: Case, prediction: np.ndarray | None = None) -> widgets.VBox:
    """A widget: slider over axial slices, HU window, overlay toggles. Display it in a notebook."""
    nz = case.volume.shape[0]
    z = widgets.IntSlider(value=nz // 2, min=0, max=nz - 1, description="slice")
    # A wide slider with a whole-number readout: "-1000.0 – 400.0" was cut off at the default width.
    # It starts at the report's window (its range holds it: a value outside is clamped silently).
    window = widgets.IntRangeSlider(value=tuple(int(v) for v in DISPLAY_WINDOW_HU), min=HU_RANGE[0],
                                    max=HU_RANGE[1], step=10, description="HU window",
                                    style={"description_width": "initial"},
                                    layout=widgets.Layout(width="480px"))
    gt = widgets.Checkbox(value=True, description="ground truth")
    pred = widgets.Checkbox(value=prediction is not None, description="prediction",
                            disabled=prediction is None)

    def show(z: int, window: tuple[float, float], gt: bool, pred: bool) -> None:
        draw_slice(case, prediction, z, window, gt, pred)
        plt.show()

    out = widgets.interactive_output(show, {"z": z, "window": window, "gt": gt, "pred": pred})
    return widgets.VBox([widgets.HBox([z, window]), widgets.HBox([gt, pred]), out])
