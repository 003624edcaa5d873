"""Finding the series (issue class 4): one content rule for "is DICOM" in every command, media exports
with a DICOMDIR and nested folders, files without extension or preamble, folders with a scout or a
second series, and one-line errors (never a traceback) from the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from synthetic import edit, write_series

from lungseg import cli
from lungseg.inference.batch import discover
from lungseg.io import anonymise, headers
from lungseg.io.dicom import DicomSeriesError, DicomWarning, find_dicom_files, is_dicom, load_series


def _bare(path: Path, out: Path) -> Path:
    """``path`` rewritten without preamble and file meta (implicit VR little endian, as old PACS do)."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return out


def _media_export(root: Path) -> list[Path]:
    """A DICOMDIR-style export: DICOMDIR at the top, files without extension two folders down."""
    files = write_series(root / "tmp", n=4, shuffle=True)
    target = root / "DICOM" / "ST000001" / "SE000001"
    target.mkdir(parents=True)
    moved = [Path(shutil.move(str(f), target / f"IM{i:05d}")) for i, f in enumerate(files)]
    (root / "tmp").rmdir()
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # an index, not an image
    return moved


def test_one_content_rule_for_every_command(tmp_path: Path) -> None:
    good = write_series(tmp_path / "s", n=1)[0]
    bare = _bare(good, tmp_path / "noext")
    (tmp_path / "notes.dcm").write_text("hello")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert is_dicom(good) and is_dicom(bare)
    assert not is_dicom(tmp_path / "notes.dcm") and not is_dicom(tmp_path / "image.png")


def test_a_media_export_is_found_and_read_like_a_flat_folder(tmp_path: Path) -> None:
    flat = write_series(tmp_path / "flat", n=4, shuffle=True)
    _media_export(tmp_path / "media")
    files, others = find_dicom_files(tmp_path / "media")
    assert len(files) == 4 and others == []  # the DICOMDIR index is not a data file
    np.testing.assert_array_equal(load_series(tmp_path / "media").hu, load_series(flat[0].parent).hu)
    report = anonymise.anonymise(tmp_path / "media", tmp_path / "anon", "P01")
    assert report.n_files == 4 and len(list((tmp_path / "anon").glob("P01_*.dcm"))) == 4


def test_files_without_preamble_load_and_anonymise(tmp_path: Path) -> None:
    files = write_series(tmp_path / "src", n=3)
    (tmp_path / "bare").mkdir()
    for i, f in enumerate(files):
        _bare(f, tmp_path / "bare" / f"slice{i}")
    np.testing.assert_array_equal(load_series(tmp_path / "bare").hu, load_series(tmp_path / "src").hu)
    anonymise.anonymise(tmp_path / "bare", tmp_path / "anon", "P02")
    copies = sorted((tmp_path / "anon").glob("*.dcm"))
    assert len(copies) == 3 and all(p.read_bytes()[128:132] == b"DICM" for p in copies)


def test_subfolders_are_read_as_batch_reads_them(tmp_path: Path) -> None:
    """A file at the top does not stop the reader from looking into subfolders (batch's walk, the one
    walk of every command); recursive=False reads the folder's own files only."""
    write_series(tmp_path / "top" / "a", n=2)
    (tmp_path / "top" / "readme.txt").write_text("x")
    with pytest.warns(DicomWarning, match="skipping non-DICOM"):
        assert load_series(tmp_path / "top").shape[0] == 2
    with pytest.warns(DicomWarning, match="skipping non-DICOM"), pytest.raises(Exception, match="no DICOM"):
        load_series(tmp_path / "top", recursive=False)


def test_cli_names_the_series_and_takes_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(tmp_path / "s", n=2, series_uid=uid_a, names=["a1.dcm", "a2.dcm"])
    write_series(tmp_path / "s", n=2, series_uid=uid_b, names=["b1.dcm", "b2.dcm"], z0=50.0)
    for f in ("b1.dcm", "b2.dcm"):
        edit(tmp_path / "s" / f, SeriesDescription="Lung 1.0 B70f")
    out = tmp_path / "v.npy"
    assert cli.main(["convert", str(tmp_path / "s"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and uid_a in err and "'Lung 1.0 B70f'" in err and "--series UID" in err
    assert cli.main(["convert", str(tmp_path / "s"), "--out", str(out), "--series", uid_b]) == 0
    assert np.load(out).shape == (2, 16, 16)


def test_cli_says_which_series_it_picked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(tmp_path / "s", n=3, names=["a1.dcm", "a2.dcm", "a3.dcm"])
    scout = write_series(tmp_path / "s", n=1, names=["scout.dcm"], z0=100.0)[0]
    edit(scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert cli.main(["convert", str(tmp_path / "s"), "--out", str(tmp_path / "v.npy")]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "the most slices" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_cli_bad_intercept_is_one_line(tmp_path: Path, value: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    files = write_series(tmp_path / "s", n=3)
    raw = files[1].read_bytes()
    files[1].write_bytes(raw.replace(b"-1024.0", value.encode().ljust(7)))
    assert cli.main(["convert", str(tmp_path / "s"), "--out", str(tmp_path / "v.npy")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(files[1]) in err and "RescaleIntercept" in err


# ---- one decision for predict and batch: the header scan (lungseg.io.headers) -----------------------

def test_other_objects_beside_the_ct_are_never_read_in_full(tmp_path: Path) -> None:
    """A dose screen without geometry (a one-image series) beside the CT: predict's reader chooses from
    the headers and reads the CT alone, as batch does, instead of failing on the other object."""
    uid_ct = generate_uid()
    write_series(tmp_path, n=4, series_uid=uid_ct)
    (screen,) = write_series(tmp_path / "dose", n=1, series_uid=generate_uid(), names=["dose.dcm"])
    edit(screen, PixelSpacing=None, ImageOrientationPatient=None, ImageType=["DERIVED", "SECONDARY"])
    with pytest.warns(DicomWarning, match="2 series"):
        vol = load_series(tmp_path, volume_only=True)
    assert vol.series_uid == uid_ct and vol.shape[0] == 4


def test_a_lone_scout_or_single_image_is_not_segmented(tmp_path: Path) -> None:
    """What batch skips as not a volume, predict refuses (a plain read, as convert does, accepts it)."""
    write_series(tmp_path / "one", n=1)
    with pytest.raises(DicomSeriesError, match="1 slice"):
        load_series(tmp_path / "one", volume_only=True)
    assert load_series(tmp_path / "one").shape[0] == 1
    for p in write_series(tmp_path / "scout", n=4):
        edit(p, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(DicomSeriesError, match="localizer"):
        load_series(tmp_path / "scout", volume_only=True)


def test_ct_volumes_of_two_studies_are_not_mixed(tmp_path: Path) -> None:
    write_series(tmp_path / "a", n=3, series_uid=generate_uid())
    for p in write_series(tmp_path / "b", n=4, series_uid=generate_uid(), z0=60.0):
        edit(p, StudyInstanceUID=generate_uid())
    with pytest.raises(DicomSeriesError, match="2 studies.*lungseg batch"):
        load_series(tmp_path, volume_only=True)


def test_series_facts_read_thickness_and_step_alike_for_every_command(tmp_path: Path) -> None:
    """A negative or multi-valued SliceThickness is no thickness; thin slices written far apart are as
    coarse as their step: the full 3 mm series wins over 1 mm slices 9 mm apart."""
    full, sparse = generate_uid(), generate_uid()
    write_series(tmp_path, n=6, series_uid=full, names=[f"f{i}.dcm" for i in range(6)])
    study = pydicom.dcmread(tmp_path / "f0.dcm").StudyInstanceUID  # two reconstructions of one study
    for p in write_series(tmp_path, n=3, series_uid=sparse, dz=9.0, names=[f"s{i}.dcm" for i in range(3)]):
        edit(p, SliceThickness=1.0, StudyInstanceUID=study)
    with pytest.warns(DicomWarning, match="2 series"):
        assert load_series(tmp_path, volume_only=True).series_uid == full
    h = headers.header_of(pydicom.dcmread(tmp_path / "f0.dcm"))
    for bad in (-3.0, [1.0, 1.0]):
        ds = pydicom.dcmread(tmp_path / "f0.dcm")
        ds.SliceThickness = bad
        assert headers.header_of(ds).thickness is None and h.thickness == 3.0
    scan = discover.scan_folder(str(tmp_path), ".", sorted(p.name for p in tmp_path.iterdir()))
    by_uid = {s.uid: s.facts for s in scan.series}
    assert by_uid[sparse].slice_mm == 9.0 and by_uid[full].slice_mm == 3.0
