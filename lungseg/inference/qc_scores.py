"""The quality control's scores of one predicted lung mask (:func:`measure`): cheap numbers from what
``predict`` already holds -- the HU volume, its spacing, the network's logits, the thresholded mask
and the final right/left labels, all on the canonical grid (:mod:`lungseg.io.orient`: slice index
ascending towards the head) -- plus, optionally, one test-time change (the image mirrored left-right
on a few slices, run through the network again). What each score means and when it is bad is the
rule's business (:mod:`lungseg.inference.qc`). Imports neither torch nor the calibration code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

SCORES_VERSION = 11
"""Bump when :func:`measure` computes any score differently (the calibration table is then recomputed)."""

PADDING_BELOW_HU = -1500.0
"""Values below this are taken as padding outside the reconstruction circle (scanners write -2000,
-3024 or -32768 there), never as air or tissue, in the input checks."""
AIR_PERCENTILE = 5.0
"""The air level: this percentile of the image's non-padding values (outside air and lungs)."""
UNCERTAIN_P = 0.1
"""A voxel is uncertain when its probability lies in (UNCERTAIN_P, 1 - UNCERTAIN_P)."""
FAR_AIR_HU = -900.0
FAR_AIR_MM = 10.0
"""Uncertain voxels of air (below FAR_AIR_HU) further than FAR_AIR_MM from the mask along some axis
are not counted: airway above the lungs, bowel gas, air outside the body. The network's doubt there
is not about the lung's outline, and how much of it a scan holds depends on its field of view: it
made one sound patient of twelve (small lungs, much neck) score twice the others and raise every
false alarm of two report runs, while in each failure it was measured on (motion, zoomed field of
view, simulated dense lung) it was under 1.5 % of the lung."""
BORDER_PX = 2
"""A lung within this many pixels of the in-plane image edge touches the edge."""
FLIP_SLICES = 12
"""Slices with lung run through the network again, mirrored (the flip agreement's sample)."""
SUBSAMPLE = 2
"""Every SUBSAMPLE-th voxel along each axis for the volume-wide means and shares (1/8 of the work,
the same answer to well under 1 %: the scores are means over millions of voxels)."""


GAP_MM = 25.0
"""The mask stops short of the rib cage where the nearest lung voxel lies further than this (mm)."""


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
    out.update(end_gaps(labels, spacing))
    return out


def end_gaps(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float | None]:
    """How far (mm) one lung ends short of the other at the top and at the bottom: ``apex_gap_mm`` and
    ``base_gap_mm``, the difference between the two lungs' highest (lowest) slices holding at least
    :data:`WIDE_SLICE` of that lung's widest area (the thin tip of an apex, a stretch of trachea or a
    stray fragment do not count). The apices lie within a centimetre or two of each other and the
    right base a little above the left; dense lung left out of one mask over the top (upper-lobe
    consolidation or collapse) or the bottom of one lung (lower-lobe disease) moves that end by
    centimetres. ``labels``: canonical (z, y, x), 1 = right, 2 = left lung; ``spacing`` (dz, dy, dx) mm."""
    ends = []
    for side in (1, 2):
        area = (labels == side).sum(axis=(1, 2))
        if area.max() == 0:
            return {"apex_gap_mm": None, "base_gap_mm": None}
        zs = np.flatnonzero(area >= WIDE_SLICE * area.max())
        ends.append((int(zs[0]), int(zs[-1])))
    dz = float(spacing[0])
    return {"apex_gap_mm": abs(ends[0][1] - ends[1][1]) * dz,
            "base_gap_mm": abs(ends[0][0] - ends[1][0]) * dz}


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
FRONT_BONE_HU = 100.0
"""Bone for :func:`front_wall_gap`: lower, because the anterior ribs are thin and their costal
cartilage barely calcified, so a soft kernel blurs them below :data:`BONE_HU`. Measured on the 12
LCTSC patients (truth masks, as scanned and with the ``smooth`` kernel): at 150 HU the softer kernel
moved one patient's front gap from 12 to 21 mm, as far as a missed anterior consolidation (23-27 mm);
at 100 HU it stayed at 12 mm while those stayed at 20-24 mm. Only the lateral half is read, away from
the contrast-filled heart and vessels, which also exceed it."""


def wall_scores(hu: np.ndarray, labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float | None]:
    """How close each lung's outer wall lies to the bone of the chest, on the slices :data:`WALL_Z` of
    the mask's height, on a :data:`WALL_STEP_MM` grid. ``labels``: canonical (z, y, x), 1 = right,
    2 = left lung; ``hu`` in HU. A healthy lung's lateral wall lies against the ribs (the nearest bone in
    3D within about 15 mm); where dense lung next to the chest wall was left out, the mask's wall stops
    centimetres inside them. ``wall_gap_share``: on the worse side, the share of the lung's lateral
    outline (beyond its own middle, away from the mediastinum) whose nearest bone lies further than
    :data:`GAP_MM`. ``back_wall_mm`` and ``front_wall_mm``: :func:`back_wall_gap` and
    :func:`front_wall_gap` on the same grid."""
    from scipy import ndimage

    none = {"wall_gap_share": None, "back_wall_mm": None, "front_wall_mm": None}
    mask = labels > 0
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size < 3:
        return none
    kz = max(1, round(WALL_STEP_MM[0] / float(spacing[0])))
    ky, kx = (max(1, round(WALL_STEP_MM[1] / float(s))) for s in spacing[1:])
    lo, hi = zs[0] + WALL_Z[0] * (zs[-1] - zs[0]), zs[0] + WALL_Z[1] * (zs[-1] - zs[0])
    z_grid = np.arange(int(math.ceil(lo)), int(hi) + 1, kz)
    if z_grid.size == 0:
        return none
    grid_hu = np.asarray(hu[z_grid[0]:z_grid[-1] + 1:kz, ::ky, ::kx])
    bone = grid_hu > BONE_HU
    if not bone.any():
        return none
    step = (kz * float(spacing[0]), ky * float(spacing[1]), kx * float(spacing[2]))
    to_bone = ndimage.distance_transform_edt(~bone, sampling=step)
    lab = labels[z_grid[0]:z_grid[-1] + 1:kz, ::ky, ::kx]
    shares = []
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    for side in (1, 2):
        lung = lab == side
        if not lung.any():
            return none
        outline = lung & ~ndimage.binary_erosion(lung, in_plane)
        cx = np.nonzero(lung)[2].mean()
        cols = np.arange(lung.shape[2])
        # The patient's right lung lies at low x on the canonical grid (x runs towards the left).
        lateral = (cols < cx) if side == 1 else (cols > cx)
        wall = outline & lateral[None, None, :]
        n = int(np.count_nonzero(wall))
        shares.append(float(np.count_nonzero(wall & (to_bone > GAP_MM))) / n if n else 0.0)
    to_front_bone = ndimage.distance_transform_edt(~(grid_hu > FRONT_BONE_HU), sampling=step)
    return {"wall_gap_share": max(shares), "back_wall_mm": back_wall_gap(to_bone, lab),
            "front_wall_mm": front_wall_gap(to_front_bone, lab)}


def back_wall_gap(to_bone: np.ndarray, labels: np.ndarray) -> float | None:
    """How far (mm) the lungs stop short of the bone of the back, for the worse lung: the median, over
    the columns (z, x) of the lung's middle 80 % in x, of the distance from the lung's most posterior
    voxel in that column to the nearest bone. ``to_bone``: distance (mm) of every voxel to the nearest
    bone; ``labels``: 1 = right, 2 = left lung; both (z, y, x) canonical (rows towards the back) on the
    grid of :func:`wall_scores`. A lung lies in the paravertebral gutter against the posterior ribs
    (about 6-10 mm on that grid, whatever the reconstruction kernel: the nearest bone in 3D, not the
    one straight behind, which a soft kernel can blur below the bone level); dense dependent lung
    left out of *both* masks alike (bilateral consolidation, the dependent lung of acute lung injury),
    which :func:`posterior_gap` cannot see, leaves the mask's back centimetres from the bone."""
    return _end_wall_gap(to_bone, labels, back=True, lateral_only=False)


def front_wall_gap(to_bone: np.ndarray, labels: np.ndarray) -> float | None:
    """How far (mm) the lungs stop short of the bone of the front, for the worse lung: as
    :func:`back_wall_gap`, from each column's most anterior lung voxel, over the columns of the lung's
    *lateral* half only (away from its own middle): in front of the medial half lie the heart and the
    mediastinum, centimetres of soft tissue on sound scans, while the lateral half lies against the
    anterior ribs (about 5-12 mm on that grid on the 12 LCTSC patients, bone above
    :data:`FRONT_BONE_HU`). Non-dependent dense lung left out of the mask (an anterior consolidation,
    which neither the back nor the lateral wall sees) leaves its front centimetres behind them.
    ``to_bone``: as for :func:`back_wall_gap`, the bone above :data:`FRONT_BONE_HU`."""
    return _end_wall_gap(to_bone, labels, back=False, lateral_only=True)


def _end_wall_gap(to_bone: np.ndarray, labels: np.ndarray, back: bool, lateral_only: bool) -> float | None:
    """The worse lung's median distance to bone (mm) from its most posterior (``back``) or anterior
    voxel of each column (z, x) of its middle 80 % in x (and only beyond its own mean x with
    ``lateral_only``: the patient's right lung lies at low x on the canonical grid)."""
    worst = None
    ny = labels.shape[1]
    for side in (1, 2):
        lung = labels == side
        across = lung.any(axis=1)  # (z, x): the lung crosses this column on this slice
        cols = np.flatnonzero(across.any(axis=0))
        if cols.size == 0:
            return None
        width = int(cols[-1] - cols[0])
        keep = np.zeros(lung.shape[2], dtype=bool)
        keep[cols[0] + width // 10: cols[-1] - width // 10 + 1] = True
        if lateral_only:
            cx = float(np.nonzero(across)[1].mean())
            x = np.arange(lung.shape[2])
            keep &= (x < cx) if side == 1 else (x > cx)
        zz, xx = np.nonzero(across & keep[None, :])
        if zz.size == 0:
            return None
        if back:
            end = ny - 1 - np.argmax(lung[:, ::-1, :], axis=1)  # (z, x): the most posterior lung row
        else:
            end = np.argmax(lung, axis=1)  # (z, x): the most anterior lung row
        value = float(np.median(to_bone[zz, end[zz, xx], xx]))
        worst = value if worst is None else max(worst, value)
    return worst


def uncertain_share(logits: np.ndarray, mask: np.ndarray, hu: np.ndarray,
                    spacing: Sequence[float]) -> float | None:
    """Voxels whose probability lies in (:data:`UNCERTAIN_P`, 1 - :data:`UNCERTAIN_P`), except air far
    from the lungs (:data:`FAR_AIR_MM`), per lung voxel of the bool ``mask``; all (z, y, x) on a
    :data:`SUBSAMPLE` grid, ``hu`` in HU, ``spacing`` (dz, dy, dx) mm of the full grid."""
    from scipy import ndimage

    s = (slice(None, None, SUBSAMPLE),) * 3
    lung = np.asarray(mask[s], dtype=np.uint8)
    lung_voxels = int(np.count_nonzero(lung))
    if lung_voxels == 0:
        return None
    bound = math.log((1 - UNCERTAIN_P) / UNCERTAIN_P)
    uncertain = np.abs(logits[s]) < bound
    near = lung
    for axis, mm in enumerate(spacing):  # a box of +-FAR_AIR_MM around the mask: separable, O(n)
        reach = int(FAR_AIR_MM // (mm * SUBSAMPLE))
        if reach:
            near = ndimage.maximum_filter1d(near, 2 * reach + 1, axis=axis, mode="constant")
    far_air = (near == 0) & (np.asarray(hu[s]) < FAR_AIR_HU)
    return float(np.count_nonzero(uncertain & ~far_air)) / lung_voxels


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
    scores["uncertain_share"] = (None if logits is None  # a mask judged without the network (lungseg qc)
                                 else uncertain_share(logits, mask, hu, spacing))
    lap("confidence_s")
    if logits_of is not None:
        p = float(threshold)
        scores["flip_dice"] = flip_dice(hu, raw, logits_of, math.log(p / (1 - p)))
        lap("flip_s")
    return scores
