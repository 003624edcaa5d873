"""Figures of the report. Every figure is built here and written by :func:`save_figure`."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from . import paths
from .cache import Case

# Lung window (level -600 HU, width 1500 HU) for display only.
DISPLAY_WINDOW_HU = (-1350.0, 150.0)
MASK_COLOUR = (1.0, 0.25, 0.1)
MASK_ALPHA = 0.45
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


def _show_coronal(ax: plt.Axes, case: Case, overlay: bool) -> None:
    image, mask, extent = coronal_slice(case)
    ax.imshow(image, cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1],
              extent=extent, origin="lower", interpolation="nearest")
    if overlay:
        rgba = np.zeros((*mask.shape, 4))
        rgba[mask] = (*MASK_COLOUR, MASK_ALPHA)
        ax.imshow(rgba, extent=extent, origin="lower", interpolation="nearest")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("z (mm)")


def coronal_figure(case: Case) -> Figure:
    """Figure 1: middle coronal slice of image and mask, side by side, at the physical aspect."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 5), constrained_layout=True)
    image, mask, extent = coronal_slice(case)
    _show_coronal(axes[0], case, overlay=False)
    axes[0].set_title(f"{case.case_id}: image (HU window {DISPLAY_WINDOW_HU[0]:.0f}"
                      f"…{DISPLAY_WINDOW_HU[1]:.0f})")
    axes[1].imshow(mask, cmap="gray", extent=extent, origin="lower", interpolation="nearest")
    axes[1].set_title(f"{case.case_id}: lung mask")
    axes[1].set_xlabel("x (mm)")
    dz, dy, dx = case.volume.spacing
    fig.suptitle(f"Middle coronal slice, spacing dz={dz:.2f} mm, dx={dx:.3f} mm")
    return fig


def coronal_grid(cases: list[Case], ncols: int = 4) -> Figure:
    """Middle coronal slice of every case with its mask overlaid, at the physical aspect."""
    ncols = max(1, min(ncols, len(cases)))
    nrows = max(1, math.ceil(len(cases) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows),
                             constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases, strict=False):
        _show_coronal(ax, case, overlay=True)
        ax.set_title(f"{case.case_id} ({case.volume.shape[0]} slices)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    return fig


def training_curves(history: dict[str, list[float]]) -> Figure:
    """Figure 3: loss (left) and binary accuracy (right) per epoch, train vs test."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    for ax, key, label in ((ax_loss, "loss", "0.5·BCE + 0.5·Dice loss"),
                           (ax_acc, "acc", "binary accuracy (threshold 0.5)")):
        ax.plot(epochs, history[f"train_{key}"], "o-", label="train")
        ax.plot(epochs, history[f"test_{key}"], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("Loss per epoch")
    ax_acc.set_title("Accuracy per epoch")
    return fig
