"""Per-series quality control of a predicted lung mask: ``pass``, ``review`` or ``fail``, with reasons.

:func:`measure` computes cheap scores from what ``predict`` already holds -- the HU volume, its
spacing, the network's logits, the thresholded mask and the final right/left labels, all on the
canonical grid (:mod:`lungseg.io.orient`: slice index ascending towards the head) -- plus, optionally,
one test-time change (the image mirrored left-right on a few slices, run through the network again).
:func:`assess` compares the scores with limits kept as data in ``qc_thresholds.json`` beside this
module, written by ``lungseg calibrate`` (:mod:`lungseg.evaluation.qc_calibrate`)
from the
cross-validation predictions of the training patients and failures made from them.

The checks (:data:`CHECKS`), each a score with the side on which it is bad:

* coverage: lung on the bottom or top slice of the scan (a cut base or apex), lung on the in-plane
  image edge or running into the air outside the body (a field of view too small);
* input: the HU of air and of soft tissue (a lost rescale intercept shifts both by ~1024 HU, a wrong
  slope scales them), image noise;
* anatomy: total lung volume (mL), the smaller lung's volume as a share of the larger's, how convex
  one lung is against the other and how far one stops short of the other at the back (consolidation
  left out), the mean HU inside the mask, the share of the raw mask that post-processing removed as
  stray parts;
* wall: how far each lung's outer wall stops short of the ribs on the middle slices of the chest
  (dense lung next to the chest wall that the mask left out: the mask alone cannot see it, the bone
  can);
* model confidence: the share of voxels whose probability lies between 0.1 and 0.9 per lung voxel,
  and the agreement of the mask with the network's answer on the mirrored image.

A score is bad when it lies beyond its limit; the status is the worst over the checks (``fail`` for
input not in HU, for no lung at all, and for any score beyond its fail limit; ``review`` otherwise).
This module imports neither torch nor the calibration code: ``predict`` runs it on every series.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

STATUSES = ("pass", "review", "fail")
SCORES_VERSION = 6
"""Bump when :func:`measure` computes any score differently (the calibration table is then recomputed)."""
THRESHOLDS_FILE = Path(__file__).with_name("qc_thresholds.json")
"""The shipped limits (``lungseg calibrate`` writes them; see docs/qc.md)."""

PADDING_BELOW_HU = -1500.0
"""Values below this are taken as padding outside the reconstruction circle (scanners write -2000,
-3024 or -32768 there), never as air or tissue, in the input checks."""
AIR_PERCENTILE = 5.0
"""The air level: this percentile of the image's non-padding values (outside air and lungs)."""
UNCERTAIN_P = 0.1
"""A voxel is uncertain when its probability lies in (UNCERTAIN_P, 1 - UNCERTAIN_P)."""
BORDER_PX = 2
"""A lung within this many pixels of the in-plane image edge touches the edge."""
FLIP_SLICES = 12
"""Slices with lung run through the network again, mirrored (the flip agreement's sample)."""
SUBSAMPLE = 2
"""Every SUBSAMPLE-th voxel along each axis for the volume-wide means and shares (1/8 of the work,
the same answer to well under 1 %: the scores are means over millions of voxels)."""


# ---- the checks -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One QC rule: a score (see :func:`measure`), the side on which it is bad, and how it is said.

    ``group``: the part of :func:`measure` that computes the score (its time is ``timings[group_s]``).
    ``scale``: "log" for ratios and volumes, whose sound spread is multiplicative. ``floor``: the least
    margin (in the score's own units, or in natural-log units for "log") between the most extreme
    sound calibration series and the limit, so that a score that never varied on the 12 training
    patients does not flag the first new patient that differs a little. ``severity``: the status when
    the limit is crossed ("fail" when nothing downstream can be right, e.g. input not in HU).
    ``fail_margins``: beyond this many margins past the limit a "review" check fails (None: never).
    ``sentence``: for a clinician, formatted with ``value`` and ``limit``.
    """

    name: str
    score: str
    bad_when: str
    group: str
    floor: float
    sentence: str
    severity: str = "review"
    scale: str = "linear"
    fail_margins: float | None = None


GAP_MM = 25.0
"""The mask stops short of the rib cage where the nearest lung voxel lies further than this (mm)."""

CHECKS: tuple[Check, ...] = (
    Check("cut_bottom", "bottom_cut_share", "above", "coverage", 0.03,
          "the lungs are cut by the bottom slice of the scan (lung base missing?): the bottom slice holds "
          "{value:.0%} of the widest lung slice's area"),
    Check("cut_top", "top_cut_share", "above", "coverage", 0.03,
          "the lungs are cut by the top slice of the scan (lung apex missing?): the top slice holds "
          "{value:.0%} of the widest lung slice's area"),
    Check("fov", "edge_slice_share", "above", "coverage", 0.01,
          "a lung touches the edge of the image on {value:.0%} of its slices (field of view too small?)"),
    Check("open", "open_slice_share", "above", "coverage", 0.01,
          "on {value:.0%} of the lung's slices the lung runs into the air outside the body: the field of "
          "view cuts through it (reconstruction too small?) or the mask leaks out of the chest"),
    Check("air", "air_hu", "above", "input", 150.0,
          "air measures {value:.0f} HU instead of about -1000 HU: the image is not in Hounsfield units "
          "(rescale intercept lost?)", severity="fail"),
    Check("tissue_high", "tissue_hu", "above", "input", 120.0,
          "soft tissue measures {value:.0f} HU (expected at most {limit:.0f} HU): the image is not in "
          "Hounsfield units (wrong rescale slope or intercept?)", severity="fail"),
    Check("tissue_low", "tissue_hu", "below", "input", 120.0,
          "soft tissue measures {value:.0f} HU (expected at least {limit:.0f} HU): the image is not in "
          "Hounsfield units (wrong rescale slope or intercept?)", severity="fail"),
    Check("noise", "noise_hu", "above", "input", 15.0,
          "image noise of {value:.0f} HU is far above usual CT (at most {limit:.0f} HU): the mask may "
          "be unreliable", fail_margins=4.0),
    Check("volume_low", "lung_ml", "below", "anatomy", 0.3,
          "total lung volume {value:.0f} mL is below the plausible range (at least {limit:.0f} mL): "
          "lung missed?", scale="log", fail_margins=4.0),
    Check("volume_high", "lung_ml", "above", "anatomy", 0.3,
          "total lung volume {value:.0f} mL is above the plausible range (at most {limit:.0f} mL): "
          "something other than lung labelled as lung?", scale="log", fail_margins=4.0),
    Check("balance", "side_balance", "below", "anatomy", 0.2,
          "one lung has only {value:.0%} of the other's volume (expected at least {limit:.0%}): a lung "
          "partly missed, collapsed or consolidated?", scale="log", fail_margins=4.0),
    Check("shape", "solidity_balance", "below", "anatomy", 0.05,
          "one lung's outline has a large dent that the other lacks (solidity ratio {value:.2f}, at least "
          "{limit:.2f} on sound scans): dense lung (consolidation, effusion, collapse) left out of the mask?",
          scale="log", fail_margins=4.0),
    Check("posterior", "posterior_gap_mm", "above", "anatomy", 10.0,
          "one lung stops {value:.0f} mm short of the other at the back (at most {limit:.0f} mm on sound "
          "scans): dense dependent lung (consolidation, effusion, collapse) left out of the mask?",
          fail_margins=4.0),
    Check("wall", "wall_gap_share", "above", "wall", 0.05,
          "{value:.0%} of one lung's outer wall stops more than "
          f"{GAP_MM:.0f} mm short of the ribs (at most {{limit:.0%}} on sound scans): dense lung "
          "(consolidation, collapse) next to the chest wall left out of the mask, or an effusion?",
          fail_margins=4.0),
    Check("density", "mask_mean_hu", "above", "anatomy", 50.0,
          "the mask's mean density of {value:.0f} HU is too high for aerated lung (at most {limit:.0f} "
          "HU): it includes soft tissue?", fail_margins=4.0),
    Check("strays", "stray_share", "above", "anatomy", 0.02,
          "{value:.0%} of what the model marked as lung lay in stray parts that post-processing removed: "
          "the model is confused by this image", fail_margins=4.0),
    Check("uncertain", "uncertain_share", "above", "confidence", 0.05,
          "the model is unsure of {value:.0%} as many voxels as it calls lung (at most {limit:.0%} on "
          "sound scans)", fail_margins=4.0),
    Check("flip", "flip_dice", "below", "flip", 0.01,
          "the mask changes when the image is mirrored (agreement {value:.3f}, at least {limit:.3f} on "
          "sound scans): the model is unsure", fail_margins=4.0),
)
NO_LUNG = "no lung was found in the scan (not a chest CT, or the model failed)"


@dataclass(frozen=True)
class QCResult:
    """The verdict on one mask: ``status`` ("pass", "review" or "fail"), ``reasons`` (sentences,
    worst first), ``scores`` (name → number, see :func:`measure`)."""

    status: str
    reasons: list[str]
    scores: dict[str, float | None]
    flagged: list[str] = field(default_factory=list)
    """Names of the checks that flagged (:data:`CHECKS`), for tables."""

    def to_dict(self) -> dict:
        """What ``stats.json`` records under ``"qc"``."""
        return {"status": self.status, "reasons": list(self.reasons), "checks": list(self.flagged),
                "scores": {k: _rounded(v) for k, v in self.scores.items()}}


def _rounded(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.6g}")


def verdict_line(record: Mapping) -> str:
    """``QC: review — reason; reason``: the command line's line for a ``"qc"`` record of stats.json."""
    reasons = record.get("reasons") or []
    return f"QC: {record['status']}" + (" — " + "; ".join(reasons) if reasons else "")


def qc_columns(stats: Mapping) -> dict[str, str]:
    """``qc_status`` and ``qc_reasons`` (joined by "; ") of a predict ``stats.json`` for the cohort
    table; empty strings when the series has no QC record."""
    qc = stats.get("qc") or {}
    return {"qc_status": str(qc.get("status", "")), "qc_reasons": "; ".join(qc.get("reasons", []))}


# ---- scores ---------------------------------------------------------------------------------------

def coverage_scores(mask: np.ndarray, hu: np.ndarray | None = None) -> dict[str, float]:
    """Where a bool (z, y, x) canonical mask meets the scan's limits.

    ``bottom_cut_share``/``top_cut_share``: lung area on the first (most inferior) / last (most
    superior) slice as a share of the largest lung slice's area (0 when the scan extends beyond the
    lung). ``edge_slice_share``: share of the slices holding lung in which it comes within
    :data:`BORDER_PX` pixels of the in-plane image edge. With ``hu`` (z, y, x, HU):
    ``open_slice_share``, the share of the slices holding lung in which lung lies in air (or padding)
    that reaches the image edge in that slice: a lung cut by the field of view, whether by the image
    edge or by a reconstruction circle (a lung is enclosed by the chest wall on every axial slice;
    see :func:`open_slices`).
    """
    area = mask.sum(axis=(1, 2))
    out = {"bottom_cut_share": 0.0, "top_cut_share": 0.0, "edge_slice_share": 0.0}
    if hu is not None:
        out["open_slice_share"] = 0.0
    widest = float(area.max()) if area.size else 0.0
    if widest == 0:
        return out
    with_lung = float(np.count_nonzero(area))
    b = min(BORDER_PX, mask.shape[1] // 4, mask.shape[2] // 4) or 1
    edge = (mask[:, :b, :].any(axis=(1, 2)) | mask[:, -b:, :].any(axis=(1, 2))
            | mask[:, :, :b].any(axis=(1, 2)) | mask[:, :, -b:].any(axis=(1, 2)))
    out.update({"bottom_cut_share": float(area[0]) / widest, "top_cut_share": float(area[-1]) / widest,
                "edge_slice_share": float(edge.sum()) / with_lung})
    if hu is not None:
        out["open_slice_share"] = float(np.count_nonzero(open_slices(mask, hu))) / with_lung
    return out


OPEN_STEP = 4
"""In-plane step (pixels) of the grid on which :func:`open_slices` follows the air (about 4 mm)."""
AIR_BELOW_HU = -500.0
WIDE_SLICE = 0.1
"""Share of the widest lung slice's area from which a slice counts for :func:`open_slices` and
:func:`solidity` (the ends of the lungs and a stretch of trachea do not)."""


def open_slices(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """(z,) bool: slices in which a lung voxel of ``mask`` lies in air connected, within the slice, to
    the image edge (on every :data:`OPEN_STEP`-th pixel; air = below :data:`AIR_BELOW_HU` HU, padding
    included). Only slices holding at least :data:`WIDE_SLICE` of the widest lung slice's area are
    examined: above the apex a few pixels of airway near the neck's open air are no lung cut by the
    field of view."""
    from scipy import ndimage

    area = mask.sum(axis=(1, 2))
    out = np.zeros(mask.shape[0], dtype=bool)
    if area.size == 0 or area.max() == 0:
        return out
    zs = np.flatnonzero(area >= WIDE_SLICE * area.max())
    step = OPEN_STEP if min(mask.shape[1:]) >= 8 * OPEN_STEP else 1
    air = np.asarray(hu[zs, ::step, ::step]) < AIR_BELOW_HU
    lung = mask[zs, ::step, ::step]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)  # connected within a slice only
    labels, _ = ndimage.label(air, in_plane)
    rim = np.zeros(air.shape[1:], dtype=bool)
    rim[0, :] = rim[-1, :] = rim[:, 0] = rim[:, -1] = True
    outside = np.zeros(labels.max() + 1, dtype=bool)
    outside[np.unique(labels[:, rim])] = True
    outside[0] = False
    out[zs] = (outside[labels] & lung).any(axis=(1, 2))
    return out


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (the cut between its two classes of most between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    mids = (edges[:-1] + edges[1:]) / 2
    w = np.cumsum(hist).astype(float)
    mu = np.cumsum(hist * mids)
    total_w, total_mu = w[-1], mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mu * w - mu * total_w) ** 2 / (w * (total_w - w))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return float(mids[int(np.argmax(between))])


def input_scores(hu: np.ndarray) -> dict[str, float | None]:
    """What the image's intensities look like, in HU, from a subsample of a (z, y, x) volume.

    ``air_hu``: :data:`AIR_PERCENTILE` percentile of the non-padding values (air outside the body and
    in the lungs; about -1000 in CT). ``tissue_hu``: median of the values above Otsu's cut between air
    and body (fat, muscle, organs, bone; about 0-60). ``noise_hu``: the noise standard deviation in
    soft tissue, from the median absolute difference of horizontally adjacent pixels whose mean lies
    within 150 HU of ``tissue_hu`` (on every 8th slice; about 10-30 in diagnostic CT).
    """
    sub = np.asarray(hu[::SUBSAMPLE, ::4, ::4], dtype=np.float32).ravel()
    sub = sub[sub > PADDING_BELOW_HU]
    if sub.size < 16:
        return {"air_hu": None, "tissue_hu": None, "noise_hu": None}
    air = float(np.percentile(sub, AIR_PERCENTILE))
    cut = otsu(sub)
    body = sub[sub > cut]
    tissue = float(np.median(body)) if body.size else None
    noise = None
    if tissue is not None and hu.shape[2] > 1:
        rows = np.asarray(hu[::8], dtype=np.float32)
        left, right = rows[:, :, :-1], rows[:, :, 1:]
        near = np.abs((left + right) / 2 - tissue) < 150
        diffs = (right - left)[near]
        if diffs.size >= 100:
            noise = float(1.4826 * np.median(np.abs(diffs)) / math.sqrt(2))
    return {"air_hu": air, "tissue_hu": tissue, "noise_hu": noise}


def anatomy_scores(hu: np.ndarray, raw: np.ndarray, labels: np.ndarray,
                   spacing: Sequence[float]) -> dict[str, float | None]:
    """Volumes and content of the final mask.

    ``hu`` (z, y, x) HU; ``raw``: the thresholded mask before post-processing (bool); ``labels``: the
    final labels (1 = right, 2 = left lung); ``spacing`` (dz, dy, dx) mm. ``lung_ml``, ``right_ml``,
    ``left_ml`` (mL); ``side_balance``: smaller lung / larger lung (0 when one is missing);
    ``mask_mean_hu``: mean HU inside the mask (aerated lung about -850 to -700); ``stray_share``:
    voxels of ``raw`` outside the final mask per final mask voxel; ``solidity_balance``: the less
    solid lung's :func:`solidity` over the other's (a bite out of one lung lowers it);
    ``posterior_gap_mm``: :func:`posterior_gap`.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    right = int(np.count_nonzero(labels == 1))
    left = int(np.count_nonzero(labels == 2))
    out: dict[str, float | None] = {
        "lung_ml": (right + left) * voxel_ml, "right_ml": right * voxel_ml, "left_ml": left * voxel_ml,
        "side_balance": min(right, left) / max(right, left) if right + left else None}
    s = (slice(None, None, SUBSAMPLE),) * 3
    final = labels[s] > 0
    n = int(np.count_nonzero(final))
    out["mask_mean_hu"] = float(np.asarray(hu[s])[final].mean(dtype=np.float64)) if n else None
    out["stray_share"] = float(np.count_nonzero(raw[s] & ~final)) / n if n else None
    solid = [v for v in (solidity(labels == side, spacing) for side in (1, 2)) if v]
    out["solidity_balance"] = min(solid) / max(solid) if len(solid) == 2 else None
    out["posterior_gap_mm"] = posterior_gap(labels, spacing)
    return out


def posterior_gap(labels: np.ndarray, spacing: Sequence[float], percentile: float = 75.0) -> float | None:
    """How far (mm) one lung stops short of the other at the back: per slice where both lungs hold at
    least :data:`WIDE_SLICE` of their widest area, the difference between the two lungs' most
    posterior rows, then its ``percentile`` over those slices. Both lungs reach the paravertebral
    gutters about equally (a few mm apart); dense dependent lung left out of one mask (consolidation,
    effusion, collapse) leaves a gap of centimetres. ``labels``: canonical (z, y, x), rows running
    towards the patient's back, 1 = right, 2 = left lung."""
    lungs = [labels == side for side in (1, 2)]
    areas = [m.sum(axis=(1, 2)) for m in lungs]
    if min(a.max() for a in areas) == 0:
        return None
    zs = np.flatnonzero((areas[0] >= WIDE_SLICE * areas[0].max()) & (areas[1] >= WIDE_SLICE * areas[1].max()))
    if zs.size == 0:
        return None
    ny = labels.shape[1]
    back = [ny - 1 - np.argmax(m[zs].any(axis=2)[:, ::-1], axis=1) for m in lungs]
    return float(np.percentile(np.abs(back[0] - back[1]), percentile)) * float(spacing[1])


SOLIDITY_STEP = (2, 4, 4)
"""Grid (every n-th voxel along z, y, x) on which :func:`solidity` takes a lung's outline."""


def solidity(mask: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Volume of one lung (bool z, y, x) over the volume of its 3D convex hull, on a
    :data:`SOLIDITY_STEP` grid: about 0.6-0.8 for a healthy lung (the diaphragm's dome and the heart
    dent it); dense lung left out of the mask (consolidation, effusion, collapse) bites a piece out of
    it and lowers it. Only the lung's largest part on the slices where it holds at least
    :data:`WIDE_SLICE` of its widest slice's area counts: a stretch of trachea or a stray
    fragment would otherwise inflate the hull. None for fewer than 50 voxels or a flat lung."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull, QhullError

    sub = mask[tuple(slice(None, None, k) for k in SOLIDITY_STEP)]
    area = sub.sum(axis=(1, 2))
    if area.size == 0 or area.max() == 0:
        return None
    sub = sub & (area >= WIDE_SLICE * area.max())[:, None, None]
    parts, count = ndimage.label(sub)
    if count > 1:
        sub = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
    n = int(np.count_nonzero(sub))
    if n < 50:
        return None
    step = np.asarray(spacing, dtype=float) * SOLIDITY_STEP
    outline = np.argwhere(sub & ~ndimage.binary_erosion(sub)) * step
    try:
        hull = ConvexHull(outline)
    except QhullError:  # all on one plane (a single slice)
        return None
    return n * float(np.prod(step)) / hull.volume if hull.volume > 0 else None


WALL_Z = (0.3, 0.85)
"""The slices :func:`wall_scores` reads: this span of the mask's height from its base (below it the
diaphragm's domes meet the lung's outer wall, above it the apices taper)."""
WALL_STEP_MM = (5.0, 4.0)
"""Slice and in-plane step (mm) of the grid :func:`wall_scores` works on."""
BONE_HU = 150.0
"""Bone (ribs, spine, sternum, calcified cartilage) on the :data:`WALL_STEP_MM` grid."""


def wall_scores(hu: np.ndarray, labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float | None]:
    """How close each lung's outer wall lies to the bone of the chest, on the slices :data:`WALL_Z` of
    the mask's height, on a :data:`WALL_STEP_MM` grid. ``labels``: canonical (z, y, x), 1 = right,
    2 = left lung; ``hu`` in HU. A healthy lung's lateral wall lies against the ribs (the nearest bone in
    3D within about 15 mm); where dense lung next to the chest wall was left out, the mask's wall stops
    centimetres inside them. ``wall_gap_share``: on the worse side, the share of the lung's lateral
    outline (beyond its own middle, away from the mediastinum) whose nearest bone lies further than
    :data:`GAP_MM`."""
    from scipy import ndimage

    mask = labels > 0
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size < 3:
        return {"wall_gap_share": None}
    kz = max(1, round(WALL_STEP_MM[0] / float(spacing[0])))
    ky, kx = (max(1, round(WALL_STEP_MM[1] / float(s))) for s in spacing[1:])
    lo, hi = zs[0] + WALL_Z[0] * (zs[-1] - zs[0]), zs[0] + WALL_Z[1] * (zs[-1] - zs[0])
    z_grid = np.arange(int(math.ceil(lo)), int(hi) + 1, kz)
    if z_grid.size == 0:
        return {"wall_gap_share": None}
    bone = np.asarray(hu[z_grid[0]:z_grid[-1] + 1:kz, ::ky, ::kx]) > BONE_HU
    if not bone.any():
        return {"wall_gap_share": None}
    step = (kz * float(spacing[0]), ky * float(spacing[1]), kx * float(spacing[2]))
    to_bone = ndimage.distance_transform_edt(~bone, sampling=step)
    lab = labels[z_grid[0]:z_grid[-1] + 1:kz, ::ky, ::kx]
    shares = []
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for side in (1, 2):
        lung = lab == side
        if not lung.any():
            return {"wall_gap_share": None}
        outline = lung & ~ndimage.binary_erosion(lung, in_plane)
        cx = np.nonzero(lung)[2].mean()
        cols = np.arange(lung.shape[2])
        # The patient's right lung lies at low x on the canonical grid (x runs towards the left).
        lateral = (cols < cx) if side == 1 else (cols > cx)
        wall = outline & lateral[None, None, :]
        n = int(np.count_nonzero(wall))
        shares.append(float(np.count_nonzero(wall & (to_bone > GAP_MM))) / n if n else 0.0)
    return {"wall_gap_share": max(shares)}


def uncertain_share(logits: np.ndarray, lung_voxels: int) -> float | None:
    """Voxels whose probability lies in (:data:`UNCERTAIN_P`, 1 - :data:`UNCERTAIN_P`) per lung voxel,
    on a :data:`SUBSAMPLE` grid (``lung_voxels`` counted on the same grid)."""
    if lung_voxels == 0:
        return None
    bound = math.log((1 - UNCERTAIN_P) / UNCERTAIN_P)
    s = (slice(None, None, SUBSAMPLE),) * 3
    return float(np.count_nonzero(np.abs(logits[s]) < bound)) / lung_voxels


LogitsFn = Callable[[np.ndarray], np.ndarray]
"""(n, y, x) HU slices → (n, y, x) logits by the same network and preprocessing."""


def flip_dice(hu: np.ndarray, raw: np.ndarray, logits_of: LogitsFn, threshold_logit: float,
              n_slices: int = FLIP_SLICES) -> float | None:
    """Dice between ``raw`` (the thresholded mask, bool (z, y, x)) and the network's answer on the
    same slices mirrored left-right (and mirrored back), over ``n_slices`` evenly spaced slices holding
    lung. A network sure of what it sees gives nearly the same mask (0.97-0.99 on sound scans)."""
    with_lung = np.flatnonzero(raw.any(axis=(1, 2)))
    if with_lung.size == 0:
        return None
    pick = with_lung[np.linspace(0, with_lung.size - 1, min(n_slices, with_lung.size)).round().astype(int)]
    pick = np.unique(pick)
    mirrored = np.ascontiguousarray(np.asarray(hu[pick])[:, :, ::-1])
    again = logits_of(mirrored)[:, :, ::-1] > threshold_logit
    first = raw[pick]
    total = int(np.count_nonzero(again)) + int(np.count_nonzero(first))
    return 2.0 * np.count_nonzero(again & first) / total if total else 1.0


def measure(hu: np.ndarray, spacing: Sequence[float], logits: np.ndarray | None, raw: np.ndarray,
            labels: np.ndarray, threshold: float, logits_of: LogitsFn | None = None,
            timings: dict[str, float] | None = None) -> dict[str, float | None]:
    """Every QC score of one prediction, all arrays (z, y, x) on the canonical grid (slice index
    ascending towards the head): ``hu`` in HU, ``logits`` of the network, ``raw`` = logits above the
    ``threshold`` (a probability) before post-processing, ``labels`` the final right (1) / left (2)
    lungs; ``spacing`` (dz, dy, dx) mm. ``logits_of``: the network on HU slices, for the flip
    agreement (skipped when None). ``timings``: filled with the seconds each group took."""
    timings = {} if timings is None else timings
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - t, 4)
        t = now

    mask = labels > 0
    scores: dict[str, float | None] = dict(coverage_scores(mask, hu))
    lap("coverage_s")
    scores.update(input_scores(hu))
    lap("input_s")
    scores.update(anatomy_scores(hu, raw, labels, spacing))
    lap("anatomy_s")
    scores.update(wall_scores(hu, labels, spacing))
    lap("wall_s")
    s = (slice(None, None, SUBSAMPLE),) * 3
    scores["uncertain_share"] = (None if logits is None  # a mask judged without the network (lungseg qc)
                                 else uncertain_share(logits, int(np.count_nonzero(mask[s]))))
    lap("confidence_s")
    if logits_of is not None:
        p = float(threshold)
        scores["flip_dice"] = flip_dice(hu, raw, logits_of, math.log(p / (1 - p)))
        lap("flip_s")
    return scores


# ---- the rule -------------------------------------------------------------------------------------

def load_thresholds(path: str | Path | None = None) -> dict:
    """The limits per check (``qc_thresholds.json``); {} when the file is missing."""
    path = Path(path) if path else THRESHOLDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _beyond(check: Check, value: float, limit: float) -> bool:
    return value > limit if check.bad_when == "above" else value < limit


def _margins_past(check: Check, value: float, rule: Mapping) -> float:
    """How many calibration margins ``value`` lies past the limit (in the check's scale)."""
    tr = _to_scale(check, value) - _to_scale(check, rule["limit"])
    return (tr if check.bad_when == "above" else -tr) / max(float(rule["margin"]), 1e-12)


def _to_scale(check: Check, value: float) -> float:
    return math.log(max(value, 1e-9)) if check.scale == "log" else float(value)


def _from_scale(check: Check, value: float) -> float:
    return math.exp(value) if check.scale == "log" else float(value)


def assess(scores: Mapping[str, float | None], thresholds: Mapping | None = None,
           checks: Sequence[Check] = CHECKS) -> QCResult:
    """The verdict for ``scores`` (:func:`measure`) under ``thresholds`` (:func:`load_thresholds`
    when None): every check whose score lies beyond its limit adds its sentence; the status is the
    worst severity among them (a "review" check fails beyond ``fail_margins`` margins past its limit).
    No lung at all fails (the input checks still say why, when they can). A check with no limit in
    ``thresholds`` (not calibrated, or dropped by the calibration) or no score (e.g. no flip test)
    is skipped."""
    thresholds = load_thresholds() if thresholds is None else thresholds
    limits = thresholds.get("checks", {})
    scores = dict(scores)
    no_lung = not scores.get("lung_ml")
    found: list[tuple[int, str, str]] = [(STATUSES.index("fail"), "no_lung", NO_LUNG)] if no_lung else []
    for check in checks:
        if no_lung and check.group != "input":  # nothing else to judge without a mask
            continue
        rule, value = limits.get(check.name), scores.get(check.score)
        if rule is None or not rule.get("kept", True) or value is None or not math.isfinite(value):
            continue
        if not _beyond(check, value, rule["limit"]):
            continue
        status = check.severity
        if check.fail_margins is not None and _margins_past(check, value, rule) > check.fail_margins:
            status = "fail"
        found.append((STATUSES.index(status), check.name,
                      check.sentence.format(value=value, limit=rule["limit"])))
    if not found:
        return QCResult("pass", [], scores, [])
    found.sort(key=lambda f: -f[0])  # fails first, then in the order of CHECKS
    return QCResult(STATUSES[found[0][0]], [f[2] for f in found], scores, [f[1] for f in found])


# ---- calibration of one check (the rule's numbers come from here) --------------------------------

MARGIN_OF_SPREAD = 0.5
"""The margin past the sound extreme, as a share of the sound series' spread (max - min, in the
check's scale); at least the check's ``floor``."""


def fit_check(check: Check, sound: Sequence[float]) -> dict:
    """The limit of ``check`` from its scores on sound calibration series: the most extreme sound
    value pushed outwards by max(floor, :data:`MARGIN_OF_SPREAD` x spread), in the check's scale."""
    values = np.asarray([_to_scale(check, v) for v in sound if v is not None and math.isfinite(v)])
    if values.size == 0:
        raise ValueError(f"no sound calibration scores for {check.name}")
    spread = float(values.max() - values.min())
    margin = max(check.floor, MARGIN_OF_SPREAD * spread)
    edge = float(values.max() if check.bad_when == "above" else values.min())
    limit = edge + margin if check.bad_when == "above" else edge - margin
    return {"score": check.score, "bad_when": check.bad_when, "scale": check.scale,
            "limit": _rounded(_from_scale(check, limit)), "margin": _rounded(margin),
            "sound_range": [_rounded(_from_scale(check, float(values.min()))),
                            _rounded(_from_scale(check, float(values.max())))],
            "sound_series": int(values.size), "severity": check.severity}


def fit(sound_rows: Sequence[Mapping], checks: Sequence[Check] = CHECKS,
        dropped: Sequence[str] = ()) -> dict:
    """Limits of every check from the sound calibration series' scores (rows of score name → value);
    the checks named in ``dropped`` are recorded with ``"kept": false`` (assess skips them), checks
    without any sound score are left out."""
    out = {}
    for check in checks:
        values = [r.get(check.score) for r in sound_rows]
        if not any(v is not None and math.isfinite(v) for v in values):
            continue  # nothing to set a limit on (e.g. no sound series): the check stays unset
        rule = fit_check(check, values)
        rule["kept"] = check.name not in dropped
        out[check.name] = rule
    return {"checks": out}
