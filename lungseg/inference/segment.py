"""The one segmentation path after the network: logits → mask → right/left lungs → QC.

``predict`` (and so ``batch``), the QC calibration, the dense-lung study and the viewer's masks all
go through :func:`segment`, so a mask, its sides and its verdict are made the same way everywhere.
The logits come from :class:`lungseg.inference.predict.Network` (PyTorch or ONNX Runtime) or, for a
trained run in memory, :func:`lungseg.inference.forward.run_logits`; all arrays are on the
canonical grid (:mod:`lungseg.io.orient`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lungseg.inference import postprocess, qc, qc_scores, sides
from lungseg.io.dicom import Volume


@dataclass
class Segmentation:
    """What :func:`segment` made of one volume's logits (bool/uint8 arrays (z, y, x))."""

    raw: np.ndarray
    """Logits above the threshold, before post-processing."""
    mask: np.ndarray
    """The final lung mask (post-processed when asked)."""
    labels: np.ndarray
    """1 = the patient's right lung, 2 = left lung (from the geometry)."""
    split: sides.SplitInfo
    scores: dict | None
    """QC scores (:func:`lungseg.inference.qc_scores.measure`); None without QC."""
    verdict: qc.QCResult | None
    """QC verdict under the shipped limits; None without QC."""


def segment(canon: Volume, logits: np.ndarray, threshold: float, clean: bool,
            logits_of: Callable[[np.ndarray], np.ndarray] | None = None, check: bool = True,
            timings: dict[str, float] | None = None) -> Segmentation:
    """Threshold ``logits`` (z, y, x) of the canonical volume ``canon`` at the probability ``threshold``,
    post-process when ``clean``, split right from left by the geometry, and (``check``) judge the mask;
    ``logits_of`` runs the network on a few HU slices for QC's flip agreement (skipped when None);
    ``timings`` receives QC's seconds per group."""
    raw = postprocess.binarize(logits, threshold)
    mask = postprocess.clean(raw) if clean else raw
    labels, split = sides.split_lungs_with_info(mask, canon)
    scores = verdict = None
    if check:
        scores = qc_scores.measure(canon.hu, canon.spacing, logits, raw, labels, threshold, logits_of,
                                   timings)
        verdict = qc.assess(scores)
    return Segmentation(raw, mask, labels, split, scores, verdict)
