"""Per-series quality control of a predicted lung mask: ``pass``, ``review`` or ``fail``, with reasons.

:func:`lungseg.inference.qc_scores.measure` computes cheap scores from what ``predict`` already holds;
:func:`assess` compares them with limits kept as data in ``qc_thresholds.json`` beside this module,
written by ``lungseg calibrate`` (:mod:`lungseg.evaluation.qc_calibrate`) from the cross-validation
predictions of the training patients and failures made from them.

The checks (:data:`CHECKS`), each a score with the side on which it is bad:

* coverage: lung on the bottom or top slice of the scan (a cut base or apex), lung on the in-plane
  image edge or running into the air outside the body (a field of view too small);
* input: the HU of air and of soft tissue (a lost rescale intercept shifts both by ~1024 HU, a wrong
  slope scales them), image noise;
* anatomy: total lung volume (mL), the smaller lung's volume as a share of the larger's, how convex
  one lung is against the other and how far one stops short of the other at the back (consolidation
  left out), the mean HU inside the mask, the share of the raw mask that post-processing removed as
  stray parts;
* wall: how far each lung's outer wall, its back and its front stop short of the ribs on the middle
  slices of the chest (dense lung next to the chest wall that the mask left out: the mask alone cannot
  see it, the bone can);
* model confidence: the share of voxels whose probability lies between 0.1 and 0.9 per lung voxel,
  and the agreement of the mask with the network's answer on the mirrored image.

A score is bad when it lies beyond its limit; the status is the worst over the checks (``fail`` for
input not in HU, for no lung at all, and for any score beyond its fail limit; ``review`` otherwise).
This module imports neither torch nor the calibration code: ``predict`` runs it on every series.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungseg.inference.qc_scores import GAP_MM

STATUSES = ("pass", "review", "fail")
THRESHOLDS_FILE = Path(__file__).with_name("qc_thresholds.json")
"""The shipped limits (``lungseg calibrate`` writes them; see docs/qc.md)."""

# ---- the checks -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One QC rule: a score (see ``qc_scores.measure``), the side on which it is bad, and how it is said.

    ``group``: the part of ``qc_scores.measure`` that computes the score (its time is ``timings[group_s]``).
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
    # Floors: the two apices and the two domes of the diaphragm normally lie up to 2-3 cm apart, and
    # how far on the 12 calibration patients says little about the next one. Floors of 10 mm raised
    # 10 of 60 false alarms on held-out sound series (Case_006's apices 36 mm apart in its truth too;
    # Case_001's and Case_007's fold-model masks ending 5 cm short at one base); 25 mm left 4 on the
    # base, 40 mm none.
    Check("apex", "apex_gap_mm", "above", "anatomy", 25.0,
          "one lung's top ends {value:.0f} mm below the other's (at most {limit:.0f} mm on sound scans): "
          "dense upper lung (consolidation, collapse) left out of the mask?", fail_margins=4.0),
    Check("base", "base_gap_mm", "above", "anatomy", 40.0,
          "one lung's base ends {value:.0f} mm above the other's (at most {limit:.0f} mm on sound scans): "
          "dense lower lung (consolidation, collapse) left out of the mask, or a raised diaphragm?",
          fail_margins=4.0),
    Check("back", "back_wall_mm", "above", "wall", 5.0,
          "a lung stops {value:.0f} mm short of the ribs and spine at the back (at most {limit:.0f} mm on "
          "sound scans): dense dependent lung (consolidation, collapse) left out of the mask, or an "
          "effusion?", fail_margins=4.0),
    Check("front", "front_wall_mm", "above", "wall", 5.0,
          "a lung stops {value:.0f} mm short of the ribs at the front (at most {limit:.0f} mm on sound "
          "scans): dense non-dependent lung (an anterior consolidation or collapse) left out of the mask?",
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
    worst first), ``scores`` (name → number, see ``qc_scores.measure``)."""

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


# ---- the rule -------------------------------------------------------------------------------------

def load_thresholds(path: str | Path | None = None) -> dict:
    """The limits per check (``qc_thresholds.json``); {} when the file is missing."""
    path = Path(path) if path else THRESHOLDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def judges(name: str, thresholds: Mapping | None = None) -> bool:
    """Whether the rule (``thresholds``; None: the shipped limits) judges by check ``name``: its limit
    is set and kept. A check it does not judge by need not be measured (the flip agreement costs a
    second network pass)."""
    thresholds = load_thresholds() if thresholds is None else thresholds
    rule = thresholds.get("checks", {}).get(name)
    return rule is not None and bool(rule.get("kept", True))


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
    """The verdict for ``scores`` (``qc_scores.measure``) under ``thresholds`` (:func:`load_thresholds`
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
