"""No silent wrong geometry or intensities (issue class 3): every export variant of the same voxels
reads back as the same voxels, and every broken geometry or intensity tag is a named error.

The variants are written from real slices (a crop of Case_000) when the data is unpacked, else from
a synthetic phantom (see ``corpus.py``).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from corpus import ORIENTATIONS, base_volume, write_oriented
from synthetic import write_series

from lungseg import cli
from lungseg.inference import predict
from lungseg.io import orient
from lungseg.io.dicom import DicomSeriesError, load_series
from lungseg.io.series import plane_name


@pytest.fixture(scope="module")
def base() -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float], str]:
    return base_volume()


@pytest.mark.parametrize("name", list(ORIENTATIONS))
def test_every_axis_aligned_export_reads_back_to_the_same_voxels(tmp_path: Path, base: tuple,
                                                                 name: str) -> None:
    hu, spacing, origin, _ = base
    write_oriented(tmp_path / name, hu, spacing, origin, ORIENTATIONS[name])
    native = load_series(tmp_path / name)
    assert plane_name(native.orientation) == name.split("-")[0]
    canon, reo = orient.canonical(native)
    np.testing.assert_array_equal(canon.hu, hu)
    np.testing.assert_allclose(canon.spacing, spacing, atol=1e-4)  # positions are written to 1e-5 mm
    np.testing.assert_allclose(canon.origin, origin, atol=1e-3)
    assert reo.is_identity == (name == "axial-HFS")
    np.testing.assert_array_equal(reo.to_native(canon.hu), native.hu)


def test_oblique_series_is_refused_with_its_orientation(tmp_path: Path) -> None:
    from builders import DZ, tilt_series

    tilt_series(write_series(tmp_path / "s", n=3, dz=DZ, shuffle=False), angle_deg=30)
    vol = load_series(tmp_path / "s")  # reading is fine: the affine is exact
    assert plane_name(vol.orientation) == "oblique"
    with pytest.raises(DicomSeriesError, match="oblique series .*reformat it axially"):
        orient.canonical(vol)


@pytest.mark.parametrize("bits", [12, 16])
def test_unsigned_pixels_with_an_overlay_bit_are_masked_to_bits_stored(tmp_path: Path, base: tuple,
                                                                       bits: int) -> None:
    hu, spacing, origin, _ = base
    write_oriented(tmp_path / "u", hu, spacing, origin, ORIENTATIONS["axial-HFS"], unsigned_bits=bits,
                   overlay_bit=bits < 16)
    np.testing.assert_array_equal(load_series(tmp_path / "u").hu, hu)


def _set(path: Path, keyword: str, value: str | None) -> None:
    """Write ``value`` into ``keyword`` as raw text, broken values included, or delete it. pydicom
    refuses to set some (text in a DS): those get a numeric placeholder of the same length that is
    then patched in the file's bytes."""
    ds = pydicom.dcmread(path)
    if value is None:
        del ds[keyword]
        ds.save_as(path, enforce_file_format=True)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the values we mean to break
            setattr(ds, keyword, value.split("\\") if "\\" in value else value)
            ds.save_as(path, enforce_file_format=True)
        return
    except ValueError:
        pass
    placeholder = "+" + "7" * (len(value) - 1)  # a valid number; no UID holds a "+"
    setattr(ds, keyword, placeholder)
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    assert raw.count(placeholder.encode()) == 1, (keyword, placeholder)
    path.write_bytes(raw.replace(placeholder.encode(), value.encode()))


BROKEN = {
    "PixelSpacing missing": ("PixelSpacing", None, "PixelSpacing is missing"),
    "PixelSpacing zero": ("PixelSpacing", "0\\0", r"PixelSpacing \[0\.0, 0\.0\] must be two positive"),
    "PixelSpacing NaN": ("PixelSpacing", "nan\\0.8", "PixelSpacing .* is not finite"),
    "PixelSpacing one value": ("PixelSpacing", "0.8", r"PixelSpacing has 1 values \[0\.8\], expected 2"),
    "PixelSpacing negative": ("PixelSpacing", "-0.7\\0.8", "PixelSpacing .* must be two positive"),
    "IOP five values": ("ImageOrientationPatient", "1\\0\\0\\0\\1", "ImageOrientationPatient has 5 values"),
    "IOP not unit": ("ImageOrientationPatient", "2\\0\\0\\0\\1\\0", "not two orthogonal unit vectors"),
    "IOP not orthogonal": ("ImageOrientationPatient", "1\\0\\0\\1\\0\\0", "not two orthogonal"),
    "IPP NaN": ("ImagePositionPatient", "0\\nan\\3", "ImagePositionPatient .* is not finite"),
    "IPP missing": ("ImagePositionPatient", None, "ImagePositionPatient is missing"),
    "intercept NaN": ("RescaleIntercept", "nan", "invalid RescaleIntercept nan"),
    "intercept infinite": ("RescaleIntercept", "inf", "invalid RescaleIntercept inf"),
    "intercept text": ("RescaleIntercept", "minus1024", "RescaleIntercept 'minus1024' is not numeric"),
    "slope zero": ("RescaleSlope", "0", "invalid RescaleSlope 0"),
    "modality PT": ("Modality", "PT", "Modality PT, not CT"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_geometry_or_intensity_tags_are_named_errors(tmp_path: Path, kind: str) -> None:
    keyword, value, message = BROKEN[kind]
    files = write_series(tmp_path / "s", n=4)
    for f in files if keyword == "Modality" else files[1:2]:
        _set(f, keyword, value)
    victim = re.escape(str(files[0] if keyword == "Modality" else files[1]))
    with pytest.raises(DicomSeriesError, match=rf"{victim}: .*{message}" if keyword != "Modality"
                       else message):
        load_series(tmp_path / "s")


@pytest.mark.parametrize(("keyword", "value"), [("InstanceNumber", "first"), ("SliceLocation", "n/a"),
                                                ("SliceThickness", "thin")])
def test_unused_tags_with_bad_values_are_ignored(tmp_path: Path, keyword: str, value: str) -> None:
    files = write_series(tmp_path / "s", n=4)
    _set(files[2], keyword, value)
    assert load_series(tmp_path / "s").shape == (4, 16, 16)  # positions decide the order


# ---- predict on every orientation -------------------------------------------------------------

def _ras_labels(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """The NIfTI labels as an array in RAS+ orientation (so every acquisition compares directly),
    and the RAS x (mm) of each index along its first axis (RAS x grows towards the patient's right)."""
    img = nib.as_closest_canonical(nib.load(out / predict.NIFTI_NAME))
    x = img.affine[0, 0] * np.arange(img.shape[0]) + img.affine[0, 3]
    return np.asarray(img.dataobj), x


def test_predict_gives_the_same_mask_in_the_world_for_every_orientation(tmp_path: Path,
                                                                        base: tuple) -> None:
    from builders import torch_logits, write_checkpoint

    hu, spacing, origin, _ = base
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=32)
    net, cfg = predict.load_checkpoint(ckpt)
    logits = torch_logits(net, cfg, load_series(write_oriented(
        tmp_path / "ref", hu, spacing, origin, ORIENTATIONS["axial-HFS"])[0].parent))
    p = 1 / (1 + math.exp(-float(np.median(logits))))  # neither an empty nor a full mask
    labels = {}
    for name, iop in ORIENTATIONS.items():
        write_oriented(tmp_path / name, hu, spacing, origin, iop)
        out = tmp_path / f"out-{name}"
        assert cli.main(["predict", str(tmp_path / name), "--out", str(out), "--checkpoint", str(ckpt),
                         "--threshold", str(p), "--no-postprocess"]) == 0
        labels[name], x = _ras_labels(out)
        stats = predict.json.loads((out / predict.STATS_NAME).read_text())
        assert stats["acquisition_plane"] == name.split("-")[0]
        assert stats["reoriented_for_inference"] == (name != "axial-HFS")
        # label 1 is the patient's right: larger RAS x than label 2, whatever the acquisition
        right, left = (x[np.nonzero(labels[name] == v)[0]].mean() for v in (1, 2))
        assert right > left, name
    reference = labels.pop("axial-HFS")
    assert 0 < np.count_nonzero(reference) < reference.size
    for name, lab in labels.items():
        np.testing.assert_array_equal(lab > 0, reference > 0, err_msg=name)  # the very same voxels
        # sides: the same up to ties of the touching-lung split on this untrained model's noisy mask
        assert np.mean(lab[reference > 0] == reference[reference > 0]) > 0.99, name


def test_predict_refuses_an_oblique_series_without_output(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from builders import write_checkpoint

    files = write_series(tmp_path / "s", n=3)
    for f in files:
        _set(f, "ImageOrientationPatient", "0.8660254\\0.5\\0\\-0.5\\0.8660254\\0")
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt")
    assert cli.main(["predict", str(tmp_path / "s"), "--out", str(tmp_path / "o"),
                     "--checkpoint", str(ckpt)]) == 1
    assert "oblique series" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
