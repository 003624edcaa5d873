"""Right/left lung labels from a one-label mask, sided by the DICOM geometry (lungseg.inference.sides).

Synthetic "patients" are defined in patient LPS mm and sampled onto grids of several orientations, so
the expected side of every voxel is known whatever the array layout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import synthetic
from scipy import ndimage

from lungseg import paths
from lungseg.inference import sides
from lungseg.io.dicom import load_series
from lungseg.io.masks import load_mask
from lungseg.io.orient import voxel_to_lps

STANDARD = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # head-first supine
MIRRORED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # columns run to the patient's right (also feet-first supine)
PRONE = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
ROTATED = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # rows run right-left: left-right is the array's y axis
SHAPE = (8, 44, 52)
SPACING = (3.0, 2.0, 2.0)  # (dz, dy, dx) mm
# Plausible right/left lung volume ratio bounds for the real cases (a generic sanity range).
VOLUME_RATIO_RANGE = (1 / 3, 3.0)
MIN_LUNG_ML = 100.0

World = Callable[[np.ndarray], np.ndarray]


def affine_for(orientation: tuple[float, ...], shape: tuple[int, int, int] = SHAPE,
               spacing: tuple[float, float, float] = SPACING, feet_first: bool = False) -> np.ndarray:
    """(4, 4) voxel (i, j, k) -> LPS mm affine as lungseg.io.orient.voxel_to_lps builds it, with the grid
    centred on the LPS origin. ``feet_first``: slices stacked towards the feet."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col) * (-1.0 if feet_first else 1.0)
    dz, dy, dx = spacing
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row * dx, col * dy, normal * dz
    centre = affine[:3, :3] @ ((np.array(shape[::-1], dtype=float) - 1) / 2)
    affine[:3, 3] = -centre
    return affine


def lps_of_voxels(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(z, y, x, 3) LPS mm of every voxel centre."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ affine.T)[..., :3]


def box(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> World:
    """A box in LPS mm (x, y, z bounds), as a membership test of (..., 3) points."""
    return lambda p: np.all((p >= np.asarray(lo)) & (p <= np.asarray(hi)), axis=-1)


# Right lung at negative x (patient's right), left lung at positive x, both 30 mm deep.
RIGHT_LUNG = box((-40.0, -20.0, -9.0), (-8.0, 20.0, 9.0))
LEFT_LUNG = box((8.0, -20.0, -9.0), (36.0, 16.0, 9.0))
BRIDGE = box((-8.0, -20.0, -3.0), (8.0, -18.0, 3.0))  # one pixel thick, two slices: an anterior junction


def sample(affine: np.ndarray, *parts: World) -> np.ndarray:
    points = lps_of_voxels(affine, SHAPE)
    return np.any([part(points) for part in parts], axis=0)


ORIENTATIONS = {"standard": (STANDARD, False), "mirrored": (MIRRORED, False),
                "feet-first": (MIRRORED, True), "prone": (PRONE, False), "rotated": (ROTATED, False)}


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_separate_lungs_are_sided_in_patient_coordinates(name: str) -> None:
    orientation, feet_first = ORIENTATIONS[name]
    affine = affine_for(orientation, feet_first=feet_first)
    points = lps_of_voxels(affine, SHAPE)
    right, left = RIGHT_LUNG(points), LEFT_LUNG(points)
    labels, info = sides.split_lungs_with_info(right | left, affine)
    assert labels.dtype == np.uint8 and labels.shape == SHAPE
    assert np.all(labels[right] == sides.RIGHT) and np.all(labels[left] == sides.LEFT)
    assert np.all(labels[~(right | left)] == 0)
    assert (info.method, info.touched, info.n_components, info.strays) == ("components", False, 2, 0)
    voxel_ml = np.prod(SPACING) / 1000
    assert info.right_ml == pytest.approx(right.sum() * voxel_ml)
    assert info.left_ml == pytest.approx(left.sum() * voxel_ml)


def test_mirroring_the_orientation_swaps_the_labels_of_the_same_array() -> None:
    mask = sample(affine_for(STANDARD), RIGHT_LUNG, LEFT_LUNG)
    standard = sides.split_lungs(mask, affine_for(STANDARD))
    mirrored = sides.split_lungs(mask, affine_for(MIRRORED))
    assert set(np.unique(standard)) == {0, 1, 2}
    swapped = np.choose(standard, [0, 2, 1]).astype(np.uint8)
    np.testing.assert_array_equal(mirrored, swapped)


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_touching_lungs_are_split_at_the_junction(name: str) -> None:
    orientation, feet_first = ORIENTATIONS[name]
    affine = affine_for(orientation, feet_first=feet_first)
    points = lps_of_voxels(affine, SHAPE)
    right, left, bridge = RIGHT_LUNG(points), LEFT_LUNG(points), BRIDGE(points)
    mask = right | left | bridge
    labels, info = sides.split_lungs_with_info(mask, affine)
    assert info.touched and info.method == "eroded" and info.n_components == 1
    assert info.split_depth_mm is not None and 0 < info.split_depth_mm <= sides.MAX_SPLIT_DEPTH_MM
    np.testing.assert_array_equal(labels > 0, mask)
    assert np.all(labels[right] == sides.RIGHT) and np.all(labels[left] == sides.LEFT)
    # The bridge is cut at the patient's midline (x = 0): its voxels go to the side they lie on.
    x = points[..., 0]
    assert np.all(labels[bridge & (x < 0)] == sides.RIGHT) and np.all(labels[bridge & (x > 0)] == sides.LEFT)


def test_touching_lungs_reaching_the_edges_of_the_grid_are_split() -> None:
    affine = affine_for(STANDARD)
    points = lps_of_voxels(affine, SHAPE)
    right = box((-99.0, -99.0, -99.0), (-8.0, 99.0, 99.0))(points)  # every row, slice, first column
    left = box((8.0, -99.0, -99.0), (99.0, 99.0, 99.0))(points)
    bridge = box((-8.0, -20.0, -3.0), (8.0, -18.0, 3.0))(points)
    labels, info = sides.split_lungs_with_info(right | left | bridge, affine)
    assert info.touched and right[0, 0, 0] and left[-1, -1, -1]
    assert np.all(labels[right] == sides.RIGHT) and np.all(labels[left] == sides.LEFT)


def test_stray_components_join_the_nearest_lung() -> None:
    affine = affine_for(STANDARD)
    points = lps_of_voxels(affine, SHAPE)
    near_left = box((38.0, -4.0, -3.0), (42.0, 0.0, 0.0))(points)  # lateral of the left lung
    near_right = box((-20.0, 24.0, -3.0), (-16.0, 26.0, 0.0))(points)  # behind the right lung
    mask = RIGHT_LUNG(points) | LEFT_LUNG(points) | near_left | near_right
    labels, info = sides.split_lungs_with_info(mask, affine)
    assert near_left.any() and near_right.any()
    assert info.strays == 2 and info.n_components == 4 and info.method == "components"
    assert np.all(labels[near_left] == sides.LEFT) and np.all(labels[near_right] == sides.RIGHT)
    np.testing.assert_array_equal(labels > 0, mask)


@pytest.mark.parametrize("method", ["kdtree", "transform"])
def test_strays_join_the_lung_a_brute_force_search_finds_nearest(method: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways (a k-d tree over border voxels, or one feature transform, chosen by the strays'
    size) agree with the definition: for each stray, the side of the lung voxel at the smallest
    distance (mm, anisotropic spacing) from any of its voxels."""
    monkeypatch.setattr(sides, "MAX_STRAYS_BY_TREE", 10**9 if method == "kdtree" else 0)
    rng = np.random.default_rng(0)
    spacing = np.array([3.0, 0.7, 0.9])
    lungs = np.zeros((12, 60, 80), dtype=np.uint8)
    lungs[2:10, 10:50, 5:35], lungs[2:10, 15:45, 45:75] = sides.RIGHT, sides.LEFT
    comps = np.zeros(lungs.shape, dtype=np.int32)
    comps[lungs == sides.RIGHT], comps[lungs == sides.LEFT] = 1, 2
    free = np.argwhere(ndimage.binary_dilation(lungs > 0, iterations=2) == 0)
    strays = []
    for c, (z, y, x) in enumerate(free[rng.choice(len(free), 40, replace=False)], start=3):
        near = tuple(slice(max(v - 1, 0), v + 2) for v in (z, y, x))
        if not np.any(comps[near]):  # one-voxel strays that touch nothing
            comps[z, y, x] = c
            strays.append(c)
    labels = lungs.copy()
    sides._assign_strays(labels, comps, strays, spacing)
    lung_mm = np.argwhere(lungs > 0) * spacing
    for c in strays:
        d = np.linalg.norm(lung_mm - np.argwhere(comps == c)[0] * spacing, axis=1)
        nearest_sides = set(lungs[lungs > 0][d <= d.min() + 1e-9])
        assert labels[comps == c][0] in nearest_sides
    assert len(strays) > 20


def test_a_stray_beside_touching_lungs_does_not_count_as_a_lung() -> None:
    affine = affine_for(STANDARD)
    points = lps_of_voxels(affine, SHAPE)
    stray = box((-30.0, 24.0, -3.0), (-26.0, 28.0, 0.0))(points)  # a blob behind the right lung
    mask = RIGHT_LUNG(points) | LEFT_LUNG(points) | BRIDGE(points) | stray
    labels, info = sides.split_lungs_with_info(mask, affine)
    assert info.touched and info.strays == 1
    assert np.all(labels[stray] == sides.RIGHT) and np.all(labels[LEFT_LUNG(points)] == sides.LEFT)


@pytest.mark.parametrize(("orientation", "part", "side"), [
    (STANDARD, LEFT_LUNG, sides.LEFT), (MIRRORED, LEFT_LUNG, sides.LEFT),
    (STANDARD, RIGHT_LUNG, sides.RIGHT)])
def test_a_single_lung_is_sided_against_the_grid_centre(orientation: tuple[float, ...], part: World,
                                                        side: int) -> None:
    affine = affine_for(orientation)
    mask = sample(affine, part)
    labels, info = sides.split_lungs_with_info(mask, affine)
    assert info.method == "single" and not info.touched
    np.testing.assert_array_equal(labels, np.where(mask, side, 0))


def test_empty_mask_gives_empty_labels() -> None:
    labels, info = sides.split_lungs_with_info(np.zeros(SHAPE, dtype=bool), affine_for(STANDARD))
    assert not labels.any() and info.method == "empty" and info.right_ml == info.left_ml == 0


def test_bad_inputs_are_named_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        sides.split_lungs(np.zeros((4, 4), dtype=bool), affine_for(STANDARD))
    with pytest.raises(ValueError, match="affine"):
        sides.split_lungs(np.zeros(SHAPE, dtype=bool), np.eye(3))


@pytest.mark.parametrize(("orientation", "feet_first", "expected"), [
    (STANDARD, False, (2, 1)), (MIRRORED, False, (2, -1)), (MIRRORED, True, (2, -1)),
    (PRONE, False, (2, -1)), (ROTATED, False, (1, -1)), ((0.0, 0.0, 1.0, 1.0, 0.0, 0.0), False, (1, 1))])
def test_lr_axis_sign(orientation: tuple[float, ...], feet_first: bool, expected: tuple[int, int]) -> None:
    assert sides.lr_axis_sign(affine_for(orientation, feet_first=feet_first)) == expected


def test_a_mirrored_dicom_series_flips_the_sides(tmp_path: Path) -> None:
    """Through load_series and voxel_to_lps: the same pixels stored with IOP [-1, 0, 0, 0, 1, 0]."""
    volumes = {}
    for name, orientation in (("standard", STANDARD), ("mirrored", MIRRORED)):
        for f in synthetic.write_series(tmp_path / name, n=4, rows=12, cols=20):
            synthetic.edit(f, ImageOrientationPatient=list(orientation))
        volumes[name] = load_series(tmp_path / name)
    mask = np.zeros(volumes["standard"].shape, dtype=bool)
    mask[1:3, 3:9, 2:7] = True  # low column index ...
    mask[1:3, 3:9, 12:18] = True  # ... and high column index
    standard = sides.split_lungs(mask, volumes["standard"])
    mirrored = sides.split_lungs(mask, volumes["mirrored"])
    np.testing.assert_array_equal(sides.affine_of(volumes["mirrored"]), voxel_to_lps(volumes["mirrored"]))
    assert standard[1, 5, 4] == sides.RIGHT and standard[1, 5, 15] == sides.LEFT
    assert mirrored[1, 5, 4] == sides.LEFT and mirrored[1, 5, 15] == sides.RIGHT


def _available_cases() -> tuple[Path, list[str]]:
    """The data directory and the cases with images and a mask; skips when there are none."""
    try:
        data = paths.data_dir()
        cases = [c for c in paths.list_cases(data) if paths.mask_file(data, c).is_file()]
    except FileNotFoundError as exc:
        pytest.skip(str(exc).splitlines()[0] + " (see ../shared/data/lctsc12/unpack.sh)")
    if not cases:
        pytest.skip(f"no case with images and a mask in {data}")
    return data, cases


@pytest.mark.realdata
def test_every_real_case_splits_into_two_plausible_lungs(capsys: pytest.CaptureFixture[str]) -> None:
    data, cases = _available_cases()
    touched, problems = [], []
    for case_id in cases:
        volume = load_series(paths.images_dir(data, case_id))
        mask = load_mask(paths.mask_file(data, case_id), volume)
        labels, info = sides.split_lungs_with_info(mask, volume)
        affine = voxel_to_lps(volume)
        centroid_x = {}
        for side in (sides.RIGHT, sides.LEFT):
            zyx = np.argwhere(labels == side).mean(axis=0)
            centroid_x[side] = (affine @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[0]
        ratio = info.right_ml / info.left_ml if info.left_ml else np.inf
        if not np.array_equal(labels > 0, mask):
            problems.append(f"{case_id}: labels do not cover the mask exactly")
        if min(info.right_ml, info.left_ml) < MIN_LUNG_ML:
            problems.append(f"{case_id}: a lung below {MIN_LUNG_ML} mL ({info})")
        if not centroid_x[sides.RIGHT] < centroid_x[sides.LEFT]:
            problems.append(f"{case_id}: right lung centroid at LPS x {centroid_x[sides.RIGHT]:.1f} mm, "
                            f"not below the left one's {centroid_x[sides.LEFT]:.1f} mm")
        if not VOLUME_RATIO_RANGE[0] <= ratio <= VOLUME_RATIO_RANGE[1]:
            problems.append(f"{case_id}: right/left volume ratio {ratio:.2f}")
        if info.touched:
            touched.append(f"{case_id} ({info.split_depth_mm:.1f} mm)")
    with capsys.disabled():
        print(f"\nlung split: {len(touched)} of {len(cases)} cases have touching lungs: {', '.join(touched)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_merged_lungs_beside_a_stray_blob_are_still_split(name: str) -> None:
    """Regression (a real prediction, Case_002): when both lungs form one component, a small blob
    beyond one lung (outside the body) is "on the other side" of it, but it is no lung; the merged
    pair must be split by erosion and the blob go to its nearest lung, not become a whole side."""
    orientation, feet_first = ORIENTATIONS[name]
    affine = affine_for(orientation, feet_first=feet_first)
    points = lps_of_voxels(affine, SHAPE)
    blob = box((40.0, -2.0, -3.0), (42.0, 2.0, 3.0))  # a pixel column just beyond the left lung
    labels, info = sides.split_lungs_with_info(sample(affine, RIGHT_LUNG, LEFT_LUNG, BRIDGE, blob), affine)
    assert info.method == "eroded" and info.strays == 1
    assert np.all(labels[RIGHT_LUNG(points)] == sides.RIGHT)
    assert np.all(labels[LEFT_LUNG(points) | blob(points)] == sides.LEFT)



def test_one_unsplittable_part_is_sided_by_position() -> None:
    affine = affine_for(STANDARD)
    mask = sample(affine, RIGHT_LUNG)
    labels, info = sides.split_lungs_with_info(mask, affine)
    assert info.method == "single" and set(np.unique(labels[mask])) == {sides.RIGHT}


def test_in_plane_depth_on_each_slice_box_equals_the_whole_slice_transform() -> None:
    """Known answer: scipy's transform of each whole (padded) slice, for slices along every axis,
    anisotropic pixels and masks that reach the grid's edge."""
    ndi = ndimage
    rng = np.random.default_rng(1)
    for _ in range(10):
        comp = ndi.binary_opening(rng.random((6, 40, 50)) > 0.35)
        comp[:, : int(rng.integers(0, 10))] = False
        spacing = np.array([rng.uniform(1, 3), rng.uniform(0.5, 1), rng.uniform(0.5, 1)])
        for axis in range(3):
            want = np.zeros(comp.shape)
            planes, out = np.moveaxis(comp, axis, 0), np.moveaxis(want, axis, 0)
            for k in range(planes.shape[0]):
                if planes[k].any():
                    out[k] = ndi.distance_transform_edt(np.pad(planes[k], 1),
                                                        sampling=np.delete(spacing, axis))[1:-1, 1:-1]
            assert np.array_equal(sides._in_plane_depth(comp, spacing, axis), want)
