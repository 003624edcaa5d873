"""Dense lung on held-out patients: a 3D disease generator of its own, and the study the report shows.

Training draws dense lung per 2D slice (:mod:`lungseg.network.disease`: bands, fissure-cut halves,
patches and border-hugging collapse, with and without air bronchograms). Scoring with that generator
would only measure how well the network learned it, so this module draws **other** disease, in 3D,
with other shapes, places and densities (:data:`KINDS`):

* ``lower_lobe``: one lung below an oblique, fissure-like plane (posterior-inferior), 25-60 % of it,
  homogeneous 5-50 HU (lobar pneumonia);
* ``multifocal``: 4-10 ellipsoidal foci in both lungs, 10-35 mm, dense cores (-60 to +40 HU) with a
  ground-glass halo (+250 to +400 HU) (bronchopneumonia);
* ``peripheral_ggo``: a subpleural band 12-35 mm deep in the lower two thirds, patchy, +280 to +480 HU
  (the ground glass of viral pneumonia);
* ``basal_atelectasis``: both lungs, a posterior crescent thickening towards the base (up to 25-60 mm),
  20-45 HU (compressive collapse);
* ``dense_shift``: +600 to +750 HU over the lower half of the patient's right lung (the example that
  showed the problem).

Every variant keeps the true mask (dense lung is lung). :func:`make_dense` records the share of the
lung changed (``extent``) and the mean HU of the changed part (``density_hu``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage

from lungseg.evaluation import failures, metrics, qc_calibrate
from lungseg.inference import postprocess, qc, sides
from lungseg.io.dicom import Volume
from lungseg.network.disease import AIR_HU, LUCENT_BELOW_HU
from lungseg.network.runs import TrainResult

KINDS = ("lower_lobe", "multifocal", "peripheral_ggo", "basal_atelectasis", "dense_shift", "emphysema")
CHANGED = 0.5
"""A voxel counts as changed (for ``extent`` and ``density_hu``) where the disease weight exceeds this."""


@dataclass(frozen=True)
class DenseVariant:
    """A diseased series: the variant (volume, unchanged truth, kind, detail), the share of the true
    lung changed and the mean HU of the changed part."""

    variant: failures.Variant
    extent: float
    density_hu: float


def _grid_mm(shape: tuple[int, int, int], spacing: Sequence[float]) -> tuple[np.ndarray, ...]:
    """(z, y, x) coordinate grids in mm, broadcastable (z towards the head, y towards the back)."""
    return tuple(
        np.arange(n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)]) * float(s)
        for i, (n, s) in enumerate(zip(shape, spacing, strict=True))
    )


def _smooth_noise(
    shape: tuple[int, ...], cell_mm: float, spacing: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """A 3D field of unit spread that varies over about ``cell_mm``."""
    coarse = [max(2, int(math.ceil(n * s / cell_mm)) + 1) for n, s in zip(shape, spacing, strict=True)]
    f = ndimage.zoom(
        rng.standard_normal(coarse).astype(np.float32),
        [n / c for n, c in zip(shape, coarse, strict=True)],
        order=1,
        grid_mode=True,
        mode="nearest",
    )
    f = f[: shape[0], : shape[1], : shape[2]]
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _lower_lobe(lung_side: np.ndarray, spacing, rng) -> tuple[np.ndarray, np.ndarray, str]:
    z, y, _ = _grid_mm(lung_side.shape, spacing)
    alpha = math.radians(rng.uniform(25, 50))
    s = z * math.cos(alpha) - y * math.sin(alpha)  # low = inferior and posterior
    share = rng.uniform(0.25, 0.6)
    cut = np.quantile(np.broadcast_to(s, lung_side.shape)[lung_side], share)
    weight = (s <= cut) & lung_side
    mean = rng.uniform(5, 50)
    value = mean + rng.uniform(8, 20) * ndimage.gaussian_filter(
        rng.standard_normal(lung_side.shape).astype(np.float32), 0.7
    )
    return (
        weight.astype(np.float32),
        value,
        f"{share:.0%} of one lung below an oblique plane at {mean:.0f} HU",
    )


def _multifocal(lung: np.ndarray, spacing, rng) -> tuple[np.ndarray, float, np.ndarray, float, str]:
    """Dense cores (weight, HU) and their ground-glass halo (bool, HU added), and the detail."""
    pts = np.argwhere(lung)
    n = int(rng.integers(4, 11))
    z, y, x = _grid_mm(lung.shape, spacing)
    field = np.zeros(lung.shape, dtype=np.float32)
    for c in pts[rng.choice(len(pts), n, replace=False)] * np.asarray(spacing):
        r = rng.uniform(10, 35, 3)
        d2 = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2
        np.maximum(field, np.exp(-d2), out=field)
    core_hu, halo_hu = rng.uniform(-60, 40), rng.uniform(250, 400)
    core = (field > 0.6) & lung
    halo = (field > 0.3) & lung & ~core
    return (
        core.astype(np.float32),
        core_hu,
        halo,
        halo_hu,
        f"{n} foci, cores {core_hu:.0f} HU, halo +{halo_hu:.0f} HU",
    )


def _depth_mm(lung: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``distance_transform_edt(lung, sampling=spacing)``, computed on the lung's bounding box and
    one voxel more on each side that the array has: the same values (a lung voxel's nearest background
    voxel lies in that box: moving a farther one into the box, axis by axis, only brings it closer and
    lands on the all-background margin), at the cost of the box instead of the whole scan."""
    box = postprocess.bounding_box(lung)
    depth = np.zeros(lung.shape, dtype=np.float64)
    if box is None:
        return depth
    grown = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n))
                  for b, n in zip(box, lung.shape, strict=True))
    depth[grown] = ndimage.distance_transform_edt(lung[grown], sampling=spacing)
    return depth


def _peripheral(lung: np.ndarray, spacing, rng) -> tuple[np.ndarray, float, str]:
    depth = _depth_mm(lung, spacing)
    band = rng.uniform(12, 35)
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    top = zs[0] + (zs[-1] - zs[0]) * 2 // 3
    patchy = _smooth_noise(lung.shape, 40.0, spacing, rng) > rng.uniform(-0.6, 0.2)
    region = lung & (depth <= band) & patchy
    region[top + 1 :] = False
    add = rng.uniform(280, 480)
    return (
        ndimage.gaussian_filter(region.astype(np.float32), 1.0) * lung,
        add,
        (f"subpleural band {band:.0f} mm, +{add:.0f} HU"),
    )


def _basal(lung: np.ndarray, spacing, rng) -> tuple[np.ndarray, np.ndarray, str]:
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    z0, z1 = int(zs[0]), int(zs[-1])
    height = rng.uniform(0.4, 0.7) * (z1 - z0)
    thick_max = rng.uniform(25, 60)
    back = np.where(lung.any(axis=1), lung.shape[1] - 1 - np.argmax(lung[:, ::-1, :], axis=1), -1)  # (z, x)
    zz = np.arange(lung.shape[0], dtype=np.float32)[:, None]
    thick = thick_max * np.clip(1 - (zz - z0) / max(height, 1.0), 0, 1)  # (z, 1) mm
    y_mm = np.arange(lung.shape[1], dtype=np.float32)[None, :, None] * float(spacing[1])
    region = (
        lung & (y_mm >= (back[:, None, :] * float(spacing[1]) - thick[:, :, None])) & (back[:, None, :] >= 0)
    )
    mean = rng.uniform(20, 45)
    value = mean + rng.uniform(5, 12) * rng.standard_normal(lung.shape).astype(np.float32)
    return region.astype(np.float32), value, f"posterior crescent up to {thick_max:.0f} mm at {mean:.0f} HU"


def _emphysema(lung: np.ndarray, hu: np.ndarray, spacing, rng) -> tuple[np.ndarray, np.ndarray, str]:
    """Both lungs' parenchyma (below ``LUCENT_BELOW_HU``, -500 HU) shifted down by 60-140 HU, floored
    at air, and 6-14 bullae (spheres of 8-25 mm radius at about -1000 HU) in the upper half: lucent
    lung, the opposite of dense, which is lung too (LCTSC contours emphysematous lung)."""
    shift = rng.uniform(60, 140)
    parenchyma = lung & (hu < LUCENT_BELOW_HU)  # the same parenchyma as training's, another change
    value = np.maximum(hu - shift, AIR_HU)
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    upper = np.argwhere(lung & (np.arange(lung.shape[0])[:, None, None] > (zs[0] + zs[-1]) // 2))
    n = int(rng.integers(6, 15))
    for c in upper[rng.choice(len(upper), n)] if len(upper) else []:
        r = rng.uniform(8, 25)
        # the sphere's bounding box only: (z, y, x) slices, and the mm offsets inside it
        box = tuple(slice(max(int(ci - r / s), 0), int(ci + r / s) + 1)
                    for ci, s in zip(c, spacing, strict=True))
        zz, yy, xx = (np.arange(b.start, min(b.stop, n_)) * float(s) - ci * float(s)
                      for b, n_, s, ci in zip(box, lung.shape, spacing, c, strict=True))
        ball = (zz[:, None, None] ** 2 + yy[None, :, None] ** 2 + xx[None, None, :] ** 2 < r * r)
        ball &= lung[box]
        value[box] = np.where(ball, AIR_HU + np.abs(rng.normal(0, 6, ball.shape)), value[box])
        parenchyma[box] |= ball
    return parenchyma.astype(np.float32), value, f"lung -{shift:.0f} HU and {n} bullae"


def make_dense(volume: Volume, truth: np.ndarray, kind: str, rng: np.random.Generator,
               labels: np.ndarray | None = None) -> DenseVariant:
    """The series of ``kind`` (:data:`KINDS`) made from a canonical ``volume`` (HU, z towards the head)
    and its bool (z, y, x) lung mask ``truth``, drawn from ``rng``; the inputs are not modified.
    ``labels``: ``sides.split_lungs(truth, volume)`` when already computed (one per case, not per kind)."""
    truth = np.asarray(truth, dtype=bool)
    hu = np.asarray(volume.hu, dtype=np.float32)
    spacing = tuple(float(s) for s in volume.spacing)
    if labels is None:
        labels = sides.split_lungs(truth, volume)  # 1 = the patient's right lung, 2 = left
    if kind == "lower_lobe":
        side = int(rng.integers(1, 3))
        weight, value, detail = _lower_lobe(labels == side, spacing, rng)
        new = hu * (1 - weight) + weight * value
    elif kind == "multifocal":
        weight, value, halo, halo_hu, detail = _multifocal(truth, spacing, rng)
        new = hu * (1 - weight) + weight * value + halo * halo_hu
        weight = np.maximum(weight, halo.astype(np.float32))
    elif kind == "peripheral_ggo":
        weight, add, detail = _peripheral(truth, spacing, rng)
        new = hu + weight * (add + 25 * rng.standard_normal(hu.shape).astype(np.float32))
    elif kind == "basal_atelectasis":
        weight, value, detail = _basal(truth, spacing, rng)
        new = hu * (1 - weight) + weight * value
    elif kind == "dense_shift":
        right = labels == 1
        zs = np.flatnonzero(right.any(axis=(1, 2)))
        region = right.copy()
        region[(zs[0] + zs[-1]) // 2 + 1 :] = False
        add = rng.uniform(600, 750)
        weight = region.astype(np.float32)
        new = hu + weight * add
        detail = f"+{add:.0f} HU over the lower half of the right lung"
    elif kind == "emphysema":
        weight, value, detail = _emphysema(truth, hu, spacing, rng)
        new = hu * (1 - weight) + weight * value
    else:
        raise ValueError(f"unknown dense-lung kind {kind!r}; expected one of {', '.join(KINDS)}")
    changed = (weight > CHANGED) & truth
    out = failures._hu(new)
    extent = float(changed.sum()) / max(int(truth.sum()), 1)
    density = float(out[changed].mean()) if changed.any() else float("nan")
    return DenseVariant(failures.Variant(replace(volume, hu=out), truth, kind, detail), extent, density)


Scorer = Callable[[failures.Variant, Volume], dict]
"""(a variant, the unchanged volume it was made from) → a row with at least ``dice`` and ``status``
(the QC verdict)."""


def study(
    cases: Sequence,
    scorers: dict[str, Scorer],
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    progress: Callable | None = None,
) -> list[dict]:
    """One row per (case, kind, model): the held-out ``cases`` (``lungseg.io.cache.Case``), unchanged
    (``original``) and with each dense-lung ``kind`` drawn from (seed, case, kind), scored by every
    model in ``scorers`` (name → :data:`Scorer`) on the same series."""
    rows = []
    jobs = [(c, k) for c in cases for k in ("original", *kinds)]
    split: dict[str, np.ndarray] = {}  # the truth's right/left lungs, once per case
    for case, kind in progress(jobs) if progress else jobs:
        if kind == "original":
            dv = DenseVariant(
                failures.Variant(case.volume, np.asarray(case.mask, dtype=bool), kind, "unchanged"),
                0.0,
                float("nan"),
            )
        else:
            rng = np.random.default_rng([seed, int(case.case_id.split("_")[-1]), KINDS.index(kind)])
            if case.case_id not in split:
                split = {case.case_id: sides.split_lungs(np.asarray(case.mask, dtype=bool), case.volume)}
            dv = make_dense(case.volume, case.mask, kind, rng, split[case.case_id])
        for model, score in scorers.items():
            row = score(dv.variant, case.volume)
            rows.append(
                {
                    "case": case.case_id,
                    "kind": kind,
                    "detail": dv.variant.detail,
                    "model": model,
                    "extent": round(dv.extent, 4),
                    "density_hu": None if math.isnan(dv.density_hu) else round(dv.density_hu, 1),
                    "dice": row["dice"],
                    "qc": row["status"],
                    "qc_checks": ", ".join(row.get("checks", [])),
                }
            )
    return rows


def run_scorer(run: TrainResult, with_qc: bool = True) -> Scorer:
    """A :data:`Scorer` for a finished run, at the threshold and post-processing ``predict --checkpoint
    RUN`` uses; with ``with_qc`` the QC verdict under the shipped limits (the flip test doubles the
    cost), else ``status`` is ""."""
    threshold, clean = qc_calibrate.run_settings(run)
    kept: dict[int, tuple[np.ndarray, Callable]] = {}  # the last source volume's logits

    def score(variant: failures.Variant, source: Volume) -> dict:
        if id(source) not in kept:
            hu = np.asarray(source.hu)
            kept.clear()
            kept[id(source)] = (hu, qc_calibrate.source_logits(run, hu))
        hu, source_logits = kept[id(source)]
        if with_qc:
            row = qc_calibrate.score_series(run, variant, threshold, clean, source_logits, hu)
            verdict = qc.assess(row["scores"])
            return {"dice": row["dice"], "status": verdict.status, "checks": verdict.flagged}
        logits, _ = qc_calibrate.variant_logits(run, variant, hu, source_logits)
        mask = postprocess.segment(logits, threshold, clean)  # the mask of segment.segment, no sides
        return {"dice": metrics.volume_dice(mask, variant.truth), "status": ""}

    return score


@dataclass(frozen=True)
class DenseTask:
    """One held-out patient of :func:`pooled_study`: its dense-lung series scored by every model
    (name, run folder, with QC), in a worker."""

    case_id: str
    models: tuple[tuple[str, str, bool], ...]
    kinds: tuple[str, ...]
    seed: int
    data: str | None


def study_case(task: DenseTask) -> list[dict]:
    """:func:`study`'s rows of one patient, in a worker (:func:`qc_calibrate.worker_run`)."""
    from lungseg.io import cache

    scorers = {name: run_scorer(qc_calibrate.worker_run(run_dir), with_qc)
               for name, run_dir, with_qc in task.models}
    return study([cache.load_case(task.case_id, task.data)], scorers, task.kinds, task.seed)


def pooled_study(case_ids: Sequence[str], models: dict[str, tuple[TrainResult, bool]],
                 kinds: Sequence[str] = KINDS, seed: int = 0, data: str | None = None,
                 workers: int | None = None) -> list[dict]:
    """:func:`study` of the held-out ``case_ids``, one task per patient on the QC study's worker pool
    (one-thread processes, one per core; ``workers`` 0 or 1: in this process): the numpy work of the
    series (disease drawn in 3D, post-processing, sides, QC measures) runs on every core. ``models``:
    name → (finished run, with its QC verdict). Rows in the order of ``case_ids``."""
    from lungseg.progress import bar as progress_bar

    todo = [DenseTask(c, tuple((n, str(r.run_dir), q) for n, (r, q) in models.items()), tuple(kinds), seed,
                      data) for c in case_ids]
    executor = qc_calibrate._executor(workers, len(todo))
    by_case: dict[str, list[dict]] = {}
    try:
        for task, result in progress_bar(executor.map_unordered(study_case, todo), total=len(todo),
                                         desc="dense-lung study", unit="case"):
            if isinstance(result, BaseException):
                raise result
            by_case[task.case_id] = result
    finally:
        executor.close()
    return [r for c in case_ids for r in by_case[c]]


BAD_DICE = 0.90
"""A mask below this Dice must be flagged by QC (issue's goal; :data:`qc_calibrate.BAD_DICE` too)."""
GOAL_DICE = 0.95
"""Goal per diseased series whose unchanged scan reaches :data:`SOUND_DICE`."""
SOUND_DICE = 0.97


def summary(rows: Sequence[dict]) -> list[dict]:
    """Per (kind, model): series, Dice mean and min, series reaching :data:`GOAL_DICE` (counted where
    the same model's unchanged scan of that patient reaches :data:`SOUND_DICE`), masks below
    :data:`BAD_DICE` and how many of them QC flagged."""
    base = {(r["case"], r["model"]): r["dice"] for r in rows if r["kind"] == "original"}
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows):
            sel = [r for r in rows if r["kind"] == kind and r["model"] == model]
            if not sel:
                continue
            d = np.array([r["dice"] for r in sel])
            eligible = [r for r in sel if base.get((r["case"], model), 0) >= SOUND_DICE]
            bad = [r for r in sel if r["dice"] < BAD_DICE]
            judged = all(r["qc"] for r in sel)
            out.append({
                "kind": kind, "model": model, "series": len(sel),
                "dice_mean": round(float(d.mean()), 4), "dice_min": round(float(d.min()), 4),
                f"reach_{GOAL_DICE}": f"{sum(r['dice'] >= GOAL_DICE for r in eligible)}/{len(eligible)}",
                f"below_{BAD_DICE}": len(bad),
                "qc_flagged_of_those": (sum(r["qc"] != "pass" for r in bad) if judged else "–"),
                "qc_flagged_all": (sum(r["qc"] != "pass" for r in sel) if judged else "–"),
            })
    return out


def figure(rows: Sequence[dict]) -> Figure:
    """Dice against the extent (share of the lung changed) and the density (mean HU of the changed
    part) of each diseased series, one marker per model; the unchanged scans at extent 0."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    colours = dict(zip(kinds, plt.cm.tab10.colors, strict=False))
    markers = dict(zip(models, "os^", strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for r in rows:
        for ax, key in zip(axes, ("extent", "density_hu"), strict=True):
            x = r[key] if r[key] is not None else (0.0 if key == "extent" else None)
            if x is None:
                continue
            ax.scatter(x, r["dice"], c=[colours[r["kind"]]], marker=markers[r["model"]],
                       edgecolors="k" if r["qc"] not in ("", "pass") else "none", s=36, alpha=0.85)
    for ax, label in zip(axes, ("share of the lung made dense", "mean HU of the dense part"), strict=True):
        ax.axhline(GOAL_DICE, color="grey", lw=0.8, ls="--")
        ax.axhline(BAD_DICE, color="red", lw=0.8, ls=":")
        ax.set_xlabel(label)
    axes[0].set_ylabel("Dice (3D, both lungs)")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colours[k], label=k) for k in kinds]
    handles += [plt.Line2D([], [], ls="", marker=markers[m], color="grey", label=m) for m in models]
    handles.append(plt.Line2D([], [], ls="", marker="o", mfc="white", mec="k", label="flagged by QC"))
    axes[1].legend(handles=handles, fontsize=8, loc="lower left")
    fig.suptitle("Held-out patients with simulated dense lung (a generator other than training's)")
    fig.tight_layout()
    return fig
