"""Resampling (N, H, W) slice stacks with numpy, as separable matrices that reproduce torch's
``interpolate``: area averaging down, bilinear up. Shared by the ONNX session (no torch at inference),
the field-of-view rescaling and the failure generator, so one definition serves all three."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 rows averaging the windows of torch's adaptive average pooling
    (``interpolate(mode="area")``): row i covers [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        start, stop = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:stop] = 1.0 / (stop - start)
    return m


@lru_cache(maxsize=8)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 linear interpolation weights of torch's ``interpolate(mode="bilinear",
    align_corners=False)`` along one axis (half-pixel centres, clamped at the edges)."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    scale = n_in / n_out
    for o in range(n_out):
        src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(src), n_in - 1)
        i1, frac = min(i0 + 1, n_in - 1), src - i0
        m[o, i0] += 1.0 - frac
        m[o, i1] += frac
    return m


def resample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) → (N, h, w): ``rows @ x[i] @ cols.T`` for every slice i (separable resampling), with
    ``rows`` (h, H) and ``cols`` (w, W) (None: ``rows``).

    Computed as two large matrix products over the whole stack, not two small ones per slice: the
    same sums (each output is one dot product over the same axis; equal bits in
    ``benchmarks/resample_timing.py``). On an idle machine both forms take about the same time
    (``figures/resample_timing.json``); while another process competed for the cores, the per-slice
    form's many small BLAS calls ran several times slower in this session's profile of the QC study.
    """
    cols = rows if cols is None else cols
    n, h, w = x.shape
    oh, ow = rows.shape[0], cols.shape[0]
    t = rows @ np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(h, n * w)  # (h', N*W): along y
    t = np.ascontiguousarray(t.reshape(oh, n, w).transpose(1, 0, 2)).reshape(n * oh, w)
    return (t @ cols.T).reshape(n, oh, ow)  # along x
