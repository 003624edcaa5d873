"""QC against dense lung of kinds that neither training nor the report's study draws (issue 24).

The report's dense-lung study (lungseg.evaluation.dense) and the QC's calibration failures
(lungseg.evaluation.failures) were the kinds the QC checks were built against. This hunt draws seven
other kinds, here only, on the report's held-out patients, predicts each series with the report's main
run exactly as ``predict`` does (threshold, post-processing, sides, QC under the shipped limits) and
records the true Dice and the verdict. A series with Dice < 0.90 that QC passes is a miss.

Kinds (3D, inside the true lung, mask unchanged; density with 12 HU of smoothed texture):
``whiteout`` one whole lung at 20-50 HU; ``anterior`` the front 30-50 % of one lung at 0-40 HU
(non-dependent consolidation); ``upper_lobe`` the top 30-50 % of one lung at 10-40 HU;
``ards`` the dependent (back) 30-60 % of both lungs at -150 to 20 HU; ``paramediastinal`` a band
15-30 mm wide along the mediastinum in both lungs at 20-45 HU; ``small_patchy`` 20-30 balls of
6-15 mm radius at -20 to 40 HU; ``left_lower`` the bottom 35-55 % of the left lung at 15-45 HU.

Usage: python benchmarks/qc_dense_hunt.py [--profile cpu] [--save figures]
(writes build/qc_dense_hunt.json, and figures/qc_dense_hunt.json with --save)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
from dataclasses import replace

import numpy as np
from scipy import ndimage

from lungseg import paths
from lungseg.evaluation import dense, failures
from lungseg.inference import qc, sides
from lungseg.io import cache
from lungseg.network import selection
from lungseg.progress import bar

KINDS = ("whiteout", "anterior", "upper_lobe", "ards", "paramediastinal", "small_patchy", "left_lower")
SEED = 99


def _grids(shape, spacing):
    return [np.arange(n, dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)]) * float(s)
            for i, (n, s) in enumerate(zip(shape, spacing, strict=True))]


def regions(truth: np.ndarray, labels: np.ndarray, spacing, rng: np.random.Generator) -> dict:
    """kind -> (bool region inside ``truth``, HU of the dense lung); labels 1 = right, 2 = left lung."""
    z, y, x = _grids(truth.shape, spacing)
    full = truth.shape

    def quantile(axis_mm, where, q):
        return np.quantile(np.broadcast_to(axis_mm, full)[where], q)

    out = {"whiteout": (labels == int(rng.integers(1, 3)), rng.uniform(20, 50))}
    side = labels == int(rng.integers(1, 3))
    out["anterior"] = (side & (y <= quantile(y, side, rng.uniform(0.3, 0.5))), rng.uniform(0, 40))
    side = labels == int(rng.integers(1, 3))
    out["upper_lobe"] = (side & (z >= quantile(z, side, rng.uniform(0.5, 0.7))), rng.uniform(10, 40))
    out["ards"] = (truth & (y >= quantile(y, truth, rng.uniform(0.4, 0.7))), rng.uniform(-150, 20))
    dx = np.abs(x - np.broadcast_to(x, full)[truth].mean())
    band, inner = rng.uniform(15, 30), np.zeros(full, dtype=bool)
    for s in (1, 2):
        lung = labels == s
        inner |= lung & (dx <= np.broadcast_to(dx, full)[lung].min() + band)
    out["paramediastinal"] = (inner, rng.uniform(20, 45))
    pts = np.argwhere(truth)
    balls = np.zeros(full, dtype=bool)
    for c in pts[rng.choice(len(pts), int(rng.integers(20, 31)), replace=False)] * np.asarray(spacing):
        balls |= ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= rng.uniform(6, 15) ** 2
    out["small_patchy"] = (balls & truth, rng.uniform(-20, 40))
    left = labels == 2
    out["left_lower"] = (left & (z <= quantile(z, left, rng.uniform(0.35, 0.55))), rng.uniform(15, 45))
    return out


def series(case, rng: np.random.Generator):
    """(kind, Variant, extent) of every kind made from ``case`` (a cache.Case)."""
    truth = np.asarray(case.mask, dtype=bool)
    labels = sides.split_lungs(truth, case.volume)
    hu0 = np.asarray(case.volume.hu, dtype=np.float32)
    for kind, (region, value) in regions(truth, labels, case.volume.spacing, rng).items():
        w = ndimage.gaussian_filter(region.astype(np.float32), 1.0) * truth
        texture = 12 * ndimage.gaussian_filter(rng.standard_normal(hu0.shape).astype(np.float32), 0.8)
        hu = hu0 * (1 - w) + w * (value + texture)
        volume = replace(case.volume, hu=np.clip(np.rint(hu), *failures.HU_RANGE).astype(np.int16))
        extent = float((w > 0.5).sum() / truth.sum())
        yield kind, failures.Variant(volume, truth, kind, f"{value:.0f} HU"), extent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--save", default="", help="also write FOLDER/qc_dense_hunt.json")
    a = ap.parse_args()
    report = selection.profile_runs(a.profile)
    run = report.main
    score = dense.run_scorer(run, with_qc=True)
    rows = []
    for case_id in bar(list(run.config.test_cases), desc="held-out patients", unit="case"):
        case = cache.load_case(case_id)
        rng = np.random.default_rng([SEED, int(case_id.split("_")[-1])])
        for kind, variant, extent in series(case, rng):
            r = score(variant, case.volume)
            rows.append({"case": case_id, "kind": kind, "detail": variant.detail, "extent": round(extent, 3),
                         "dice": round(r["dice"], 4), "qc": r["status"], "checks": r["checks"],
                         "bad": r["dice"] < dense.BAD_DICE,
                         "missed": r["dice"] < dense.BAD_DICE and r["status"] == "pass"})
    bad = [r for r in rows if r["bad"]]
    calibration = qc.load_thresholds().get("calibration", {})  # which limits judged the series
    out = {"what": __doc__.split("\n\n")[1].replace("\n", " "),
           "run": run.run_dir.name, "profile": a.profile,
           "qc_limits": {k: calibration.get(k) for k in ("git_commit", "date", "fold_runs")},
           "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                    cwd=paths.ROOT).stdout.strip(),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "bad_series": len(bad), "bad_flagged": sum(not r["missed"] for r in bad),
           "good_series": len(rows) - len(bad),
           "good_flagged": sum(r["qc"] != "pass" for r in rows if not r["bad"]),
           "rows": rows}
    for r in rows:
        print(f"{r['case']} {r['kind']:16s} extent {r['extent']:.2f} Dice {r['dice']:.4f} QC {r['qc']:6s} "
              f"{', '.join(r['checks'])}{'  MISSED' if r['missed'] else ''}")
    print(f"bad series (Dice < 0.90) flagged: {out['bad_flagged']}/{out['bad_series']}; "
          f"good series flagged: {out['good_flagged']}/{out['good_series']}")
    targets = [paths.BUILD] + ([paths.resolve(a.save)] if a.save else [])
    for f in (t / "qc_dense_hunt.json" for t in targets):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
