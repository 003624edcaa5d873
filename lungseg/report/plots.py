"""Figures of the report's notebooks (the QC, dense-lung and cohort figures live with their studies:
``qc_view.score_figure``, ``dense.figure``, ``cohort_report.volume_figure``), and :func:`show`, the
one way a notebook writes and displays any of them."""

from __future__ import annotations

import io
import math
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from lungseg.inference import postprocess
from lungseg.io.cache import Case
from lungseg.io.overlay import (  # noqa: F401 - the report's figures draw with the one overlay helper
    DISPLAY_WINDOW_HU,
    DPI,
    LABEL_COLOURS,
    LABEL_NAMES,
    MASK_ALPHA,
    MASK_COLOUR,
    PNG_METADATA,
    coronal_slice,
    overlay_rgba,
    save_figure,
    show_overlay,
)


def show(fig: Figure, path: str | os.PathLike[str] | None = None) -> None:
    """The one way a notebook shows a figure: written to ``path`` when given (:func:`save_figure`: PNG,
    same bytes on rerun), displayed as that PNG image, then closed. A PNG, not the Figure object:
    Jupyter draws a Figure only once pyplot's inline backend is active, and a Figure made without
    pyplot (as QC's and the cohort's are) otherwise reaches the page as its text, ``<Figure size …>``."""
    from IPython.display import Image, display

    if path is not None:
        data = save_figure(fig, path).read_bytes()
    else:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata=PNG_METADATA)
        data = buf.getvalue()
    display(Image(data=data, alt=describe(fig)))
    plt.close(fig)  # pyplot's figures would show a second time at the cell's end


def describe(fig: Figure) -> str:
    """A figure's text for readers who cannot see it (the HTML's alt text): its title, else its axes'."""
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""  # no public getter
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return title or "; ".join(titles[:4]) or "figure"


def _show_coronal(ax: plt.Axes, case: Case, overlay: bool, labels: np.ndarray | None = None) -> None:
    image, mask, extent = coronal_slice(case)
    if labels is not None:  # (z, y, x) labels 1 = right, 2 = left lung, on the case's grid
        mask = np.asarray(labels[:, labels.shape[1] // 2, :])
    show_overlay(ax, image, mask if overlay else np.zeros_like(mask), extent, "lower")
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


def coronal_grid(cases: list[Case], ncols: int = 4, labels: list[np.ndarray] | None = None,
                 notes: list[str] | None = None) -> Figure:
    """Middle coronal slice of every case with its mask (or ``labels``: right lung blue, left
    orange) overlaid, at the physical aspect; ``notes`` are added to the titles."""
    ncols = max(1, min(ncols, len(cases)))
    nrows = max(1, math.ceil(len(cases) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows),
                             constrained_layout=True, squeeze=False)
    for ax in axes.flat[len(cases):]:
        ax.axis("off")
    for i, (ax, case) in enumerate(zip(axes.flat, cases, strict=False)):
        _show_coronal(ax, case, overlay=True, labels=labels[i] if labels is not None else None)
        note = f", {notes[i]}" if notes else ""
        ax.set_title(f"{case.case_id} ({case.volume.shape[0]} slices{note})", fontsize=9)
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


def metric_histograms(accuracy: np.ndarray, dice: np.ndarray, title: str) -> Figure:
    """Figures 4/5: histograms of per-slice accuracy (left) and Dice (right)."""
    fig, (ax_a, ax_d) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    ax_a.hist(accuracy, bins=40, color="tab:blue")
    ax_a.set_xlabel("per-slice accuracy")
    ax_d.hist(dice, bins=40, range=(0.0, 1.0), color="tab:orange")
    ax_d.set_xlabel("per-slice Dice (report: empty/empty = 0)")
    for ax in (ax_a, ax_d):
        ax.set_ylabel("slices")
    fig.suptitle(f"{title} ({len(dice)} slices): mean accuracy {np.mean(accuracy):.4f}, "
                 f"mean Dice {np.mean(dice):.4f}")
    return fig


def example_grid(records: list[dict], images: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                 logits: dict[str, np.ndarray], title: str) -> Figure:
    """Figures 6–8: one row per slice record: image | ground truth | prediction (512², HU window)."""
    fig, axes = plt.subplots(len(records), 3, figsize=(9, 3.1 * len(records)),
                             constrained_layout=True, squeeze=False)
    for row, r in zip(axes, records, strict=True):
        c, i = r["case"], r["slice"]
        row[0].imshow(images[c][i], cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1])
        row[1].imshow(masks[c][i], cmap="gray", vmin=0, vmax=1)
        row[2].imshow(postprocess.binarize(logits[c][i]), cmap="gray", vmin=0, vmax=1)
        row[0].set_ylabel(f"{c}\nz = {r['location_mm']:.1f} mm", fontsize=9)
        row[1].set_title(f"Dice {r['dice']:.3f}, accuracy {r['accuracy']:.4f}", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image")
    axes[0][2].set_title("prediction")
    fig.suptitle(title)
    return fig


def architecture(layers: list[dict], title: str = "UNet (from the model object)") -> Figure:
    """Figure 2: the UNet's blocks as boxes, height ∝ log2 of the spatial size, width ∝ channels."""
    fig, ax = plt.subplots(figsize=(12, 4.8), constrained_layout=True)
    colours = {"ConvBlock": "tab:blue", "MaxPool2d": "tab:gray", "Dropout2d": "lightgray",
               "ConvTranspose2d": "tab:green", "Conv2d": "tab:red"}
    for k, layer in enumerate(layers):
        size = layer["out_size"][0]
        height = np.log2(size)
        width = 0.25 + 0.55 * np.log2(layer["out_channels"] + 1) / 8
        ax.add_patch(plt.Rectangle((k - width / 2, 0), width, height,
                                   color=colours.get(layer["type"], "tab:purple"), alpha=0.8))
        ax.text(k, height + 0.15, f"{layer['out_channels']}ch\n{size}²", ha="center", fontsize=7)
        ax.text(k, -0.3, layer["name"], ha="center", va="top", rotation=60, fontsize=7)
    ax.set_xlim(-1, len(layers))
    ax.set_ylim(-2.5, np.log2(max(lay["out_size"][0] for lay in layers)) + 1.5)
    ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), loc="upper right", fontsize=8, ncol=5)
    ax.set_title(f"{title}: box height = log2(spatial size), label = output channels × size")
    return fig


ERROR_COLOURS = {1: (1.0, 0.15, 0.15), 2: (0.2, 0.6, 1.0)}
"""Error overlays: 1 = lung missed by the prediction (red), 2 = predicted where there is none (blue)."""


def error_figure(case: Case, pred: np.ndarray, profile: dict[str, np.ndarray], title: str,
                 n_slices: int = 3) -> Figure:
    """Where a prediction fails: missed/extra lung (mL) per slice along the body axis, and the
    ``n_slices`` slices with the largest error, with the errors overlaid in colour."""
    err = profile["missed_ml"] + profile["extra_ml"]
    worst = sorted(np.argsort(err, kind="stable")[::-1][:n_slices].tolist())
    fig = plt.figure(figsize=(4 * n_slices, 7.5), constrained_layout=True)
    grid = fig.add_gridspec(2, n_slices, height_ratios=[1, 1.6])
    ax = fig.add_subplot(grid[0, :])
    ax.plot(profile["position_mm"], profile["missed_ml"], color=ERROR_COLOURS[1], label="lung missed")
    ax.plot(profile["position_mm"], profile["extra_ml"], color=ERROR_COLOURS[2], label="extra (false lung)")
    ax.set_xlabel("slice position along the body axis (mm)")
    ax.set_ylabel("mL per slice")
    ax.legend()
    truth = np.asarray(case.mask, dtype=bool)
    for k, z in enumerate(worst):
        a = fig.add_subplot(grid[1, k])
        labels = np.where(truth[z] & ~pred[z], 1, np.where(pred[z] & ~truth[z], 2, 0)).astype(np.uint8)
        a.imshow(case.volume.hu[z], cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1])
        a.contour(truth[z], levels=[0.5], colors="lime", linewidths=0.6)
        a.imshow(overlay_rgba(labels, ERROR_COLOURS, alpha=0.8), interpolation="nearest")
        a.set_title(f"slice {z} (z = {profile['position_mm'][z]:.0f} mm): {profile['missed_ml'][z]:.1f} mL "
                    f"missed, {profile['extra_ml'][z]:.1f} mL extra", fontsize=8)
        a.axis("off")
    fig.suptitle(title + " (green: ground-truth outline)")
    return fig
