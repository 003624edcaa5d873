"""What the quality control adds to ``python -m lungseg predict`` (issue 19: at most 25 %).

    python benchmarks/qc_timing.py RUN_DIR [--cases Case_002,Case_005,Case_008,Case_011] [--repeat 3]
                                   [--save figures]

Each case is predicted in fresh processes, with QC and with ``--no-qc``, alternately (so a busy
machine slows both alike), ``--repeat`` times each after one warm-up run; the medians of the wall
times are compared, and so are the in-process totals of stats.json (``total_s``, which leave out the
interpreter's start-up) with the QC stage (``qc_s``). Prints the JSON; ``--save DIR`` also writes
``DIR/qc_timing.json``, from which the README's table is generated (``lungseg.report.readme``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lungseg import paths
from lungseg.io import parallel, writing
from lungseg.network.data import DEFAULT_TEST_CASES


def run_predict(case: str, out: Path, run_dir: str, check: bool) -> tuple[float, dict]:
    """Wall seconds of one predict process and its stats.json."""
    cmd = [sys.executable, "-m", "lungseg", "predict", str(paths.images_dir(paths.data_dir(), case)),
           "--out", str(out), "--checkpoint", run_dir, "--overwrite"] + ([] if check else ["--no-qc"])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, json.loads((out / "stats.json").read_text())


def time_case(case: str, run_dir: str, repeat: int, tmp: Path) -> dict:
    run_predict(case, tmp / f"{case}-warm", run_dir, True)  # export and OS cache warm
    walls: dict[bool, list[float]] = {True: [], False: []}
    totals: dict[bool, list[float]] = {True: [], False: []}
    qc_s, stats = [], {}
    for _ in range(repeat):
        for check in (True, False):
            wall, stats[check] = run_predict(case, tmp / f"{case}-{check}", run_dir, check)
            walls[check].append(wall)
            totals[check].append(stats[check]["timings_s"]["total_s"])
            if check:
                qc_s.append(stats[check]["timings_s"]["qc_s"])
    med = {k: float(np.median(v)) for k, v in walls.items()}
    tot = {k: float(np.median(v)) for k, v in totals.items()}
    return {"case": case, "slices": stats[True]["slices"], "qc_status": stats[True]["qc"]["status"],
            "wall_s": {"qc": round(med[True], 2), "no_qc": round(med[False], 2)},
            "walls_s": {"qc": [round(w, 2) for w in walls[True]],
                        "no_qc": [round(w, 2) for w in walls[False]]},
            "in_process_s": {"qc": round(tot[True], 2), "no_qc": round(tot[False], 2)},
            "qc_stage_s": round(float(np.median(qc_s)), 3),
            "wall_overhead": round(med[True] / med[False] - 1, 4),
            "qc_stage_share_of_no_qc_wall": round(float(np.median(qc_s)) / med[False], 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--cases", default=",".join(DEFAULT_TEST_CASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--save", metavar="DIR", help="also write DIR/qc_timing.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as name:
        rows = [time_case(c, args.run_dir, args.repeat, Path(name)) for c in args.cases.split(",")]
    import torch

    result = {"repeat": args.repeat, "run": Path(args.run_dir).name,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": parallel.cores(),
              "machine": f"{platform.machine()}, {platform.platform()}", "cases": rows}
    text = json.dumps(result, indent=1) + "\n"
    print(text)
    if args.save:
        writing.atomic_write_text(paths.resolve(args.save) / "qc_timing.json", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
