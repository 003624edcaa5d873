"""Surface distances (HD95, MSD) of real lung masks: the feature transform of the mask's box (lungseg's
way before this benchmark's commit) against bounded k-d tree queries (``lungseg.evaluation.metrics``
now), on the same pairs, timed alternately in one process; the values are checked equal.

    python benchmarks/surface_distance_timing.py [--cases Case_002 Case_011] [--repeat 3] [--save figures]

Each case's true mask is compared with two predictions made from it: "clean" (the truth grown by one
pixel in-plane and moved by one slice: a good post-processed mask) and "raw" (the same with 40 small
blobs scattered in the chest, up to 15 cm from the lungs: a mask before post-processing). Prints the
JSON; ``--save DIR`` writes ``DIR/surface_distance_timing.json``. A benchmark: it asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from lungseg.evaluation import metrics
from lungseg.io import cache


def predictions(truth: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A clean and a raw prediction made from a bool (z, y, x) true mask (module docstring)."""
    grown = ndimage.binary_dilation(truth, np.ones((1, 3, 3), bool))
    clean = np.roll(grown, 1, axis=0)
    raw = clean.copy()
    zs, ys, xs = (np.flatnonzero(truth.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    for _ in range(40):
        z = rng.integers(zs[0], zs[-1] + 1)
        y = rng.integers(max(ys[0] - 150, 0), min(ys[-1] + 150, truth.shape[1] - 3))
        x = rng.integers(max(xs[0] - 150, 0), min(xs[-1] + 150, truth.shape[2] - 3))
        raw[z:z + 2, y:y + 3, x:x + 3] = True
    return {"clean": clean, "raw": raw}


def time_both(pred: np.ndarray, truth: np.ndarray, spacing, repeat: int) -> dict:
    """Median seconds of ``per_patient_metrics`` each way, the ratio, and the metrics (equal both ways)."""
    times: dict[str, list[float]] = {"transform": [], "tree": []}
    values = {}
    for _ in range(repeat):
        for way, limit in (("transform", -1), ("tree", metrics.MAX_FAR_BY_TREE)):
            kept = metrics.MAX_FAR_BY_TREE
            metrics.MAX_FAR_BY_TREE = limit  # -1: every source voxel counts as far, the transform's way
            try:
                t = time.perf_counter()
                values[way] = metrics.per_patient_metrics(pred, truth, spacing)
                times[way].append(time.perf_counter() - t)
            finally:
                metrics.MAX_FAR_BY_TREE = kept
    same = all(np.isclose(values["tree"][k], values["transform"][k], rtol=1e-9) for k in values["tree"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"transform_s": round(med["transform"], 3), "tree_s": round(med["tree"], 3),
            "speedup": round(med["transform"] / med["tree"], 2), "same_values": bool(same),
            "hd95_mm": round(values["tree"]["hd95_mm"], 3), "msd_mm": round(values["tree"]["msd_mm"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["Case_002", "Case_011"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--save", default=None, help="write DIR/surface_distance_timing.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for case in cache.load_cases(args.cases):
        truth = np.asarray(case.mask, dtype=bool)
        for name, pred in predictions(truth, rng).items():
            rows.append({"case": case.case_id, "prediction": name,
                         **time_both(pred, truth, case.volume.spacing, args.repeat)})
    out = {"what": "per_patient_metrics (Dice, HD95, MSD) of real lung masks: feature transform of the box "
                   "against bounded k-d tree queries (lungseg.evaluation.metrics), medians of alternate "
                   "runs in one process; made by benchmarks/surface_distance_timing.py",
           "machine": f"{platform.machine()} {platform.platform()}", "repeat": args.repeat, "rows": rows}
    text = json.dumps(out, indent=1) + "\n"
    print(text)
    if args.save:
        Path(args.save, "surface_distance_timing.json").write_text(text)


if __name__ == "__main__":
    main()
