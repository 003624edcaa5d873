"""Series made from a case that a hospital might send: sound variants and failures, with their truth.

:func:`make_failure` turns a case's canonical volume (HU, slice index ascending towards the head) and
its lung mask into another series and the mask that is true for it. Used to calibrate and to evaluate
the quality control (:mod:`lungseg.inference.qc`, :mod:`lungseg.evaluation.qc_calibrate`); never applied
to the data on
disk (every variant is a new array).

Sound kinds (a mask of these should pass): ``original``; ``mild_noise`` (sigma 10-30 HU, a lower
dose); ``trim`` (the scan starts and ends 2-5 slices beyond the lungs); ``shift`` (the patient off
centre by up to 25 pixels); ``smooth`` (a softer reconstruction kernel, Gaussian sigma 0.8 pixel).

Failure kinds: ``truncate_top``/``truncate_bottom`` (the scan stops 10-40 % of the lung's height
inside the apex / base); ``crop_fov`` (a square field of view of 45-65 % of the width, off centre, so
that a lung is cut by the image edge); ``zoom_fov`` (the same square reconstructed onto the full
matrix: smaller pixels); ``circle_fov`` (a reconstruction circle of radius 30-40 % of the width, off
centre, cutting a lung: outside it padding, -3024 HU, or air); ``lost_intercept`` (RescaleIntercept
-1024 lost: every value +1024); ``wrong_slope`` (slope 0.4-0.7 or 1.5-2.5 instead of 1);
``consolidation`` (20-50 % of one lung, grown from its posterior, dependent part, at soft-tissue
density 35 +- 20 HU; it is still lung in the truth); ``noise`` (Gaussian, sigma 150-400 HU);
``metal`` (streaks radiating from a bright object in the mediastinum over a third of the lung's
height); ``motion`` (a ghost copy shifted 8-20 pixels front-back, 30-50 % strong); ``no_lung`` (only
the slices below or above the lungs: not a chest scan).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from lungseg.inference import resample
from lungseg.io.dicom import Volume

SOUND_KINDS = ("original", "mild_noise", "trim", "shift", "smooth")
FAILURE_KINDS = ("truncate_top", "truncate_bottom", "crop_fov", "zoom_fov", "circle_fov", "lost_intercept",
                 "wrong_slope", "consolidation", "noise", "metal", "motion", "no_lung")
KINDS = SOUND_KINDS + FAILURE_KINDS
AIR_HU = -1000
HU_RANGE = (-1024, 3071)
"""What a CT scanner writes (12 bits): noise and artefacts are clipped to it."""
MIN_SLICES = 8
"""A non-chest variant needs at least this many slices outside the lungs."""


@dataclass(frozen=True)
class Variant:
    """A series made from a case: its volume, its true lung mask (bool, z y x) and what was done."""

    volume: Volume
    truth: np.ndarray
    kind: str
    detail: str
    cut: bool | None = None
    """Whether the scan cuts the lungs, when the truth alone cannot tell (a reconstruction circle);
    None: :func:`lungs_cut` of the truth."""
    source_slices: tuple[int, int] | None = None
    """(start, stop) when the series is slices [start, stop) of the source volume with every pixel
    unchanged: a 2D network's logits of it are the source's logits of those slices, so they need
    not be computed again (:func:`lungseg.evaluation.qc_calibrate.score_series`); None otherwise."""

    @property
    def lungs_cut(self) -> bool:
        return lungs_cut(self.truth) if self.cut is None else self.cut


def _hu(values: np.ndarray) -> np.ndarray:
    """Float HU → int16 within what a scanner writes (rounded and clipped in one buffer: a volume's
    float64 copy is ~300 MB)."""
    out = np.rint(values)
    return np.clip(out, *HU_RANGE, out=out).astype(np.int16)


def _lung_extent(truth: np.ndarray) -> tuple[int, int]:
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("the case's mask holds no lung: no variant can be made")
    return int(zs[0]), int(zs[-1])


def _slices(volume: Volume, truth: np.ndarray, start: int, stop: int) -> tuple[Volume, np.ndarray]:
    """Slices [start, stop) of a canonical volume (positions, origin and files follow)."""
    pos = np.asarray(volume.positions)[start:stop]
    origin = (volume.origin[0], volume.origin[1], float(pos[0]))
    files = volume.files[start:stop] if volume.files else ()
    return replace(volume, hu=np.asarray(volume.hu[start:stop]), positions=pos, origin=origin,
                   files=files), np.asarray(truth[start:stop], dtype=bool)


def _square_window(truth: np.ndarray, share: float, rng: np.random.Generator) -> tuple[int, int, int]:
    """(y0, x0, side) of an off-centre square, ``share`` of the width, over the lungs' middle."""
    n = truth.shape[2]
    side = int(round(share * n))
    ys, xs = np.flatnonzero(truth.any(axis=(0, 2))), np.flatnonzero(truth.any(axis=(0, 1)))
    cy, cx = (ys[0] + ys[-1]) / 2, (xs[0] + xs[-1]) / 2
    cx += rng.choice([-1, 1]) * rng.uniform(0.1, 0.25) * n
    y0 = int(np.clip(round(cy - side / 2), 0, n - side))
    x0 = int(np.clip(round(cx - side / 2), 0, n - side))
    return y0, x0, side


def _crop(volume: Volume, truth: np.ndarray, y0: int, x0: int, side: int) -> tuple[Volume, np.ndarray]:
    dz, dy, dx = volume.spacing
    origin = (volume.origin[0] + x0 * dx, volume.origin[1] + y0 * dy, volume.origin[2])
    window = (slice(None), slice(y0, y0 + side), slice(x0, x0 + side))
    return (replace(volume, hu=np.asarray(volume.hu[window]), origin=origin),
            np.asarray(truth[window], dtype=bool))


def _resize(stack: np.ndarray, n: int) -> np.ndarray:
    """(z, s, s) → (z, n, n) float32, bilinear (as :mod:`lungseg.inference.resample` upsamples logits)."""
    return resample.resample(stack.astype(np.float32), resample.bilinear_matrix(stack.shape[-1], n))


def _consolidation(volume: Volume, truth: np.ndarray, share: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """HU with ``share`` of one lung (the half of the mask on one side of its middle) replaced by
    soft tissue, grown from that lung's most posterior voxel at mid-height."""
    xs = np.flatnonzero(truth.any(axis=(0, 1)))
    middle = (xs[0] + xs[-1]) // 2
    side = str(rng.choice(["image-left", "image-right"]))
    half = np.zeros_like(truth, dtype=bool)
    cols = slice(None, middle) if side == "image-left" else slice(middle, None)
    half[:, :, cols] = truth[:, :, cols]
    z0, z1 = _lung_extent(half)
    zc = int(round(z0 + rng.uniform(0.35, 0.65) * (z1 - z0)))
    while not half[zc].any():
        zc += 1
    ys, xs_ = np.nonzero(half[zc])
    seed = np.array([zc, ys.max(), int(np.median(xs_[ys == ys.max()]))], dtype=float)
    pts = np.argwhere(half)
    d = np.linalg.norm((pts - seed) * np.asarray(volume.spacing), axis=1)
    chosen = pts[np.argsort(d)[:int(share * len(pts))]]
    hu = np.array(volume.hu, dtype=np.float32)
    hu[tuple(chosen.T)] = rng.normal(35.0, 20.0, len(chosen))
    return _hu(hu), f"{share:.0%} of the {side} lung"


def _metal(volume: Volume, truth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Streaks from a bright object between the lungs over a third of the lungs' height."""
    z0, z1 = _lung_extent(truth)
    height = z1 - z0
    a = int(z0 + rng.uniform(0.2, 0.5) * height)
    band = slice(a, a + max(1, height // 3))
    ys, xs = np.flatnonzero(truth.any(axis=(0, 2))), np.flatnonzero(truth.any(axis=(0, 1)))
    cy, cx = (ys[0] + ys[-1]) / 2 + rng.uniform(-15, 15), (xs[0] + xs[-1]) / 2 + rng.uniform(-15, 15)
    n = truth.shape[1]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    r = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)
    streaks = np.zeros((n, n), dtype=np.float32)
    strength = rng.uniform(800, 2000)
    for angle in rng.uniform(0, np.pi, int(rng.integers(6, 11))):
        across = r * np.abs(np.sin(theta - angle))  # distance (px) from the line through the object
        streaks += rng.choice([-1, 1]) * strength * np.exp(-(across / 1.5) ** 2)
    streaks *= np.exp(-r / (0.6 * n))
    streaks[r < 6] = 3000.0
    hu = np.array(volume.hu, dtype=np.float32)
    hu[band] += streaks
    return _hu(hu), f"{int(strength)} HU streaks on slices {band.start}-{band.stop - 1}"


def make_failure(volume: Volume, truth: np.ndarray, kind: str, rng: np.random.Generator) -> Variant:
    """The series of ``kind`` (:data:`KINDS`) made from a canonical ``volume`` and its bool (z, y, x)
    lung mask ``truth``, drawing its severity from ``rng``. The inputs are not modified."""
    truth = np.asarray(truth, dtype=bool)
    z0, z1 = _lung_extent(truth)
    nz, ny, nx = volume.shape

    def made(hu: np.ndarray, detail: str) -> Variant:  # the same grid, other intensities
        return Variant(replace(volume, hu=hu), truth, kind, detail)

    if kind == "original":
        return Variant(volume, truth, kind, "unchanged", source_slices=(0, nz))
    if kind in ("mild_noise", "noise"):
        sigma = rng.uniform(10, 30) if kind == "mild_noise" else rng.uniform(150, 400)
        noisy = np.asarray(volume.hu, dtype=np.float32) + sigma * rng.standard_normal(volume.shape, "f4")
        return made(_hu(noisy), f"sigma {sigma:.0f} HU")
    if kind == "trim":
        lo, hi = max(0, z0 - int(rng.integers(2, 6))), min(nz, z1 + 1 + int(rng.integers(2, 6)))
        v, t = _slices(volume, truth, lo, hi)
        return Variant(v, t, kind, f"slices {lo}-{hi - 1} of {nz}", source_slices=(lo, hi))
    if kind == "shift":
        dy, dx = (int(v) for v in rng.integers(-25, 26, 2))
        hu = ndimage.shift(np.asarray(volume.hu), (0, dy, dx), order=0, cval=AIR_HU)
        t = ndimage.shift(truth, (0, dy, dx), order=0, cval=False)
        return Variant(replace(volume, hu=hu), t, kind, f"shifted {dy}, {dx} px")
    if kind == "smooth":
        hu = ndimage.gaussian_filter(np.asarray(volume.hu, dtype=np.float32), (0, 0.8, 0.8))
        return made(_hu(hu), "Gaussian sigma 0.8 px")
    if kind in ("truncate_top", "truncate_bottom"):
        share = rng.uniform(0.1, 0.4)
        cut = int(round(share * (z1 - z0)))
        lo, hi = (0, z1 + 1 - cut) if kind == "truncate_top" else (z0 + cut, nz)
        v, t = _slices(volume, truth, lo, hi)
        return Variant(v, t, kind, f"{share:.0%} of the lung height removed", source_slices=(lo, hi))
    if kind in ("crop_fov", "zoom_fov"):
        share = rng.uniform(0.45, 0.65)
        y0, x0, side = _square_window(truth, share, rng)
        v, t = _crop(volume, truth, y0, x0, side)
        if kind == "crop_fov":
            return Variant(v, t, kind, f"{side}x{side} px window")
        hu = _hu(_resize(np.asarray(v.hu), nx))
        t = _resize(t.astype(np.float32), nx) > 0.5
        scale = side / nx
        sp = (volume.spacing[0], volume.spacing[1] * scale, volume.spacing[2] * scale)
        return Variant(replace(v, hu=hu, spacing=sp), t, kind, f"{side} px window on {nx} px")
    if kind == "circle_fov":
        radius = rng.uniform(0.3, 0.4) * nx
        ys, xs = np.flatnonzero(truth.any(axis=(0, 2))), np.flatnonzero(truth.any(axis=(0, 1)))
        cy = (ys[0] + ys[-1]) / 2
        cx = (xs[0] + xs[-1]) / 2 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.15) * nx
        yy, xx = np.mgrid[0:ny, 0:nx]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        fill = int(rng.choice([-3024, AIR_HU]))
        hu = np.where(inside[None], np.asarray(volume.hu), np.int16(fill)).astype(np.int16)
        return Variant(replace(volume, hu=hu), truth & inside[None], kind,
                       f"circle of radius {radius:.0f} px, {fill} HU outside",
                       cut=bool((truth & ~inside[None]).any()))
    if kind == "lost_intercept":
        return made((np.asarray(volume.hu, dtype=np.int16) + 1024).astype(np.int16), "+1024 HU")
    if kind == "wrong_slope":
        slope = rng.uniform(0.4, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.5)
        hu = (np.asarray(volume.hu, dtype=np.float32) + 1024) * slope - 1024
        return made(_hu(hu), f"slope {slope:.2f}")
    if kind == "consolidation":
        hu, detail = _consolidation(volume, truth, rng.uniform(0.2, 0.5), rng)
        return made(hu, detail)
    if kind == "metal":
        hu, detail = _metal(volume, truth, rng)
        return made(hu, detail)
    if kind == "motion":
        shift, weight = int(rng.integers(8, 21)), rng.uniform(0.3, 0.5)
        hu = np.asarray(volume.hu, dtype=np.float32)
        ghost = ndimage.shift(hu, (0, shift, 0), order=0, cval=AIR_HU)
        return made(_hu((1 - weight) * hu + weight * ghost), f"ghost {shift} px, {weight:.0%}")
    if kind == "no_lung":
        below, above = z0, nz - 1 - z1
        if max(below, above) < MIN_SLICES:
            raise ValueError(f"{volume.case_id}: fewer than {MIN_SLICES} slices outside the lungs")
        lo, hi = (0, z0) if below >= above else (z1 + 1, nz)
        v, t = _slices(volume, truth, lo, hi)
        where = "below" if lo == 0 else "above"
        return Variant(v, t, kind, f"slices {lo}-{hi - 1}, {where} the lungs", source_slices=(lo, hi))
    raise ValueError(f"unknown variant kind {kind!r}; expected one of {', '.join(KINDS)}")


def lungs_cut(truth: np.ndarray) -> bool:
    """True when a true lung mask (bool z, y, x) reaches the first or last slice or the image edge."""
    truth = np.asarray(truth, dtype=bool)
    return bool(truth[0].any() or truth[-1].any() or truth[:, 0].any() or truth[:, -1].any()
                or truth[:, :, 0].any() or truth[:, :, -1].any())
