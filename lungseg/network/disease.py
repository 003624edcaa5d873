"""Dense lung simulated inside the true lung of training slices: consolidation, ground glass, collapse.

The LCTSC convention (and ours) calls aerated *and* dense lung (collapsed, consolidated, fibrotic) lung;
12 radiotherapy-planning CTs hold little of the dense kind, so a network trained on them alone leaves
dense lung out of the mask. :func:`simulate` changes the HU of a random part of the lung of some training
slices and leaves the mask as it is, so the network learns that dense tissue *inside the lung's outline*
is lung. Everything happens on the batch, at training size, on the host: no cached data change.

Only shapes that fill lung are drawn (a posterior/dependent band, a lobe cut by a fissure-like line,
patches, a compact collapse hugging the lung's border); never a round mass standing inside aerated lung,
because tumours (GTV) are *not* lung in LCTSC's contours. The evaluation of the report uses a different,
3D generator (:mod:`lungseg.evaluation.dense`), so it does not only measure how well this one was learned.

The draws come from a ``torch.Generator`` seeded by (seed, epoch, step): a resumed run sees the same
disease as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("consolidation", "ggo", "collapse", "lucent")
"""Kinds :func:`simulate` draws from (the profile's ``disease_kinds``). ``lucent`` is the opposite of
dense: aerated lung darkened towards air (emphysema, deep inspiration, some scanners' calibration),
which a network trained on lungs of -700 to -880 HU takes for the air outside the body."""
PLACES = ("dependent", "lobar", "patchy")
"""Where a consolidation or ground-glass region lies within one or both lungs."""
AIR_HU = -1000.0
LUCENT_BELOW_HU = -500.0
"""The ``lucent`` kind darkens lung below this HU (parenchyma), not vessels or fissures."""
MIN_LUNG_PX = 40
"""Slices with fewer lung pixels (at training size) are left as they are."""


@dataclass(frozen=True)
class DiseaseSpec:
    """What :func:`simulate` draws from; the fields are a training config's ``disease_*``.

    ``p``: share of the lung-holding slices of a batch that get disease. ``dense_hu``: (low, high) HU
    of consolidated and collapsed lung (real: about -100 to +70). ``ggo_hu``: (low, high) HU added to
    aerated lung by ground glass (real ground glass: about -750 to -300 HU). ``noise_hu``: (low, high)
    standard deviation of the texture laid on dense lung. ``full``: chance that a consolidation or
    ground-glass region fills the whole chosen lung of the slice (a lower lobe's slices below the
    fissure, an opacified hemithorax), which a share drawn from (0.1, 1) almost never does.
    ``lucent_keep``: (low, high) share of aerated lung's distance to -1000 HU that the ``lucent`` kind
    keeps.
    """

    p: float = 0.0
    kinds: tuple[str, ...] = KINDS
    dense_hu: tuple[float, float] = (-100.0, 70.0)
    ggo_hu: tuple[float, float] = (150.0, 500.0)
    noise_hu: tuple[float, float] = (5.0, 40.0)
    full: float = 0.0
    lucent_keep: tuple[float, float] = (0.2, 0.8)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown disease kinds {sorted(unknown)}; expected some of {', '.join(KINDS)}")
        for name in ("p", "full"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"disease_{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.lucent_keep[0] <= self.lucent_keep[1] <= 1.0:
            raise ValueError("disease lucent_keep must be [low, high] within [0, 1], "
                             f"got {list(self.lucent_keep)}")
        for name in ("dense_hu", "ggo_hu", "noise_hu"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"disease {name} must be [low, high] with low <= high, got {[lo, hi]}")

    @property
    def active(self) -> bool:
        return self.p > 0 and bool(self.kinds)


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _pick(gen: torch.Generator, options: Sequence[str]) -> str:
    return options[int(torch.randint(len(options), (), generator=gen))]


def _smooth_field(size: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """(size, size) smooth random field, zero mean and unit spread (noise on a ``cells``² grid, bicubic)."""
    coarse = torch.randn(1, 1, cells, cells, generator=gen)
    f = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    return (f - f.mean()) / f.std().clamp_min(1e-6)


def _soft_above(values: torch.Tensor, lung: torch.Tensor, share: float, width: float) -> torch.Tensor:
    """Weight in [0, 1]: about ``share`` of the ``lung`` pixels with the highest ``values``, soft over
    ``width`` (in the values' units)."""
    cut = torch.quantile(values[lung], 1.0 - min(max(share, 0.01), 1.0))
    return torch.sigmoid((values - cut) / max(width, 1e-6)) * lung


def _side(lung: torch.Tensor, gen: torch.Generator,
          options: Sequence[str] = ("both", "image-left", "image-right")) -> torch.Tensor:
    """One lung (the lung pixels on one side of the lungs' middle) or both, chosen at random."""
    cols = torch.nonzero(lung.any(0)).flatten()
    middle = int((cols.min() + cols.max()) // 2)
    which = _pick(gen, options)
    if which == "both":
        return lung
    half = torch.zeros_like(lung)
    if which == "image-left":
        half[:, :middle] = lung[:, :middle]
    else:
        half[:, middle:] = lung[:, middle:]
    return half if int(half.sum()) >= MIN_LUNG_PX else lung


def _region(lung: torch.Tensor, place: str, share: float, gen: torch.Generator) -> torch.Tensor:
    """A soft region covering about ``share`` of ``lung`` (bool S×S), shaped by ``place``."""
    s = lung.shape[-1]
    yy, xx = torch.meshgrid(
        torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij"
    )
    wobble = _smooth_field(s, 6, gen) * s * 0.02
    if place == "dependent":  # towards the back (rows run towards the patient's back), irregular edge
        return _soft_above(yy + wobble, lung, share, 1.0)
    if place == "lobar":  # a lobe: everything beyond a straight, fissure-like line at a random angle
        theta = _u(gen, 0.0, 2 * math.pi)
        return _soft_above(yy * math.sin(theta) + xx * math.cos(theta), lung, share, 0.7)
    return _soft_above(_smooth_field(s, int(_u(gen, 4, 12)), gen), lung, share, 0.15)  # patchy


def _collapse_region(lung: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """A compact region hugging the lung's border: the ``share`` of ``lung`` nearest to the lung
    pixel that lies furthest in a random direction (collapse against the mediastinum, back or base)."""
    s = lung.shape[-1]
    theta = _u(gen, 0.0, 2 * math.pi)
    ys, xs = torch.nonzero(lung, as_tuple=True)
    proj = ys.float() * math.sin(theta) + xs.float() * math.cos(theta)
    k = int(torch.argmax(proj))
    yy, xx = torch.meshgrid(
        torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij"
    )
    dist = torch.hypot(yy - ys[k].float(), xx - xs[k].float()) + _smooth_field(s, 8, gen) * s * 0.01
    return _soft_above(-dist, lung, share, 0.7)


def _texture(s: int, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Fine noise (HU), lightly smoothed like a CT reconstruction's."""
    noise = torch.randn(1, 1, s, s, generator=gen)
    return F.avg_pool2d(noise, 3, 1, 1, count_include_pad=False)[0, 0] * sigma * 3.0


def _lucent(hu: torch.Tensor, where: torch.Tensor, spec: DiseaseSpec, gen: torch.Generator) -> torch.Tensor:
    """Aerated lung (below ``LUCENT_BELOW_HU``) of ``where`` brought towards air: its distance to
    -1000 HU kept by ``spec.lucent_keep`` (so -850 HU becomes -880 to -970), vessels and walls as they
    are; in half the slices also patches of air (bullae)."""
    keep = _u(gen, *spec.lucent_keep)
    air = (hu < LUCENT_BELOW_HU) & where
    out = torch.where(air, AIR_HU + (hu - AIR_HU) * keep, hu)
    if float(torch.rand((), generator=gen)) < 0.5:
        bullae = (_soft_above(_smooth_field(hu.shape[-1], int(_u(gen, 6, 14)), gen), where,
                              _u(gen, 0.05, 0.3), 0.15) > 0.5) & air
        out = torch.where(bullae, AIR_HU + _texture(hu.shape[-1], 8.0, gen).abs(), out)
    return out


def _diseased(hu: torch.Tensor, lung: torch.Tensor, spec: DiseaseSpec, gen: torch.Generator) -> torch.Tensor:
    """One slice (S×S, HU) with one kind of dense lung drawn inside ``lung`` (bool S×S)."""
    s = hu.shape[-1]
    kind = _pick(gen, spec.kinds)
    where = _side(lung, gen)
    sigma = _u(gen, *spec.noise_hu)
    if kind == "collapse":
        a = _collapse_region(where, _u(gen, 0.15, 0.9), gen)
        dense = _u(gen, max(spec.dense_hu[0], -20.0), spec.dense_hu[1]) + _texture(s, sigma * 0.5, gen)
        return hu * (1 - a) + a * dense
    if kind == "lucent":
        return _lucent(hu, where, spec, gen)
    # Drawn only when asked for, so that a spec without it keeps the very draws of earlier runs.
    whole = spec.full > 0 and float(torch.rand((), generator=gen)) < spec.full
    if whole and bool(torch.equal(where, lung)):
        # One opacified lung, never both: with no aerated lung left in the slice nothing but the rib
        # cage says where lung ends, and learning that makes the network call soft tissue lung on
        # normal scans (measured: benchmarks/dense_recipe.py, figures/dense_recipe_study.json).
        where = _side(lung, gen, ("image-left", "image-right"))
    a = where.float() if whole else _region(where, _pick(gen, PLACES), _u(gen, 0.1, 1.0), gen)
    if kind == "ggo":
        return hu + a * (_u(gen, *spec.ggo_hu) + _texture(s, sigma, gen))
    dense = _u(gen, *spec.dense_hu) + _texture(s, sigma, gen)
    out = hu * (1 - a) + a * dense
    if float(torch.rand((), generator=gen)) < 0.5:  # air bronchograms: thin dark branching lines
        lines = (_smooth_field(s, int(_u(gen, 5, 10)), gen).abs() < _u(gen, 0.04, 0.1)).float()
        air = _u(gen, -950.0, -750.0)
        out = out * (1 - a * lines) + a * lines * air
    return out


def simulate(
    x: torch.Tensor, y: torch.Tensor, spec: DiseaseSpec, gen: torch.Generator, to_hu, from_hu
) -> torch.Tensor:
    """A batch of network inputs ``x`` (N, 1, S, S) with dense lung drawn inside the masks ``y``
    (N, 1, S, S, 0/1) of a share ``spec.p`` of the slices holding lung; ``to_hu``/``from_hu`` map the
    input to HU and back (the run's normalisation). ``x`` is not modified; the masks stay as they are."""
    if not spec.active:
        return x
    out = x.clone()
    for i in range(x.shape[0]):
        lung = y[i, 0] > 0.5
        take = float(torch.rand((), generator=gen)) < spec.p
        if take and int(lung.sum()) >= MIN_LUNG_PX:
            out[i, 0] = from_hu(_diseased(to_hu(x[i, 0].float()), lung, spec, gen))
    return out


def step_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one training step: the same draws for the same (seed, epoch, step, rank)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 100_003 + step) * 17 + rank)
