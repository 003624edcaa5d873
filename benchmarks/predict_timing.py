"""End-to-end time of ``python -m lungseg predict`` (a fresh process per run, all exports), on ONNX
Runtime (the default on a CPU) and on PyTorch, and how far their masks agree (issue 9, item 4).

    python benchmarks/predict_timing.py RUN_DIR [--cases Case_002,Case_005,Case_008,Case_011]
                                        [--repeat 3] [--save figures]

Each case is predicted ``--repeat`` times per runtime after one warm-up run (which also makes the
one-off ONNX export); the median wall time is reported with the stage timings of that run
(``stats.json``). Agreement: Dice of each label (1 = right, 2 = left lung) between the two runtimes'
NIfTI outputs. Prints the JSON; ``--save DIR`` also writes ``DIR/predict_timing.json``, from which
the README's table is generated (``lungseg.report.readme``).
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

import nibabel as nib
import numpy as np
import torch

import lungseg
from lungseg import paths
from lungseg.evaluation import metrics
from lungseg.io import parallel, writing
from lungseg.network.data import DEFAULT_TEST_CASES

RUNTIMES = ("onnxruntime", "torch")
EXPORTS = ("nifti_s", "seg_s", "rtstruct_s", "overview_s")


def run_predict(case: str, out: Path, run_dir: str, engine: str) -> tuple[float, dict]:
    """Wall seconds of one predict process and its stats.json."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lungseg", "predict", str(paths.images_dir(paths.data_dir(), case)),
                    "--out", str(out), "--checkpoint", run_dir, "--runtime", engine, "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "stats.json").read_text())


def labels(out: Path) -> np.ndarray:
    return np.asarray(nib.load(out / "lung_mask.nii.gz").dataobj)


def time_case(case: str, run_dir: str, repeat: int, tmp: Path) -> dict:
    row: dict = {"case": case}
    for engine in RUNTIMES:
        out = tmp / f"{case}-{engine}"
        runs = sorted((run_predict(case, out, run_dir, engine) for _ in range(repeat)), key=lambda r: r[0])
        wall, stats = runs[len(runs) // 2]
        t = stats["timings_s"]
        row[engine] = {"wall_s": round(wall, 2), "walls_s": [round(w, 2) for w, _ in runs],
                       "startup_s": round(wall - t["total_s"], 2), "read_s": t["read_dicom_s"],
                       "load_model_s": t["load_model_s"], "inference_s": t["inference_s"],
                       "postprocess_s": t["postprocess_s"],
                       "exports_s": round(sum(t[k] for k in EXPORTS), 3),
                       "timings_s": t, "runtime": stats["runtime"]}
        row["slices"], row["side_split_method"] = stats["slices"], stats["side_split_method"]
    a, b = (labels(tmp / f"{case}-{engine}") for engine in RUNTIMES)
    row["dice_onnxruntime_vs_torch"] = {side: metrics.volume_dice(a == v, b == v)
                                        for v, side in ((1, "right"), (2, "left"))}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--cases", default=",".join(DEFAULT_TEST_CASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--save", metavar="DIR", help="also write DIR/predict_timing.json")
    args = ap.parse_args()
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        first = run_predict(cases[0], tmp / "warm-up", args.run_dir, "onnxruntime")[0]
        rows = [time_case(c, args.run_dir, args.repeat, tmp) for c in cases]
    # The run folder's name only: no machine path in a committed file.
    result = {"run_dir": Path(args.run_dir).name, "repeat": args.repeat, "warm_up_wall_s": round(first, 2),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": parallel.cores(),
              "processor": platform.processor() or platform.machine(),
              "package_byte_compiled": (Path(lungseg.__file__).parent / "__pycache__").is_dir(),
              "cases": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if args.save:
        writing.atomic_write_text(paths.resolve(args.save) / "predict_timing.json", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
