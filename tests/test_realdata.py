"""Checks on the real LCTSC cases (see the data README); each test skips when its case is absent.

In CI only Case_000, 003, 005, 006, 007 and 011 are unpacked; everything here stays on those.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from builders import case_dir

from lungseg import paths
from lungseg.io import anonymise, cache
from lungseg.io.dicom import Volume, load_series
from lungseg.io.masks import load_mask

pytestmark = pytest.mark.realdata

CI_CASES = ("Case_000", "Case_003", "Case_005", "Case_006", "Case_007", "Case_011")
SHUFFLED_CASES = ("Case_005", "Case_011")  # file-name order is not slice order
HU_CASES = ("Case_000", "Case_005", "Case_011")
# Patient attributes carrying PHI, per the data README; the other CI cases carry none.
EXPECTED_PHI: dict[str, set[str]] = {
    "Case_000": set(),
    "Case_003": {"PatientName", "PatientID", "PatientBirthDate"},
    "Case_005": set(),
    "Case_006": {"PatientBirthDate", "PatientBirthTime"},
    "Case_007": {"PatientName", "PatientID"},
    "Case_011": set(),
}
SPACING = (3.0, 0.9765625, 0.9765625)
IN_PLANE = (512, 512)
MIN_HU_RANGE = (-1100, -900)  # air: -1000 in these files (-1024 on other scanners)
MAX_HU_RANGE = (500, 3100)  # bone/metal, clipped by 12-bit storage at 3071
LUNG_HU = -400
MIN_LUNG_FRACTION = 0.9  # README: about 95 % of mask voxels below -400 HU, about 70 % flipped
MIN_FLIP_MARGIN = 0.1
SHARED_ENV = "LUNGSEG_SHARED"


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied afterwards: copies of real cases are hundreds of MB."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@functools.cache
def _volume(case_id: str) -> Volume:
    return load_series(case_dir(case_id))


def _header_z(files: tuple[str, ...]) -> np.ndarray:
    return np.array([float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
                     for f in files])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shared() -> Path:
    return Path(os.environ.get(SHARED_ENV) or paths.ROOT.parent / "shared")


@pytest.mark.parametrize("case_id", SHUFFLED_CASES)
def test_slices_are_sorted_by_position_not_name(case_id: str) -> None:
    vol = _volume(case_id)
    by_name = sorted(p.name for p in case_dir(case_id).glob("*.dcm"))
    names = [Path(f).name for f in vol.files]
    assert vol.filename_order_differs
    assert names not in (by_name, by_name[::-1])
    assert sorted(names) == by_name  # every file used once
    assert np.all(np.diff(vol.positions) > 0)
    np.testing.assert_allclose(_header_z(vol.files), vol.positions)  # files in that order


@pytest.mark.parametrize("case_id", HU_CASES)
def test_hu_range_and_spacing(case_id: str) -> None:
    vol = _volume(case_id)
    assert vol.hu.dtype == np.int16 and vol.shape[1:] == IN_PLANE
    assert vol.spacing == pytest.approx(SPACING)
    assert MIN_HU_RANGE[0] <= int(vol.hu.min()) <= MIN_HU_RANGE[1]
    assert MAX_HU_RANGE[0] <= int(vol.hu.max()) <= MAX_HU_RANGE[1]


@pytest.mark.parametrize("case_id", HU_CASES)
def test_mask_lines_up_with_the_lungs(case_id: str) -> None:
    vol = _volume(case_id)
    mask = load_mask(paths.mask_file(paths.data_dir(), case_id), vol)
    lung = float((vol.hu[mask] < LUNG_HU).mean())
    flipped = float((vol.hu[:, ::-1][mask] < LUNG_HU).mean())
    assert lung >= MIN_LUNG_FRACTION
    assert lung - flipped >= MIN_FLIP_MARGIN


@pytest.mark.parametrize("case_id", CI_CASES)
def test_phi_found_exactly_where_the_readme_says(case_id: str) -> None:
    report = anonymise.scan_phi(case_dir(case_id))
    assert report.n_files > 0
    assert set(report.phi) == EXPECTED_PHI[case_id]
    assert all(n == report.n_files for n in report.phi.values())  # in every slice


def test_anonymised_case_003_has_no_phi_and_the_same_pixels(scratch: Path) -> None:
    src, dst = case_dir("Case_003"), scratch / "Case_003"
    report = anonymise.anonymise(src, dst)
    assert report.had_phi and report.case_id == "Case_003"
    assert not anonymise.scan_phi(dst).had_phi
    first = pydicom.dcmread(next(src.glob("*.dcm")), stop_before_pixels=True)
    planted = [str(first.PatientName), str(first.PatientID), str(first.PatientBirthDate)]
    copies = sorted(dst.glob("*.dcm"))  # generated names, in the sources' path order
    for path, copy in zip(sorted(src.glob("*.dcm")), copies, strict=True):
        old, new = pydicom.dcmread(path), pydicom.dcmread(copy)
        assert new.PixelData == old.PixelData, path.name
        assert new.ImagePositionPatient == old.ImagePositionPatient, path.name
        assert new.PatientIdentityRemoved == "YES"
        raw = copy.read_bytes()
        assert not any(v.encode() in raw for v in planted if len(v) >= 4), path.name


def test_the_notebook_steps_leave_the_data_untouched(
        scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache.load_case + anonymise.anonymise_cases (notebook 01) on the CI cases, then every DICOM
    file present still matches SHA256SUMS and the masks and the file list are unchanged."""
    available = [c for c in CI_CASES if _available(c)]
    if not available:
        pytest.skip("none of the CI cases is unpacked")
    data = paths.data_dir()
    masks = sorted((data / "Segmentations").glob("*.npz"))
    mask_hashes = {p.name: _sha256(p) for p in masks}
    listing = sorted(p.relative_to(data) for p in data.rglob("*"))
    monkeypatch.setenv(paths.CACHE_ENV, str(scratch / "cache"))  # a real conversion, not a hit
    for case_id in available:
        cache.load_case(case_id)
    anonymise.anonymise_cases(available, None, scratch / "anonymised")

    assert {p.name: _sha256(p) for p in masks} == mask_hashes
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == listing
    sums = _shared() / "data" / "lctsc12" / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip(f"checksums absent: {sums} (masks and file list were checked)")
    expected = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip())
    present = sorted((data / "Images").glob("Case_*/*.dcm"))
    assert len(present) >= sum(len(list(case_dir(c).glob("*.dcm"))) for c in available)
    mismatched = [str(p.relative_to(data / "Images")) for p in present
                  if expected.get(str(p.relative_to(data / "Images"))) != _sha256(p)]
    assert not mismatched, f"{len(mismatched)} files differ from SHA256SUMS: {mismatched[:5]}"


def _available(case_id: str) -> bool:
    try:
        case_dir(case_id)
    except pytest.skip.Exception:
        return False
    return True
