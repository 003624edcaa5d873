"""Numpy resampling of a CT volume's slices (ONNX Runtime's pre- and post-processing, the field of view,
the QC study's zoom): one small matrix product pair per slice (lungseg before commit a815fe2) against
two large products over the whole stack (``lungseg.inference.resample.resample`` now).

    python benchmarks/resample_timing.py [--slices 136] [--repeat 5] [--save figures]

Both are timed alternately in one process on the same random volume, ``--repeat`` times, 512² → 160²
(area, as the network's input) and 160² → 512² (bilinear, its logits back); the medians are compared
and the outputs checked equal. Run once with the BLAS threads as they are and once with one BLAS
thread (a one-thread worker of the QC study's pool), in fresh processes. Prints the JSON; ``--save DIR``
writes ``DIR/resample_timing.json``. A benchmark: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def per_slice(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The earlier form: ``rows @ x[i] @ rows.T`` as stacked matmuls (one small BLAS call per slice)."""
    return np.matmul(np.matmul(rows, x), rows.T)


def measure(slices: int, repeat: int) -> dict:
    """Median seconds of both forms, down and up, in this process (its BLAS threads as set)."""
    from lungseg.inference import resample

    rng = np.random.default_rng(0)
    big = rng.standard_normal((slices, 512, 512)).astype(np.float32)
    small = rng.standard_normal((slices, 160, 160)).astype(np.float32)
    cases = {"down 512->160 (area)": (big, resample.area_matrix(512, 160)),
             "up 160->512 (bilinear)": (small, resample.bilinear_matrix(160, 512))}
    out = {}
    for name, (x, m) in cases.items():
        times: dict[str, list[float]] = {"per_slice": [], "stack": []}
        for _ in range(repeat):
            for form, fn in (("per_slice", per_slice), ("stack", resample.resample)):
                t = time.perf_counter()
                y = fn(x, m)
                times[form].append(time.perf_counter() - t)
        equal = bool(np.array_equal(per_slice(x, m), resample.resample(x, m)))
        med = {k: float(np.median(v)) for k, v in times.items()}
        out[name] = {"per_slice_s": round(med["per_slice"], 4), "stack_s": round(med["stack"], 4),
                     "ratio": round(med["per_slice"] / med["stack"], 2), "outputs_equal": equal,
                     "shape_out": list(y.shape)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=136)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--save", default=None, metavar="DIR")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(measure(args.slices, args.repeat)))
        return
    runs = {}
    for label, env in (("BLAS threads as set", {}), ("one BLAS thread", {"OPENBLAS_NUM_THREADS": "1",
                                                                       "OMP_NUM_THREADS": "1"})):
        done = subprocess.run([sys.executable, __file__, "--inner", "--slices", str(args.slices),
                               "--repeat", str(args.repeat)], env={**os.environ, **env},
                              capture_output=True, text=True, check=True)
        runs[label] = json.loads(done.stdout)
    result = {"what": __doc__.split("\n\n")[0], "slices": args.slices, "repeat": args.repeat,
              "cores": os.cpu_count(), "machine": f"{platform.machine()}, {platform.platform()}",
              "runs": runs}
    text = json.dumps(result, indent=1)
    print(text)
    if args.save:
        from lungseg.io import writing

        writing.atomic_write_text(Path(args.save) / "resample_timing.json", text + "\n")


if __name__ == "__main__":
    main()
