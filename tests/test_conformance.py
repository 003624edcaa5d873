"""Every DICOM file lungseg writes stays valid (issue 21): de-identified copies, SEG and RTSTRUCT show
no IOD error that their source did not have, by ``dciodvfy`` when installed and always by the
structural rules of :mod:`lungseg.io.iod` (the summary line says which ran; see ``conformance.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from builders import (
    SECRET,
    case_dir,
    median_threshold,
    plant_secret,
    run_cli,
    table_dataset,
    write_checkpoint,
)
from conformance import CHECKER, DCIODVFY, new_errors
from corpus import base_volume, write_oriented
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from synthetic import edit, lung_mask, write_series

from lungseg import paths
from lungseg.inference import predict, sides
from lungseg.io import anonymise, dicom, export, iod, masks, rtstruct

PHI_CASES = ("Case_003", "Case_006", "Case_007")
SEG_CASES = ("Case_003", "Case_007")
IDENTITY = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
# What a scanner writes beyond the synthetic slices: the CT IOD's Type 1/2 attributes (many of them
# identifying or off the allowlist), so that the copies can lose them.
SCANNER_HEADER = {
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "StudyDate": "20010203", "StudyTime": "101010",
    "ReferringPhysicianName": "Who^Doctor", "StudyID": "S77", "AccessionNumber": "ACC77",
    "PatientBirthDate": "19650601", "PatientSex": "F", "SeriesNumber": 3, "Laterality": "",
    "PositionReferenceIndicator": "SN", "PatientOrientation": ["L", "P"], "KVP": 120,
    "AcquisitionNumber": 1, "ContentDate": "20010203", "ContentTime": "101010",
}


@pytest.fixture(autouse=True)
def _say_which_checker(record_property: pytest.RecordProperty) -> None:
    record_property("iod_checker", CHECKER)


def _assert_no_new_errors(pairs: list[tuple[Path, Path]]) -> None:
    new = sorted({f"{written.name}: {e}" for source, written in pairs for e in new_errors(source, written)})
    assert not new, f"checked with {CHECKER}; new errors:\n" + "\n".join(new[:30])


def _copies(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(source, de-identified copy) pairs: copies are numbered in the sources' path order."""
    sources, _ = dicom.find_dicom_files(src)
    return list(zip(sources, sorted(dst.glob("*.dcm")), strict=True))


# ---- the checkers themselves --------------------------------------------------------------------

def test_the_checkers_see_a_removed_type2_and_an_emptied_type1_attribute(tmp_path: Path) -> None:
    source, broken = write_series(tmp_path / "s", n=2)
    for path in (source, broken):
        edit(path, PositionReferenceIndicator="")
    edit(broken, PositionReferenceIndicator=None, Modality="")
    found = new_errors(source, broken)
    structural = {e for e in found if e.startswith("lungseg.io.iod")}
    assert any("Type 2" in e and "PositionReferenceIndicator" in e for e in structural), found
    assert any("Type 1" in e and "Modality" in e for e in structural), found
    if DCIODVFY:
        assert any(e.startswith("dciodvfy") and "PositionReferenceIndicator" in e for e in found), found


def test_unknown_sop_class_is_named() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.3.4"
    with pytest.raises(KeyError, match="no IOD"):
        iod.structural_errors(ds)


# ---- de-identified copies -------------------------------------------------------------------------

def test_required_attributes_come_from_the_iod_tables() -> None:
    ct = iod.requirements(pydicom.uid.CTImageStorage, set())
    assert ct["PositionReferenceIndicator"].type == "2" and ct["Modality"].type == "1"
    assert ct["PositionReferenceIndicator"].module == "frame-of-reference"
    assert "ContrastBolusAgent" not in ct  # a Conditional module, not in use
    assert iod.requirements(pydicom.uid.CTImageStorage, {"ContrastBolusAgent"})["ContrastBolusAgent"].required
    seg = iod.requirements(pydicom.uid.SegmentationStorage, set())
    assert seg["SegmentSequence"].children["SegmentLabel"].type == "1"  # nested, under its sequence


def test_required_attributes_are_emptied_or_replaced_never_removed_nor_leaked(tmp_path: Path) -> None:
    src = tmp_path / "Case_1"
    path = write_series(src, n=1)[0]
    edit(path, PositionReferenceIndicator=f"{SECRET} ward",  # Type 2, off the allowlist: emptied
         AnatomicalOrientationType="QUADRUPED",  # Type 1C code, off the allowlist: kept
         PatientOrientation=["A", "F"],  # Type 2C, off the allowlist: emptied
         StudyDescription="Chest")  # Type 3: removed as before
    report = anonymise.anonymise(src, tmp_path / "out")
    out = pydicom.dcmread(next((tmp_path / "out").glob("*.dcm")))
    assert out.PositionReferenceIndicator == ""
    assert out.AnatomicalOrientationType == "QUADRUPED" and out.PatientOrientation == ""
    assert "StudyDescription" not in out
    assert report.actions["emptied (required by the IOD, Type 2)"] == 2
    edit(path, AnatomicalOrientationType=SECRET.upper(), PatientName=f"{SECRET}^Jo")
    anonymise.anonymise(src, tmp_path / "out2")
    out = pydicom.dcmread(next((tmp_path / "out2").glob("*.dcm")))
    assert out.AnatomicalOrientationType == anonymise.DUMMY_TEXT  # a code quoting the patient: dummy
    _assert_no_new_errors(_copies(src, tmp_path / "out2"))


@pytest.mark.realdata
@pytest.mark.parametrize("case_id", PHI_CASES)
def test_deidentified_phi_cases_add_no_iod_error(case_id: str, tmp_path: Path) -> None:
    src = case_dir(case_id)
    anonymise.anonymise(src, tmp_path / case_id)
    pairs = _copies(src, tmp_path / case_id)
    assert len(pairs) > 100
    _assert_no_new_errors(pairs)


def _every_row(ds: Dataset) -> None:
    """Plant every exact row of Table E.1-1 into ``ds`` (its identity UIDs and meta aside)."""
    for elem in table_dataset():
        if elem.keyword not in IDENTITY and elem.tag.group not in (0x0000, 0x0002):
            ds[elem.tag] = elem


def _hostile(kind: str, folder: Path) -> Path:
    """A source folder of one hostile kind (see the parametrisation below)."""
    if kind == "coronal, 12 bits unsigned with an overlay bit":
        hu, spacing, origin, _ = base_volume()
        for path in write_oriented(folder, hu[:3], spacing, origin, (1, 0, 0, 0, 0, -1), unsigned_bits=12,
                                   overlay_bit=True):
            edit(path, **SCANNER_HEADER)
        return folder
    files = write_series(folder, n=2, phi=kind == "PHI and a private tag", compress=kind == "RLE compressed")
    for path in files:
        edit(path, **SCANNER_HEADER)
    if kind == "a series with its RTSTRUCT":
        volume = dicom.load_series(folder)
        labels = lung_mask(len(files)).astype(np.uint8)
        labels[:, :, 8:] *= 2  # a right and a left "lung"
        rtstruct.write_rtstruct(labels, volume, folder / "rtstruct.dcm")
        if kind == "identifiers planted in free text and sequences":
            plant_secret(path)
        elif kind in ("every row of E.1-1", "every row of E.1-1, nested two deep", "implicit VR, planted"):
            ds = pydicom.dcmread(path)
            if kind == "every row of E.1-1":
                _every_row(ds)
            elif kind == "implicit VR, planted":
                ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            else:
                inner = Dataset()
                _every_row(inner)
                ref = Dataset()
                ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
                ref.ReferencedImageSequence = Sequence([inner])
                ds.ReferencedImageSequence = Sequence([ref])
            ds.save_as(path, enforce_file_format=True)
            if kind == "implicit VR, planted":
                plant_secret(path)
    return folder


HOSTILE = ("PHI and a private tag", "identifiers planted in free text and sequences", "every row of E.1-1",
           "every row of E.1-1, nested two deep", "implicit VR, planted", "RLE compressed",
           "coronal, 12 bits unsigned with an overlay bit", "a series with its RTSTRUCT")


@pytest.mark.parametrize("kind", HOSTILE)
def test_deidentified_hostile_inputs_add_no_iod_error(kind: str, tmp_path: Path) -> None:
    src = _hostile(kind, tmp_path / "Case_1")
    anonymise.anonymise(src, tmp_path / "out")
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in (tmp_path / "out").glob("*.dcm"))
    pairs = _copies(src, tmp_path / "out")
    _assert_no_new_errors(pairs)
    for source, copy in pairs:  # an RTSTRUCT keeps its contours (names are emptied by E.1-1)
        old, new = pydicom.dcmread(source), pydicom.dcmread(copy)
        if old.Modality == "RTSTRUCT":
            assert new.ROIContourSequence == old.ROIContourSequence
            assert [r.ROIName for r in new.StructureSetROISequence] == ["", ""]


# ---- predict's SEG and RTSTRUCT -------------------------------------------------------------------

def test_predict_seg_and_rtstruct_add_no_iod_error(tmp_path: Path) -> None:
    series = tmp_path / "Case_900"
    write_series(series, n=6, dz=2.5)
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt")
    p, _ = median_threshold(series, ckpt)
    out = tmp_path / "out"
    assert run_cli("predict", series, "--out", out, "--checkpoint", ckpt, "--threshold", p,
                   "--no-postprocess", "--runtime", "torch") == 0
    source = Path(dicom.load_series(series).files[0])
    _assert_no_new_errors([(source, out / predict.SEG_NAME), (source, out / predict.RTSTRUCT_NAME)])


@pytest.mark.realdata
@pytest.mark.parametrize("case_id", SEG_CASES)
def test_seg_and_rtstruct_of_real_cases_add_no_iod_error(case_id: str, tmp_path: Path) -> None:
    """predict's writers (the ground truth split into lungs stands in for a prediction)."""
    volume = dicom.load_series(case_dir(case_id))
    labels = sides.split_lungs(masks.load_mask(paths.mask_file(paths.data_dir(), case_id), volume), volume)
    sources = export.read_sources(volume)
    seg = export.write_seg(labels, volume, tmp_path / predict.SEG_NAME, sources)
    rts = rtstruct.write_rtstruct(labels, volume, tmp_path / predict.RTSTRUCT_NAME, sources=sources)
    assert np.any(labels)
    _assert_no_new_errors([(Path(volume.files[0]), seg), (Path(volume.files[0]), rts)])
