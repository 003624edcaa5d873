"""Right and left lung from a one-label lung mask, sided by the DICOM geometry.

Convention (lungmask's): label 1 = the patient's RIGHT lung, label 2 = the patient's LEFT lung.
The side is decided in patient coordinates, never from array indices: DICOM LPS has +x pointing to
the patient's left, so the lung whose centroid has the smaller LPS x is the right one. A mirrored
series or a feet-first one (ImageOrientationPatient e.g. [-1, 0, 0, 0, 1, 0]) therefore gets the same
anatomical labels as a standard head-first supine one.

Rule of :func:`split_lungs` (every mask voxel gets a side, so ``labels > 0`` equals the mask):

1. 3D connected components (face-connected, as :func:`lungseg.inference.postprocess.keep_largest`).
2. If the two largest lie on opposite sides of the patient -- each one's centroid lies outside the
   other's extent along patient x -- and the smaller holds at least :data:`MIN_LUNG_SHARE` of the
   larger's voxels, they are the two lungs (method ``"components"``). (The size test matters for
   predictions: when the two lungs merge into one component, the second largest may be a stray
   blob beside the body, which is on "the other side" of nothing.)
3. Otherwise the largest component is taken to hold both lungs touching (anterior or posterior
   junction line). It is eroded in-plane (distance to its in-plane edge, 1-pixel steps up to
   :data:`MAX_SPLIT_DEPTH_MM`) until its core falls into two parts that pass test 2; every voxel of
   the component then goes to the nearer core (3D Euclidean distance in mm), so the cut follows the
   narrowest neck between the lungs (method ``"eroded"``, ``touched=True``).
   Erosion in-plane only, because slices are thicker (3 mm) than pixels and the contact lies in-plane.
4. If it never separates, it is taken as a single lung (e.g. after pneumonectomy) and sided by its
   centroid against the centre of the image grid, where CT centres the patient (method ``"single"``).
5. Every other (stray) component goes, whole, to the side of the nearest lung voxel (mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungseg.inference import postprocess
from lungseg.io.dicom import Volume
from lungseg.io.orient import voxel_to_lps

RIGHT = 1
"""Label of the patient's right lung (smaller LPS x)."""
LEFT = 2
"""Label of the patient's left lung (larger LPS x)."""
MAX_SPLIT_DEPTH_MM = 15.0
"""Deepest in-plane erosion tried to separate touching lungs (mm); junction lines are a few mm wide."""
MIN_LUNG_SHARE = 0.05
"""A part counts as a lung (or a lung's core) only with at least this share of the larger part's voxels."""
MAX_STRAYS_BY_TREE = 128
MAX_STRAY_VOXELS_BY_TREE = 100_000
"""Up to this many strays and stray voxels, each stray is sided by k-d tree queries (~4 ms each; a
cleaned prediction has 0-2 small ones, a raw one tens); beyond (a noisy prediction, where queries far
from the lungs get slow) by one feature transform, whose cost does not grow with them."""
MM3_PER_ML = 1000.0
_FACE = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class SplitInfo:
    """How :func:`split_lungs_with_info` split a mask."""

    method: str
    """"components" (two separate lungs), "eroded" (touching lungs split), "single" or "empty"."""
    touched: bool
    """True when both lungs formed one 3D component and had to be split."""
    n_components: int
    """3D face-connected components of the input mask."""
    right_ml: float
    left_ml: float
    split_depth_mm: float | None = None
    """In-plane erosion depth (mm) at which touching lungs separated; None unless touched."""
    strays: int = 0
    """Components other than the lungs, each given to the side of the nearest lung."""


def affine_of(geometry: Volume | np.ndarray) -> np.ndarray:
    """(4, 4) voxel (column i, row j, slice k) to LPS mm affine of a Volume, or the affine itself."""
    if isinstance(geometry, Volume):
        return voxel_to_lps(geometry)
    affine = np.asarray(geometry, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"expected a Volume or a (4, 4) affine, got an array of shape {affine.shape}")
    return affine


def _zyx_matrix(affine: np.ndarray) -> np.ndarray:
    """(3, 3) LPS mm per unit step of the array axes (z, y, x) = (k, j, i), one column per axis."""
    return affine[:3, [2, 1, 0]]


def _spacing_zyx(affine: np.ndarray) -> np.ndarray:
    """(3,) voxel size in mm along the array axes (z, y, x)."""
    return np.linalg.norm(_zyx_matrix(affine), axis=0)


def lr_axis_sign(geometry: Volume | np.ndarray) -> tuple[int, int]:
    """(axis, sign): the (z, y, x) array axis closest to patient left-right, and +1 when increasing
    that index moves towards the patient's LEFT (LPS +x), -1 when towards the right."""
    affine = affine_of(geometry)
    x_per_step = _zyx_matrix(affine)[0] / _spacing_zyx(affine)
    axis = int(np.argmax(np.abs(x_per_step)))
    return axis, int(np.sign(x_per_step[axis]))


def _slice_axis(affine: np.ndarray) -> int:
    """The (z, y, x) array axis closest to patient head-feet (LPS z): the one slices are stacked on
    for an axial series."""
    return int(np.argmax(np.abs(_zyx_matrix(affine)[2] / _spacing_zyx(affine))))


def _patient_x(affine: np.ndarray, zyx: np.ndarray) -> np.ndarray:
    """LPS x (mm) of (..., 3) array positions (z, y, x), fractional allowed."""
    return zyx @ _zyx_matrix(affine)[0] + affine[0, 3]


def _x_grid(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Patient LPS x (mm, float32) of every voxel of the crop ``box`` of the (z, y, x) array."""
    x_per_step = _zyx_matrix(affine)[0]
    axes = [(np.arange(s.start, s.stop) * step).astype(np.float32)
            for s, step in zip(box, x_per_step, strict=True)]
    return (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
            + np.float32(affine[0, 3]))


def _x_stats(x: np.ndarray, labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """(len(ids), 3): centroid, min and max patient x (mm) of each labelled part."""
    # Boolean selection per part: ndimage.minimum/maximum sort the whole array and are ~20x slower.
    parts = [x[labels == i] for i in ids]
    return np.array([(v.mean(dtype=np.float64), v.min(), v.max()) for v in parts], dtype=float)


def _opposite(x: np.ndarray, labels: np.ndarray, a: int, b: int) -> bool:
    """True when each of parts ``a`` and ``b`` has its centroid outside the other's patient-x extent."""
    (ca, lo_a, hi_a), (cb, lo_b, hi_b) = _x_stats(x, labels, [a, b])
    return not (lo_a <= cb <= hi_a) and not (lo_b <= ca <= hi_b)


def _lung_pair(x: np.ndarray, labels: np.ndarray, sizes: np.ndarray, a: int, b: int) -> bool:
    """Parts ``a`` and ``b`` (``sizes[i - 1]`` voxels for label i) are two lungs: comparable in size
    (:data:`MIN_LUNG_SHARE`) and on opposite sides (:func:`_opposite`)."""
    small, large = sorted((sizes[a - 1], sizes[b - 1]))
    return small >= MIN_LUNG_SHARE * large and _opposite(x, labels, a, b)


def _right_first(x: np.ndarray, labels: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """(right, left) of parts ``a`` and ``b``: the smaller centroid LPS x is the patient's right."""
    ca, cb = _x_stats(x, labels, [a, b])[:, 0]
    return (a, b) if ca <= cb else (b, a)


def _nearest_label(seeds: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """For every voxel, the label of the nearest non-zero voxel of ``seeds`` (3D Euclidean, mm;
    equidistant seeds: either). Only the feature transform: the distances are not needed."""
    idx = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_distances=False,
                                         return_indices=True)
    return seeds[tuple(idx)]


def _in_plane_depth(comp: np.ndarray, spacing: np.ndarray, axis: int) -> np.ndarray:
    """Distance (mm, float64) of every voxel of bool ``comp`` to the nearest background voxel of its
    own slice (slices stacked on ``axis``), one 2D transform per non-empty slice: the same values as
    a 3D transform whose slice-axis sampling is infinite, at a third of the cost."""
    depth = np.zeros(comp.shape, dtype=np.float64)
    planes, out = np.moveaxis(comp, axis, 0), np.moveaxis(depth, axis, 0)  # views
    sampling = np.delete(spacing, axis)
    for k in np.flatnonzero(planes.any(axis=(1, 2))):
        # On the slice's own box, padded so that it has background on every side: a background pixel
        # outside lies farther than its projection on that padding (also background), so the
        # distances are the same as on the whole slice, at the cost of the box (smaller towards the
        # apex and the base).
        plane = planes[k]
        ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        box = (slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))
        out[k][box] = ndimage.distance_transform_edt(np.pad(plane[box], 1), sampling=sampling)[1:-1, 1:-1]
    return depth


def _split_touching(comp: np.ndarray, x: np.ndarray, affine: np.ndarray
                    ) -> tuple[np.ndarray, float] | None:
    """Labels (RIGHT/LEFT on ``comp``, 0 elsewhere) and the erosion depth (mm) for one component that
    holds both lungs, or None when no in-plane erosion up to :data:`MAX_SPLIT_DEPTH_MM` leaves two
    cores on opposite sides. Computed on the component's own bounding box (strays can widen the
    mask's by a third)."""
    inner = postprocess.bounding_box(comp)
    found = _split_component(comp[inner], x[inner], affine)
    if found is None:
        return None
    labels = np.zeros(comp.shape, dtype=np.uint8)
    labels[inner] = found[0]
    return labels, found[1]


def _split_component(comp: np.ndarray, x: np.ndarray, affine: np.ndarray
                     ) -> tuple[np.ndarray, float] | None:
    """:func:`_split_touching` on the component's bounding box."""
    spacing = _spacing_zyx(affine)
    depth = _in_plane_depth(comp, spacing, _slice_axis(affine))
    step = float(np.delete(spacing, _slice_axis(affine)).min())
    steps = np.arange(step, MAX_SPLIT_DEPTH_MM + step / 2, step)
    # The erosion levels once: ``level > i`` is ``depth > steps[i]`` (the same float64 comparisons),
    # as uint8, and each step's cores are labelled only inside their own, shrinking, bounding box.
    level = np.searchsorted(steps, depth, side="left").astype(np.uint8)
    del depth
    reach = [level.max(axis=axes) for axes in ((1, 2), (0, 2), (0, 1))]  # deepest level per index
    for i, d in enumerate(steps):
        inside = [np.flatnonzero(r > i) for r in reach]
        if inside[0].size == 0:
            return None
        box = tuple(slice(int(v[0]), int(v[-1]) + 1) for v in inside)
        cores, n = postprocess.components(level[box] > i)
        if n < 2:
            continue
        sizes = np.bincount(cores.ravel())[1:]
        first, second = np.argsort(sizes, kind="stable")[::-1][:2] + 1
        if _lung_pair(x[box], cores, sizes, first, second):
            right, left = _right_first(x[box], cores, first, second)
            seeds = np.zeros(comp.shape, dtype=np.uint8)
            seeds[box][cores == right], seeds[box][cores == left] = RIGHT, LEFT
            return np.where(comp, _nearest_label(seeds, spacing), 0).astype(np.uint8), float(d)
    return None


def _grid_centre_x(affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """LPS x (mm) of the centre of the image grid."""
    return float(_patient_x(affine, (np.asarray(shape, dtype=float) - 1) / 2))


def _border(mask: np.ndarray) -> np.ndarray:
    """The voxels of bool ``mask`` with a face neighbour outside it (or on the grid's edge)."""
    return mask & ~ndimage.binary_erosion(mask, _FACE, border_value=0)


def _assign_strays(labels: np.ndarray, comps: np.ndarray, strays: list[int],
                   spacing: np.ndarray) -> None:
    """Give each stray component, whole, the label of the lung voxel nearest to it (in place; ties:
    either side). A few small strays (a cleaned prediction): :func:`_stray_sides_by_tree`; many or
    large ones (a raw, noisy prediction): one feature transform of the box instead
    (:data:`MAX_STRAYS_BY_TREE`)."""
    stray_voxels = int(np.count_nonzero(comps > 0)) - int(np.count_nonzero(labels))
    if len(strays) <= MAX_STRAYS_BY_TREE and stray_voxels <= MAX_STRAY_VOXELS_BY_TREE:
        chosen = _stray_sides_by_tree(labels, comps, strays, spacing)
    else:
        chosen = _stray_sides_by_transform(labels, comps, strays, spacing)
    lookup = np.zeros(int(comps.max()) + 1, dtype=np.uint8)  # component -> side, one pass
    lookup[strays] = chosen
    side_of = lookup[comps]
    np.copyto(labels, side_of, where=side_of > 0)


def _stray_sides_by_tree(labels: np.ndarray, comps: np.ndarray, strays: list[int],
                         spacing: np.ndarray) -> list[int]:
    """The side of each stray: the nearest pair of voxels between two disjoint sets lies on both
    sets' borders (a step from an inner voxel towards the other set comes closer), so a k-d tree of
    the lungs' border voxels (mm), queried with each stray's border voxels, finds it exactly."""
    from scipy.spatial import cKDTree  # imported only when there are strays

    lung_border = _border(labels > 0)
    tree, tree_labels = cKDTree(np.argwhere(lung_border) * spacing), labels[lung_border]
    boxes = ndimage.find_objects(comps)
    out = []
    for c in strays:
        box = boxes[c - 1]
        offset = np.array([s.start for s in box])
        dist, idx = tree.query((np.argwhere(_border(comps[box] == c)) + offset) * spacing)
        out.append(int(tree_labels[idx[int(np.argmin(dist))]]))
    return out


def _stray_sides_by_transform(labels: np.ndarray, comps: np.ndarray, strays: list[int],
                              spacing: np.ndarray) -> list[int]:
    """The side of each stray: of the lung voxel nearest to its nearest voxel, by one feature
    transform of the lungs. The minimum per stray comes from sorting the stray voxels alone
    (``ndimage.minimum_position`` sorts the whole box)."""
    nearest, dist = _nearest_label_and_distance(labels, spacing)
    is_stray = np.zeros(int(comps.max()) + 1, dtype=bool)
    is_stray[strays] = True
    at = np.flatnonzero(is_stray[comps])
    which = comps.ravel()[at]
    order = np.lexsort((dist.ravel()[at], which))  # by stray, then by distance
    first = order[np.r_[True, np.diff(which[order]) != 0]]  # each stray's nearest voxel
    side_of = dict(zip(which[first].tolist(), nearest.ravel()[at[first]].tolist(), strict=True))
    return [int(side_of[c]) for c in strays]


def _nearest_label_and_distance(seeds: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label of the nearest non-zero voxel of ``seeds`` and its distance (mm), for every voxel."""
    dist, idx = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
    return seeds[tuple(idx)], dist


def _volume_ml(labels: np.ndarray, side: int, affine: np.ndarray) -> float:
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    return float(np.count_nonzero(labels == side) * voxel_mm3 / MM3_PER_ML)


def split_lungs_with_info(mask: np.ndarray, geometry: Volume | np.ndarray
                          ) -> tuple[np.ndarray, SplitInfo]:
    """Labels (z, y, x) uint8 in {0, 1 = right lung, 2 = left lung} of a one-label (z, y, x) lung mask,
    and how they were found (module docstring); ``geometry``: the Volume or its voxel-to-LPS affine."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 3:
        raise ValueError(f"expected a (z, y, x) mask, got shape {mask.shape}")
    affine = affine_of(geometry)
    labels = np.zeros(mask.shape, dtype=np.uint8)
    box = postprocess.bounding_box(mask)
    if box is None:
        return labels, SplitInfo("empty", False, 0, 0.0, 0.0)
    comps, n = postprocess.components(mask[box])
    x = _x_grid(affine, box)
    sizes = np.bincount(comps.ravel())[1:]
    order = [int(c) for c in np.argsort(sizes, kind="stable")[::-1] + 1]
    out = labels[box]  # a view: writing it fills ``labels``
    depth = None
    if n >= 2 and _lung_pair(x, comps, sizes, order[0], order[1]):
        right, left = _right_first(x, comps, order[0], order[1])
        out[comps == right], out[comps == left] = RIGHT, LEFT
        method, lungs = "components", 2
    else:
        split = _split_touching(comps == order[0], x, affine)
        lungs = 1
        if split is not None:
            method, depth = "eroded", split[1]
            out[...] = split[0]
        else:
            method = "single"
            centre = _x_stats(x, comps, [order[0]])[0, 0]
            out[comps == order[0]] = RIGHT if centre <= _grid_centre_x(affine, mask.shape) else LEFT
    strays = order[lungs:]
    if strays:
        _assign_strays(out, comps, strays, _spacing_zyx(affine))
    info = SplitInfo(method=method, touched=method == "eroded", n_components=int(n),
                     right_ml=_volume_ml(labels, RIGHT, affine), left_ml=_volume_ml(labels, LEFT, affine),
                     split_depth_mm=depth, strays=len(strays))
    return labels, info


def split_lungs(mask: np.ndarray, geometry: Volume | np.ndarray) -> np.ndarray:
    """Labels (z, y, x) uint8: 0 background, 1 = patient's right lung, 2 = left lung, from a one-label
    (z, y, x) lung mask; ``geometry``: the Volume or its (4, 4) voxel-to-LPS affine. See module doc."""
    return split_lungs_with_info(mask, geometry)[0]
