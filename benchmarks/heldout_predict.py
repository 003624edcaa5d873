"""Score a training run as an outside check would: ``python -m lungseg predict`` on held-out cases,
then Dice per lung label against the course mask, read back through the NIfTI's own geometry.

    python benchmarks/heldout_predict.py RUN_DIR [--cases Case_002,Case_005,Case_008,Case_011]

Prints one JSON line: per-case Dice, HD95 and MSD (both lungs), predict wall time, and the means.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from lungseg import paths
from lungseg.evaluation import metrics
from lungseg.io import dicom, masks
from lungseg.network.data import DEFAULT_TEST_CASES


def scores_through_geometry(nifti: Path, case: str) -> dict:
    """Dice, HD95 and MSD (mm) of the NIfTI labels (> 0) against the case's mask, mapping NIfTI
    voxels to the DICOM slice order through the affines (so a geometry error would show)."""
    volume = dicom.load_series(paths.images_dir(paths.data_dir(), case))
    truth = masks.load_mask(paths.mask_file(paths.data_dir(), case), volume)
    img = nib.load(nifti)
    from lungseg.io.export import nifti_affine

    # voxel (i, j, k) of the NIfTI -> world -> voxel of the volume's own grid
    to_volume = np.linalg.inv(nifti_affine(volume)) @ img.affine
    pred_xyz = np.asarray(img.dataobj) > 0
    ijk = np.argwhere(pred_xyz)
    mapped = np.rint(np.c_[ijk, np.ones(len(ijk))] @ to_volume.T)[:, :3].astype(int)
    pred = np.zeros(truth.shape, dtype=bool)
    pred[mapped[:, 2], mapped[:, 1], mapped[:, 0]] = True
    return metrics.per_patient_metrics(pred, truth, volume.spacing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--cases", default=",".join(DEFAULT_TEST_CASES))
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lungseg", "predict",
                            str(paths.images_dir(paths.data_dir(), case)), "--out", f"{tmp}/{case}",
                            "--checkpoint", args.run_dir], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            wall = round(time.perf_counter() - t0, 2)
            out[case] = {**scores_through_geometry(Path(tmp) / case / "lung_mask.nii.gz", case),
                         "predict_wall_s": wall}
    means = {f"mean_{k}": float(np.mean([v[k] for v in out.values()])) for k in ("dice", "hd95_mm", "msd_mm")}
    print(json.dumps({"cases": out, **means}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
