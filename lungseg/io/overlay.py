"""The one overlay helper: a mask drawn over a CT image in fixed colours, the lung window, PNGs with
identical bytes on rerun, and ``predict``'s overview image. The report's figures
(:mod:`lungseg.report.plots`) and the slice viewer draw with these."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lungseg import paths
from lungseg.io.cache import Case
from lungseg.io.dicom import Volume

# Lung window (level -600 HU, width 1500 HU) for display only.
DISPLAY_WINDOW_HU = (-1350.0, 150.0)
MASK_COLOUR = (1.0, 0.25, 0.1)
MASK_ALPHA = 0.45
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {1: (0.15, 0.55, 1.0), 2: (1.0, 0.55, 0.1)}
"""Per label: 1 = the patient's right lung (blue), 2 = the left lung (orange); a bool mask is label 1
in MASK_COLOUR."""
LABEL_NAMES = {1: "right lung", 2: "left lung"}
DPI = 110
# Written into no PNG: matplotlib's default "Software" entry names its version, so a figure would
# change bytes with an upgrade; without it and without a date, a rerun writes identical files.
PNG_METADATA: dict[str, str | None] = {"Software": None}


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG with fixed metadata (identical bytes on rerun); return the path."""
    out = paths.resolve(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, metadata=PNG_METADATA)
    return out


def overlay_rgba(labels: np.ndarray, colours: dict[int, tuple[float, ...]] | None = None,
                 alpha: float = MASK_ALPHA) -> np.ndarray:
    """(H, W, 4) RGBA of a 2D mask: bool in MASK_COLOUR, integer labels in LABEL_COLOURS (or
    ``colours``); transparent where 0. The one overlay drawer of every figure and the viewer."""
    labels = np.asarray(labels)
    rgba = np.zeros((*labels.shape, 4))
    if labels.dtype == bool:
        colours = colours or {1: MASK_COLOUR}
        labels = labels.astype(np.uint8)
    for value, colour in (colours or LABEL_COLOURS).items():
        rgba[labels == value] = (*colour[:3], colour[3] if len(colour) > 3 else alpha)
    return rgba


def show_overlay(ax: plt.Axes, image: np.ndarray, labels: np.ndarray, extent: list[float] | None = None,
                 origin: str = "upper", window: tuple[float, float] = DISPLAY_WINDOW_HU) -> None:
    """``image`` (HU, grey, ``window``) with :func:`overlay_rgba` of ``labels`` on top."""
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], extent=extent, origin=origin,
              interpolation="nearest")
    ax.imshow(overlay_rgba(labels), extent=extent, origin=origin, interpolation="nearest")


def coronal_slice(case: Case) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Middle coronal slice (z, x) of image (HU) and mask, and its imshow extent in mm.

    The extent spans nx*dx by nz*dz mm, so the image shows the true physical aspect ratio; z grows
    upwards (ascending position = towards the head for these axial series).
    """
    vol = case.volume
    y = vol.hu.shape[1] // 2
    dz, _, dx = vol.spacing
    nz, _, nx = vol.hu.shape
    extent = [0.0, nx * dx, 0.0, nz * dz]
    return np.asarray(vol.hu[:, y, :]), np.asarray(case.mask[:, y, :]), extent


OVERVIEW_SIZE_IN = (11.0, 6.0)


def overview_figure(volume: Volume, mask: np.ndarray, title: str = "") -> Figure:
    """Middle axial (y, x) and middle coronal (z, x) slices with ``mask`` (bool, or labels 1 = right,
    2 = left lung) overlaid, in mm (true aspect), of a volume in the canonical orientation.

    Built without pyplot (no global figure state, no display backend needed).
    """
    fig = Figure(figsize=OVERVIEW_SIZE_IN, layout="constrained")
    ax_axial, ax_coronal = fig.subplots(1, 2)
    nz, ny, nx = volume.shape
    dz, dy, dx = volume.spacing
    k = nz // 2
    # Axial: row 0 (anterior for standard orientation) at the top, as radiology displays it.
    show_overlay(ax_axial, np.asarray(volume.hu[k]), np.asarray(mask[k]),
                       [0.0, nx * dx, ny * dy, 0.0], "upper")
    ax_axial.set_title(f"axial slice {k} (position {volume.positions[k]:.1f} mm)")
    ax_axial.set_xlabel("x (mm)")
    ax_axial.set_ylabel("y (mm)")
    image, _, extent = coronal_slice(Case(volume, np.asarray(mask, dtype=bool)))
    show_overlay(ax_coronal, image, np.asarray(mask)[:, ny // 2, :], extent, "lower")
    ax_coronal.set_title(f"coronal row {ny // 2}")
    ax_coronal.set_xlabel("x (mm)")
    ax_coronal.set_ylabel("z (mm)")
    if np.asarray(mask).dtype != bool:  # labels: say which colour is which side
        handles = [Patch(color=LABEL_COLOURS[v], label=f"{v}: patient's {LABEL_NAMES[v]}")
                   for v in sorted(LABEL_COLOURS)]
        fig.legend(handles=handles, loc="lower center", ncols=2, frameon=False)
        ax_axial.set_xlabel("x (mm), patient's right on the left (radiological view)")
    fig.suptitle(title or f"{volume.case_id}: predicted lungs")
    return fig


def write_overview(volume: Volume, mask: np.ndarray, path: str | os.PathLike[str],
                   title: str = "") -> Path:
    """Write :func:`overview_figure` as PNG via :func:`lungseg.report.save_figure`."""
    return save_figure(overview_figure(volume, mask, title), path)
