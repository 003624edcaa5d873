"""The thresholding rule and the 3D post-processing of predicted lung masks (the choice of threshold
and post-processing, on training patients only: :mod:`lungseg.evaluation.tuning`)."""

from __future__ import annotations

import math

import cc3d
import numpy as np

DEFAULT_THRESHOLD = 0.5
"""Probability above which a pixel is lung, unless a run's manifest records a tuned one."""
LUNG_COMPONENTS = 2
"""Both lungs: the two largest 3D components (face-connected) are kept."""


def logit(p: float) -> float:
    """log(p / (1 - p)): the logit threshold equivalent to probability ``p``."""
    return math.log(p / (1.0 - p))


def check_threshold(threshold: float) -> float:
    """``threshold`` when it is a probability strictly between 0 and 1 (the one check of every command
    and of :func:`binarize`); ValueError otherwise."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold is a probability strictly between 0 and 1, got {threshold}")
    return threshold


def binarize(logits, threshold: float = DEFAULT_THRESHOLD):
    """The one thresholding rule: bool mask where sigmoid(``logits``) > ``threshold`` (a probability
    strictly between 0 and 1), for numpy arrays and torch tensors alike."""
    return logits > logit(check_threshold(threshold))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box (one slice per axis) of the non-zero voxels of a 3D ``mask``, or None when it is
    empty. By projections, first along the slices: no copy of the volume, ~4x faster than
    ``ndimage.find_objects`` on a 150 x 512 x 512 mask."""
    mask = np.asarray(mask)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    plane = mask[zs[0]:zs[-1] + 1].any(axis=0)
    ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return tuple(slice(int(v[0]), int(v[-1]) + 1) for v in (zs, ys, xs))


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected (6-connected) components of a bool (z, y, x) ``mask``: unsigned labels 1..n
    numbered as ``scipy.ndimage.label`` numbers them (raster order of each component's first voxel),
    and n. connected-components-3d gives the same labels 2-3x faster than scipy (0.072 -> 0.026 s on a
    predicted lung mask's 140 x 220 x 473 box): post-processing, the right/left split and the studies
    label hundreds of masks per report."""
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask, dtype=bool), connectivity=6,
                                          return_N=True)
    return labels, int(n)


def keep_largest(mask: np.ndarray, n: int = LUNG_COMPONENTS) -> np.ndarray:
    """The ``n`` largest 6-connected components of a bool (z, y, x) mask (ties: lower label first)."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    box = bounding_box(mask)
    if box is None:
        return out
    labels, count = components(mask[box])  # on the bounding box only: same components, less work
    if count <= n:
        out[box] = mask[box]
        return out
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes, kind="stable")[::-1][:n] + 1
    chosen = np.zeros(count + 1, dtype=bool)  # a lookup table: one pass, unlike np.isin's sort
    chosen[keep] = True
    out[box] = chosen[labels]
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the background regions of a bool (z, y, x) mask that are not 6-connected to the edge of
    the grid (what ``scipy.ndimage.binary_fill_holes`` does), by labelling the background of the
    mask's bounding box padded by one voxel: the grid outside the box is one connected background,
    so a region is a hole exactly when it does not reach the padding. Several times faster."""
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return mask.copy()
    background, _ = components(~np.pad(mask[box], 1))
    outside = background[0, 0, 0]
    out = mask.copy()
    out[box] |= (background != outside)[1:-1, 1:-1, 1:-1]
    return out


def clean(mask: np.ndarray, n: int = LUNG_COMPONENTS) -> np.ndarray:
    """Keep the ``n`` largest components, then fill fully enclosed 3D holes."""
    return fill_holes(keep_largest(mask, n))


def segment(logits: np.ndarray, threshold: float = DEFAULT_THRESHOLD, clean: bool = False) -> np.ndarray:
    """Bool (z, y, x) mask: :func:`binarize`, then :func:`clean` (the post-processing) if ``clean``."""
    mask = binarize(logits, threshold)
    return _clean(mask) if clean else mask


_clean = clean  # for segment(), whose flag of the same name (the setting's one name) hides the function
