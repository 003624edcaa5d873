"""QC of a lung mask that already exists (``lungseg qc CT MASK``): another tool's, an edited one, or
one of ours from an earlier version.

The mask is read onto the CT's own grid (:func:`lungseg.io.imagefile.load_mask_on`, no resampling),
both are brought to the canonical orientation as ``predict`` does, the mask is split into the two
lungs by the geometry (:mod:`lungseg.inference.sides`) and judged by :mod:`lungseg.inference.qc` under
the shipped limits. Without the network's output, the confidence checks (uncertain share, flip
agreement) cannot be computed and are skipped: the verdict rests on coverage, input, anatomy and
the chest wall. Every label above 0 counts as lung.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lungseg.inference import qc, qc_scores, sides
from lungseg.io import dicom, imagefile, orient

SKIPPED = ("uncertain", "flip")
"""Checks that need the network's output, skipped for a mask judged on its own."""


def load_ct(path: str | os.PathLike[str], series_uid: str | None = None) -> dicom.Volume:
    """The CT of a DICOM folder or an image file (the series rule of ``predict`` for folders)."""
    path = Path(path)
    if imagefile.is_image_file(path):
        return imagefile.load_image(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: neither a DICOM folder nor a {', '.join(imagefile.SUFFIXES)} file")
    return dicom.load_series(path, series_uid, volume_only=True)


def judge(ct: str | os.PathLike[str], mask_file: str | os.PathLike[str],
          series_uid: str | None = None) -> dict:
    """The QC record (status, reasons, scores, checks) of the mask ``mask_file`` of the CT ``ct``, with
    each lung's volume (mL) and which checks were skipped."""
    volume = load_ct(ct, series_uid)
    mask = imagefile.load_mask_on(mask_file, volume) > 0
    canon, reo = orient.canonical(volume)
    cmask = reo.to_canonical(mask)
    labels, split = sides.split_lungs_with_info(cmask, canon)
    scores = qc_scores.measure(canon.hu, canon.spacing, None, cmask, labels, 0.5, None)
    verdict = qc.assess(scores)
    voxel_ml = float(np.prod(canon.spacing)) / 1000.0
    return {**verdict.to_dict(), "right_lung_ml": round(float((labels == 1).sum()) * voxel_ml, 1),
            "left_lung_ml": round(float((labels == 2).sum()) * voxel_ml, 1), "side_split": split.method,
            "skipped_checks": list(SKIPPED)}
