"""Training configuration and profiles: ``TrainConfig`` and ``params/NAME.yaml``, resolved once.

A profile holds one section of parameters per notebook; its ``02_train`` section is a training
config. :meth:`TrainConfig.resolved` makes every implicit choice explicit (cases, held-out patients,
measured speed switches), and that resolved config is what a run's manifest records
(:mod:`lungseg.network.runs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lungseg import paths
from lungseg.io import cache
from lungseg.network import data, model, speed
from lungseg.network.disease import DiseaseSpec

PROFILES = paths.ROOT / "params"
DEFAULT_PROFILE = "cpu"
"""The recipe without a GPU: the report's default, the released model's, the QC calibration's and
``lungseg train``'s (``lungseg.report.runner.default_profile`` picks ``paper`` on CUDA)."""
SCHEDULES = ("constant", "cosine", "onecycle")
SPLITS = ("slices", "cases", "all")
"""``all`` trains on every slice of every case (the released model; no test set, no curve)."""
NOTEBOOK_ONLY = ("profile", "figures_dir", "compare_split", "compare_disease", "cv_folds",
                 "reference_weights", "interactive", "run")
"""Notebook parameters of a profile that are not training parameters."""


class ProfileError(ValueError):
    """An unknown profile or a profile with an unknown parameter."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults: the report's recipe)."""

    cases: list[str] = field(default_factory=list)
    """Case ids; empty = every case in the data directory."""
    data_dir: str = ""
    image_size: int = data.FULL_SIZE
    input_mode: str = "window"
    hu_window: list[float] = field(default_factory=lambda: list(data.HU_WINDOW))
    """HU range mapped to [0, 1] in the "window" input mode (saved with the run, used by predict)."""
    split: str = "slices"
    """"slices" (the report's random 2/3–1/3 of slices), "cases" (held-out patients) or "all" (every
    case trains: the released model, whose accuracy is the cross-validation's)."""
    test_cases: list[str] = field(default_factory=lambda: list(data.DEFAULT_TEST_CASES))
    kfold: int = 0
    """With split="cases" and kfold=k>1: the test cases are fold ``fold`` of :func:`fold_cases`, the
    one fold rule (the report's cross-validation uses it too)."""
    fold: int = 0
    epochs: int = 10
    batch_size: int = 3
    lr: float = 0.1
    schedule: str = "constant"
    weight_decay: float = 0.0
    seed: int = 42
    base_channels: int = model.DEFAULT_BASE_CHANNELS
    dropout: float = model.DEFAULT_DROPOUT
    dilation: int = model.DEFAULT_DILATION
    """Dilation of the bottleneck's convolutions (1 = the report's UNet; see ``model.UNet``)."""
    max_steps_per_epoch: int = 0
    """0 = full epochs; >0 caps the steps of every epoch (CI smoke runs)."""
    empty_keep: float = 1.0
    """Share of the training slices with an empty mask (above and below the lungs, ~45 %) used in
    each epoch, drawn anew every epoch from (seed, epoch); 1 = all of them."""
    early_size: int = 0
    """Progressive image size: the first ``early_epochs`` epochs train on slices reduced (area means)
    to ``early_size`` px, the others at ``image_size``; 0 = every epoch at ``image_size``."""
    early_epochs: int = 0
    lung_stride: int = 1
    """Each epoch uses every ``lung_stride``-th lung-holding training slice (dataset index ≡ epoch
    modulo the stride): neighbouring slices, 2.5–3 mm apart and nearly alike, take turns, and every
    slice is still used once in every ``lung_stride`` epochs; 1 = all of them in every epoch."""
    full_size_stride: int = 1
    """With progressive size, the epochs at ``image_size`` (after the ``early_epochs``) use every
    ``full_size_stride``-th of the lung slices ``lung_stride`` leaves (turn by turn, as it does): the
    costliest epochs refine what the early ones learned; 1 = all of them."""
    disease_p: float = 0.0
    """Share of the lung-holding training slices of every batch that get simulated dense lung inside
    their true lung, mask unchanged (:mod:`lungseg.train.disease`); 0 = none (the report's recipe)."""
    disease_kinds: list[str] = field(default_factory=lambda: ["consolidation", "ggo", "collapse"])
    disease_dense_hu: list[float] = field(default_factory=lambda: [-100.0, 70.0])
    """(low, high) HU of simulated consolidated and collapsed lung."""
    disease_ggo_hu: list[float] = field(default_factory=lambda: [150.0, 500.0])
    """(low, high) HU that simulated ground glass adds to aerated lung."""
    disease_noise_hu: list[float] = field(default_factory=lambda: [5.0, 40.0])
    """(low, high) standard deviation (HU) of the texture laid on simulated dense lung."""
    disease_full: float = 0.0
    """Chance that a simulated consolidation or ground glass fills the slice's whole chosen lung."""
    disease_lucent_keep: list[float] = field(default_factory=lambda: [0.2, 0.8])
    """(low, high) share of aerated lung's distance to -1000 HU that the ``lucent`` kind keeps
    (0.5: -850 HU becomes -925)."""
    curve_slices: int = 0
    """Test slices scored after every epoch for the training curves: 0 = all, else that many evenly
    spaced (the full test set is scored by 03_eval; this only draws Figure 3)."""
    channels_last: bool | str = False
    """channels_last memory layout; "auto" = whichever :func:`lungseg.network.speed.choose` measures
    faster."""
    amp: bool | str = False
    """bf16 autocast where the hardware runs it natively (CUDA; CPUs with AVX-512 BF16); "auto" =
    measured, as ``channels_last``."""
    device: str = "auto"
    threads: int = 0
    """torch intra-op threads; 0 = leave torch's default."""
    force_retrain: bool = False
    profile: str = ""
    """The profile the run was made under: only its folder's name (``<profile>-<split>[-foldK]-<key8>``)."""

    # Fields that do not change the trained weights on one machine, left out of the run key
    # (kfold/fold only choose ``test_cases``, which is in the key: fold 2 of 3 *is* the held-out run).
    NON_KEY = ("device", "threads", "force_retrain", "data_dir", "profile", "kfold", "fold")

    def resolved(self) -> TrainConfig:
        """A copy with ``cases`` and ``test_cases`` made explicit and every field checked (no
        measurement: see :meth:`with_speed_switches`)."""
        cfg = dataclasses.replace(self, hu_window=[float(v) for v in self.hu_window])
        if not cfg.cases:
            cfg.cases = paths.list_cases(paths.data_dir(cfg.data_dir or None))
        if cfg.split == "cases" and cfg.kfold > 1:
            cfg.test_cases = fold_cases(cfg.cases, cfg.kfold)[cfg.fold] if 0 <= cfg.fold < cfg.kfold else []
            if not cfg.test_cases:
                raise ValueError(f"fold must be 0 <= fold < kfold={cfg.kfold}, got {cfg.fold}")
        if cfg.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {cfg.split!r}")
        if cfg.split == "all":
            cfg.test_cases = []
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
        if len(cfg.hu_window) != 2 or not cfg.hu_window[0] < cfg.hu_window[1]:
            raise ValueError(f"hu_window must be [low, high] HU with low < high, got {cfg.hu_window}")
        if not (isinstance(cfg.dilation, int) and cfg.dilation >= 1):
            raise ValueError(f"dilation must be an integer >= 1, got {cfg.dilation!r}")
        if cfg.early_size and not (0 < cfg.early_size <= cfg.image_size and cfg.early_size % 8 == 0):
            raise ValueError(f"early_size must be a multiple of 8 up to image_size={cfg.image_size} "
                             f"(the UNet pools three times), got {cfg.early_size}")
        if not (isinstance(cfg.lung_stride, int) and cfg.lung_stride >= 1):
            raise ValueError(f"lung_stride must be an integer >= 1, got {cfg.lung_stride!r}")
        if not (isinstance(cfg.full_size_stride, int) and cfg.full_size_stride >= 1):
            raise ValueError(f"full_size_stride must be an integer >= 1, got {cfg.full_size_stride!r}")
        cfg.disease_spec()  # checks the disease_* fields
        return cfg

    def disease_spec(self) -> DiseaseSpec:
        """The ``disease_*`` fields as the training augmentation's spec (checked)."""
        def pair(v: list[float]) -> tuple[float, float]:
            if len(v) != 2:
                raise ValueError(f"a disease HU range must be [low, high], got {v}")
            return float(v[0]), float(v[1])

        return DiseaseSpec(float(self.disease_p), tuple(self.disease_kinds), pair(self.disease_dense_hu),
                           pair(self.disease_ggo_hu), pair(self.disease_noise_hu), float(self.disease_full),
                           pair(self.disease_lucent_keep))

    def with_speed_switches(self) -> TrainConfig:
        """A copy with the "auto" layout/precision switches made explicit: measured on this machine
        by :func:`lungseg.network.speed.choose` (a timing probe, cached and logged), so only training
        calls it, never resolving a config."""
        if "auto" not in (self.channels_last, self.amp):
            return self
        choice = speed.choose(self.image_size, self.batch_size, speed.pick_device(self.device))
        layout = choice["channels_last"] if self.channels_last == "auto" else self.channels_last
        amp = choice["amp"] if self.amp == "auto" else self.amp
        return dataclasses.replace(self, channels_last=layout, amp=amp)

    @classmethod
    def from_params(cls, cases: str = "all", test_cases: str = "", **params: object) -> TrainConfig:
        """A config from flat notebook parameters: ``cases``/``test_cases`` as comma-separated
        strings (``"all"`` = every case; empty ``test_cases`` = ``DEFAULT_TEST_CASES``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(params) - fields
        if unknown:
            raise TypeError(f"unknown training parameters: {sorted(unknown)}")
        cfg = cls(**params)  # type: ignore[arg-type]
        cfg.cases = cache.resolve_cases(cases, cfg.data_dir or None)
        if test_cases.strip():
            cfg.test_cases = [c.strip() for c in test_cases.split(",") if c.strip()]
        return cfg

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config saved by an earlier version: fields it lacks take today's defaults (which were
        the values then: e.g. ``hu_window``), fields this version no longer knows are refused."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"saved config has unknown fields {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fold_cases(case_ids: list[str], k: int) -> list[list[str]]:
    """The one fold rule: the test cases of each of ``k`` interleaved folds over the sorted case ids
    (fold f holds every k-th case from the f-th), so each patient is tested exactly once."""
    ids = sorted(case_ids)
    if not 2 <= k <= len(ids):
        raise ValueError(f"cross-validation needs 2 <= k <= {len(ids)} cases, got k={k}")
    return [ids[f::k] for f in range(k)]


def fold_configs(config: TrainConfig, k: int) -> list[TrainConfig]:
    """``config`` once per fold: held-out-patient split, ``kfold=k``, ``fold=f`` (resolved to that
    fold's test cases by :func:`fold_cases`)."""
    return [dataclasses.replace(config, split="cases", kfold=k, fold=f) for f in range(k)]


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name: str) -> dict[str, dict]:
    """Parameters per notebook stem from ``params/NAME.yaml``; ProfileError if there is none."""
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {name!r}: no {path} (profiles: {', '.join(profile_names())})")
    return yaml.safe_load(path.read_text()) or {}


def config_from_profile(profile: str, overrides: dict[str, str] | None = None) -> TrainConfig:
    """The 02_train section of ``params/PROFILE.yaml`` (plus ``key=value`` overrides, values
    parsed as YAML) as a config."""
    params = {k: v for k, v in load_profile(profile).get("02_train", {}).items()
              if k not in NOTEBOOK_ONLY}
    for key, text in (overrides or {}).items():
        params[key] = yaml.safe_load(text) if isinstance(text, str) else text
    params.setdefault("profile", profile)
    try:
        return TrainConfig.from_params(**params)
    except TypeError as exc:
        raise ProfileError(f"profile {profile!r}: {exc}") from None


@dataclass
class TrainingPlan:
    """What 02_train trains for a profile: the config, the other split protocol to compare with
    (``compare_split``, may be empty) and the number of cross-validation folds (0 = none)."""

    config: TrainConfig
    compare_split: str = ""
    cv_folds: int = 0
    compare_disease: bool = False
    """Also train the config without simulated dense lung (``disease_p`` = 0), the same model
    otherwise, so the report can show what the augmentation does on the same series."""


def training_plan(profile: str, overrides: dict[str, str] | None = None) -> TrainingPlan:
    """The profile's 02_train section as a plan: :func:`config_from_profile` (the call
    ``lungseg train`` makes) plus the section's ``compare_split``, ``cv_folds`` and
    ``compare_disease``."""
    section = load_profile(profile).get("02_train", {})
    return TrainingPlan(config_from_profile(profile, overrides), str(section.get("compare_split", "") or ""),
                        int(section.get("cv_folds", 0) or 0), bool(section.get("compare_disease", False)))


def profile_file(name: str) -> Path:
    return PROFILES / f"{name}.yaml"
