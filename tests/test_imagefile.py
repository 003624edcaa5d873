"""NIfTI, NRRD and MetaImage input: the same volume as the DICOM series it was made from, in any storage
order; masks mapped back onto the file's own grid; bad files named, never a traceback."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from builders import REAL_CASE, image_of, run_cli, volume_of, write_checkpoint

from lungseg.inference import postprocess, predict, sides
from lungseg.io import dicom, imagefile, masks, orient

SLAB = slice(60, 72)  # 12 slices of Case_000 through both lungs: small files, real anatomy


@pytest.fixture(scope="module")
def slab() -> dicom.Volume:
    if not REAL_CASE.is_dir():
        pytest.skip(f"needs {REAL_CASE}")
    v = dicom.load_series(REAL_CASE)
    normal = orient.axis_directions(v)[0]
    first = np.asarray(v.origin) + (SLAB.start * v.spacing[0]) * normal
    return replace(v, hu=np.asarray(v.hu[SLAB]), positions=v.positions[SLAB], origin=tuple(first),
                   files=v.files[SLAB])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("order", ["as is", "reversed", "mirrored"])
def test_a_file_gives_the_dicom_series_volume(tmp_path: Path, slab: dicom.Volume, suffix: str,
                                              order: str) -> None:
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image_of(slab, order), str(path))
    vol = imagefile.load_image(path)
    (canon_file, _), (canon_dicom, _) = orient.canonical(vol), orient.canonical(slab)
    np.testing.assert_array_equal(canon_file.hu, canon_dicom.hu)  # same voxels, same place
    np.testing.assert_allclose(orient.voxel_to_lps(canon_file), orient.voxel_to_lps(canon_dicom), atol=1e-3)
    np.testing.assert_allclose(canon_file.positions, canon_dicom.positions, atol=1e-3)
    assert vol.hu.dtype == np.int16 and vol.case_id == "ct"


@pytest.mark.parametrize("order", ["as is", "reversed", "mirrored"])
def test_a_mask_goes_back_onto_the_files_own_grid(tmp_path: Path, slab: dicom.Volume, order: str) -> None:
    src = tmp_path / "ct.nrrd"
    sitk.WriteImage(image_of(slab, order), str(src))
    vol = imagefile.load_image(src)
    mask = (np.asarray(vol.hu) < -400).astype(np.uint8)  # any mask tied to the anatomy
    out = imagefile.write_mask_like(mask, src, tmp_path / "m.nrrd")
    written, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(src))
    assert written.GetDirection() == source.GetDirection() and written.GetOrigin() == source.GetOrigin()
    assert written.GetSpacing() == source.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(source) < -400)


def _bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.nii.gz"
    if kind == "corrupt":
        path.write_bytes(b"\x1f\x8b not really gzip")
    elif kind == "2d":
        sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(path))
    elif kind == "4d":
        sitk.WriteImage(sitk.Image([4, 4, 4, 2], sitk.sitkInt16), str(path))
    elif kind == "sheared":  # a tilted gantry: the slice axis leans in y
        affine = np.array([[-1, 0, 0, 0], [0, -1, 0.5, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]], dtype=float)
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.int16), affine), str(path))
    elif kind == "sheared_nrrd":
        path = tmp_path / "sheared.nrrd"
        img = sitk.Image(8, 8, 4, sitk.sitkInt16)
        img.SetDirection((1, 0, 0, 0, 1, 0.3, 0, 0, 0.954))
        sitk.WriteImage(img, str(path))
    elif kind == "nan":  # ITK's NIfTI reader would read NaN as 0
        data = np.zeros((8, 8, 4), dtype=np.float32)
        data[3, 3, 1] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    elif kind == "nan_nrrd":
        path = tmp_path / "nan.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, dtype=np.float32)), str(path))
    elif kind == "huge":
        img = sitk.GetImageFromArray(np.linspace(-1000, 1e6, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8))
        sitk.WriteImage(img, str(path))
    elif kind in ("truncated", "truncated_nii"):  # ITK would fill the missing half with 0 HU
        path = tmp_path / ("truncated.nii.gz" if kind == "truncated" else "truncated.nii")
        data = np.random.default_rng(1).integers(-1000, 400, (32, 32, 16)).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 2.5, 1.0])), str(path))
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "no_orientation":  # both codes 0: nothing says which side is the patient's right
        nib.save(nib.Nifti1Image(np.random.default_rng(2).integers(-1000, 400, (8, 8, 4)).astype(np.int16),
                                 None), str(path))
        header = nib.load(str(path)).header
        assert int(header["sform_code"]) == 0 == int(header["qform_code"])
    elif kind == "forms_disagree":  # qform says one side is the patient's right, sform the other
        img = nib.Nifti1Image(np.random.default_rng(2).integers(-1000, 400, (8, 8, 4)).astype(np.int16), None)
        affine = np.diag([-0.8, -0.8, 2.5, 1.0])
        img.set_qform(affine, code=1)
        img.set_sform(np.diag([0.8, -0.8, 2.5, 1.0]), code=1)
        nib.save(img, str(path))
    elif kind == "nrrd_no_space":  # an NRRD without 'space': ITK would assume an orientation
        path = tmp_path / "nospace.nhdr"
        (tmp_path / "nospace.raw").write_bytes(np.full(8 * 8 * 4, -1000, dtype="<i2").tobytes())
        path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 4\nspacings: 1 1 2.5\n"
                        "endian: little\nencoding: raw\ndata file: nospace.raw\n\n")
    elif kind == "no_air":  # an MR-like range whose noise dips a little below 0
        rng = np.random.default_rng(3)
        data = (rng.integers(0, 4000, (4, 16, 16)) - rng.integers(0, 20, (4, 16, 16))).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    elif kind in ("uint8", "labels", "positive", "rgb"):
        rng = np.random.default_rng(0)
        data = {"uint8": rng.integers(0, 255, (4, 8, 8)).astype(np.uint8),
                "labels": rng.integers(0, 3, (4, 8, 8)).astype(np.int16),
                "positive": rng.integers(0, 4095, (4, 8, 8)).astype(np.int16),
                "rgb": rng.integers(0, 255, (4, 8, 8, 3)).astype(np.uint8)}[kind]
        sitk.WriteImage(sitk.GetImageFromArray(data, isVector=kind == "rgb"), str(path))
    return path


@pytest.mark.parametrize("kind, message", [("corrupt", "not a readable"), ("2d", "2D image"),
                                           ("4d", "4D image"), ("sheared", "not orthogonal"),
                                           ("sheared_nrrd", "not orthogonal"),
                                           ("nan", "NaN"), ("nan_nrrd", "NaN"), ("huge", "int16 range"),
                                           ("uint8", "8-bit"), ("labels", "label map"),
                                           ("positive", "no voxel below 0"), ("rgb", "3 component"),
                                           ("truncated", "truncated"), ("truncated_nii", "truncated"),
                                           ("no_orientation", "right and left cannot be told"),
                                           ("forms_disagree", "two orientations disagree"),
                                           ("nrrd_no_space", "right and left cannot be told"),
                                           ("no_air", "no air")])
def test_a_bad_file_is_named_with_its_problem(tmp_path: Path, kind: str, message: str) -> None:
    path = _bad(tmp_path, kind)
    with pytest.raises(imagefile.ImageFileError, match=message) as err:
        imagefile.load_image(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_a_cut_off_file_is_named_with_the_reader_s_own_reason(tmp_path: Path, suffix: str, capfd) -> None:
    # ITK's MetaImage reader writes its diagnosis to the C++ error stream and then raises with a stale
    # errno ("No such file or directory"): the message must carry the diagnosis, the terminal nothing.
    path = tmp_path / f"cut{suffix}"
    data = np.random.default_rng(4).integers(-1000, 400, (16, 32, 32)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    capfd.readouterr()
    with pytest.raises(imagefile.ImageFileError) as err:
        imagefile.load_image(path)
    message = str(err.value)
    assert str(path) in message and "No such file" not in message
    assert any(w in message for w in ("not read completely", "fread got only"))
    assert capfd.readouterr().err == ""


def test_predict_refuses_a_volume_too_small_to_be_a_chest_ct(tmp_path: Path, capsys) -> None:
    src = tmp_path / "tiny.nii.gz"  # 4x4x4 voxels of CT-like values: once "segmented", with QC failing
    data = np.random.default_rng(5).integers(-1000, 400, (4, 4, 4)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 2.5, 1.0])), str(src))
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=64)
    assert run_cli("predict", src, "--out", tmp_path / "out", "--checkpoint", ckpt) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "4x4 pixels" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_predict_on_a_file_and_on_its_dicom_series_agree(tmp_path: Path, slab: dicom.Volume, capsys) -> None:
    src = tmp_path / "in" / "ct.mha"
    src.parent.mkdir()
    sitk.WriteImage(image_of(slab, "reversed"), str(src))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=64)
    assert run_cli("predict", src, "--out", tmp_path / "out", "--checkpoint", ckpt, "--threshold", "0.5") == 0
    stats = json.loads((tmp_path / "out" / predict.STATS_NAME).read_text())
    assert stats["outputs"] == [predict.NIFTI_NAME, predict.OVERVIEW_NAME, "lung_mask.mha",
                                predict.STATS_NAME]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == sorted(
        stats["outputs"])
    # The labels in the file (stored head to foot) are those of the DICOM slab, predicted in process.
    on_file = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "lung_mask.mha")))[::-1]
    _, reo = orient.canonical(imagefile.load_image(src))
    canon, _ = orient.canonical(slab)
    threshold, clean = predict.inference_settings(ckpt, 0.5, None)
    raw = postprocess.binarize(predict.load_network(ckpt, "cpu").logits(canon), threshold)
    expected, _ = sides.split_lungs_with_info(postprocess.clean(raw) if clean else raw, canon)
    np.testing.assert_array_equal(reo.to_canonical(on_file), expected)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the input is only read
    assert run_cli("predict", _bad(tmp_path, "corrupt"), "--out", tmp_path / "o2", "--checkpoint", ckpt) != 0
    err = capsys.readouterr().err
    assert "corrupt.nii.gz" in err and "Traceback" not in err


def test_predict_writes_a_nifti_inputs_mask_on_its_own_voxel_grid(tmp_path: Path, slab: dicom.Volume) -> None:
    """A NIfTI stored the other way round (as RAS files often are): lung_mask.nii.gz has the input's
    affine and voxel order, so ``ct[mask > 0]`` indexes the lungs, as for the same CT stored as is."""
    ckpt = write_checkpoint(tmp_path / "run" / "model.pt", image_size=64)
    masks_by_order = {}
    for order in ("as is", "reversed"):
        src = tmp_path / order.replace(" ", "_") / "ct.nii.gz"
        src.parent.mkdir()
        sitk.WriteImage(image_of(slab, order), str(src))
        out = src.parent / "out"
        assert run_cli("predict", src, "--out", out, "--checkpoint", ckpt, "--threshold", "0.5") == 0
        ct, mask = nib.load(str(src)), nib.load(str(out / predict.NIFTI_NAME))
        np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-4)
        assert mask.shape == ct.shape
        stored = np.asarray(mask.dataobj)
        masks_by_order[order] = stored[:, :, ::-1] if order == "reversed" else stored
    np.testing.assert_array_equal(masks_by_order["as is"], masks_by_order["reversed"])


def test_a_plain_axial_volume_round_trips(tmp_path: Path) -> None:
    """Known answer on a phantom: the file written from a volume reads back as that volume."""
    hu = np.arange(4 * 6 * 6, dtype=np.int16).reshape(4, 6, 6) - 1000
    vol = volume_of(hu, (2.5, 0.8, 0.8))
    path = tmp_path / "p.nii.gz"
    sitk.WriteImage(image_of(vol), str(path))
    back = imagefile.load_image(path)
    np.testing.assert_array_equal(back.hu, hu)
    assert back.spacing == pytest.approx(vol.spacing) and back.orientation == pytest.approx(vol.orientation)
    np.testing.assert_allclose(back.positions, vol.positions, atol=1e-6)


def _maskimage_of(mask: np.ndarray, volume: dicom.Volume, order: str) -> sitk.Image:
    """A mask on ``volume``'s grid, stored as :func:`_image` stores the CT in that ``order``."""
    img = image_of(replace(volume, hu=mask.astype(np.int16)), order)
    return sitk.Cast(img, sitk.sitkUInt8)


@pytest.fixture(scope="module")
def slab_truth(slab: dicom.Volume) -> np.ndarray:
    full = masks.load_mask(REAL_CASE.parents[1] / "Segmentations" / "Case_000_seg.npz")
    return np.asarray(full[SLAB]).astype(np.uint8)


@pytest.mark.parametrize("order", ["as is", "reversed", "mirrored"])
def test_a_mask_file_is_read_onto_the_ct_grid(tmp_path: Path, slab: dicom.Volume, slab_truth: np.ndarray,
                                              order: str) -> None:
    """Whatever order the file stores its voxels in, the labels land on the DICOM series' voxels."""
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(_maskimage_of(slab_truth, slab, order), str(path))
    np.testing.assert_array_equal(imagefile.load_mask_on(path, slab), slab_truth)


def test_a_mask_on_another_grid_is_refused(tmp_path: Path, slab: dicom.Volume,
                                          slab_truth: np.ndarray) -> None:
    shifted = _maskimage_of(slab_truth, slab, "as is")
    step = (0.0, 0.0, slab.spacing[0])
    shifted.SetOrigin(tuple(v + s for v, s in zip(shifted.GetOrigin(), step, strict=True)))
    coarse = _maskimage_of(slab_truth[:, ::2, ::2], replace(slab, hu=np.asarray(slab.hu)[:, ::2, ::2],
                                                          spacing=(slab.spacing[0], slab.spacing[1] * 2,
                                                                   slab.spacing[2] * 2)), "as is")
    for name, img in (("shifted.nii.gz", shifted), ("coarse.nrrd", coarse)):
        sitk.WriteImage(img, str(tmp_path / name))
        with pytest.raises(imagefile.ImageFileError, match=name):
            imagefile.load_mask_on(tmp_path / name, slab)
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(image_of(slab), str(ct))
    with pytest.raises(imagefile.ImageFileError, match="not labels"):
        imagefile.load_mask_on(ct, slab)  # an image given as the mask


def test_qc_judges_a_mask_made_elsewhere(tmp_path: Path, slab: dicom.Volume, slab_truth: np.ndarray,
                                         capsys) -> None:
    """Known answer: the true lungs of a 12-slice slab run through the top and bottom slices, so QC
    says the scan cuts the lungs; --fail-on-qc review turns that into exit 3, and the JSON says why."""
    ct, mask = tmp_path / "ct.mha", tmp_path / "lungs.nii.gz"
    sitk.WriteImage(image_of(slab, "reversed"), str(ct))
    sitk.WriteImage(_maskimage_of(slab_truth, slab, "mirrored"), str(mask))
    assert run_cli("qc", ct, mask, "--json", tmp_path / "qc.json", "--fail-on-qc", "review") == 3
    record = json.loads((tmp_path / "qc.json").read_text())
    assert record["status"] in ("review", "fail") and {"cut_top", "cut_bottom"} & set(record["checks"])
    assert record["right_lung_ml"] > 0 and record["left_lung_ml"] > 0
    assert record["scores"]["uncertain_share"] is None and "flip_dice" not in record["scores"]
    assert "QC:" in capsys.readouterr().out
    assert run_cli("qc", ct, ct) == 1  # the CT given as the mask: one line, no traceback
    err = capsys.readouterr().err
    assert "ct.mha" in err and "not labels" in err and "Traceback" not in err
