"""Builders shared by the tests (fixtures in conftest.py wrap them): volumes and cases from arrays,
tiny checkpoints, the command line in-process, where the real fixtures live, identifiers planted
in DICOM files, and series rewritten as oblique. No test module imports another."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from synthetic import DEFAULT_Z0

from lungseg import cli, paths
from lungseg.inference import predict
from lungseg.io import cache, deid_profile, dicom, orient
from lungseg.network import model
from lungseg.train import loop

TINY_CHANNELS = 4
REAL_CASE = paths.ROOT / "data" / "Images" / "Case_000"
REFERENCE_WEIGHTS = paths.ROOT.parent / "shared" / "models" / "SimpleUNet_v3.pt"


def volume_of(hu: np.ndarray, spacing: tuple[float, float, float] = (3.0, 1.0, 1.0),
              case_id: str = "Case_X") -> dicom.Volume:
    """An axial, head-first (z, y, x) HU volume with slices ``spacing[0]`` mm apart from z = 0."""
    n = hu.shape[0]
    return dicom.Volume(hu=hu, spacing=spacing, origin=(0.0, 0.0, 0.0),
                        positions=np.arange(n, dtype=float) * spacing[0],
                        files=tuple(f"f{i}" for i in range(n)), case_id=case_id, series_uid="1.2",
                        orientation=(1, 0, 0, 0, 1, 0), sort_key="ImagePositionPatient")


def case_of(hu: np.ndarray, mask: np.ndarray | None = None,
            spacing: tuple[float, float, float] = (3.0, 1.0, 1.0), case_id: str = "Case_X") -> cache.Case:
    """A :class:`lungseg.io.cache.Case` of ``hu`` and ``mask`` (empty when None)."""
    return cache.Case(volume_of(hu, spacing, case_id),
                      np.zeros(hu.shape, dtype=bool) if mask is None else mask)


def write_checkpoint(path: Path, image_size: int = 16, seed: int = 0) -> Path:
    """An untrained UNet saved as ``train.fit`` saves ``model.pt``."""
    torch.manual_seed(seed)
    net = model.UNet(base_channels=TINY_CHANNELS).eval()
    cfg = loop.TrainConfig(cases=["Case_900"], image_size=image_size, split="cases",
                            base_channels=TINY_CHANNELS, epochs=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "history": {"train_loss": [1.0]},
                "config": cfg.to_dict()}, path)
    return path


def run_cli(*args: str | os.PathLike[str]) -> int:
    """``python -m lungseg ARGS`` in this process; the exit status."""
    return cli.main([str(a) for a in args])


SECRET = "Zebedee"  # planted wherever an identifier could hide; must vanish from every output byte

ISSUE_ATTRIBUTES = ("ImageComments", "StudyDescription", "SeriesDescription", "PhysiciansOfRecord",
                    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "InstitutionAddress",
                    "CurrentPatientLocation", "AdmissionID", "MedicalAlerts", "Allergies",
                    "PerformingPhysicianName", "OperatorsName", "ProtocolName", "RequestingPhysician",
                    "AdditionalPatientHistory", "PatientComments")

DZ = 2.5


def value_for(vr: str) -> object:
    """A non-empty value of ``vr`` that carries :data:`SECRET` where the VR can hold text."""
    text = {"AE": "ZEBEDEE", "CS": "ZEBEDEE", "SH": SECRET, "LO": SECRET, "LT": SECRET, "ST": SECRET,
            "UT": SECRET, "UC": SECRET, "PN": f"{SECRET}^Jo", "UR": f"http://{SECRET}.org", "AS": "042Y",
            "DA": "20010203", "TM": "101010", "DT": "20010203101010", "DS": "1.5", "IS": "7",
            "UI": "1.2.3.4.5"}
    if vr in text:
        return text[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 1
    if vr in ("FL", "FD"):
        return 1.5
    if vr == "AT":
        return Tag(0x0010, 0x0010)
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"{SECRET}^Jo"
        return Sequence([item])
    return SECRET.encode() + b"\0"  # OB, OW, UN, ...


def table_dataset() -> Dataset:
    """A data set holding every exact row of the table, each with a value."""
    ds = Dataset()
    for tag in deid_profile.TABLE:
        try:
            vr = pydicom.datadict.dictionary_VR(tag).split(" ")[0]
        except KeyError:  # rows newer than pydicom's dictionary
            vr = "LO"
        ds.add_new(tag, vr, value_for(vr))
    return ds


def plant_secret(path: Path) -> None:
    """Put SECRET into free text, staff fields and nested sequences of one file."""
    ds = pydicom.dcmread(path)
    for keyword in ISSUE_ATTRIBUTES:
        vr = pydicom.datadict.dictionary_VR(keyword)
        setattr(ds, keyword, value_for(vr) if vr != "LO" else f"{SECRET} ward")
    ds.PatientTelecomInformation = f"{SECRET}@example.org"
    person = Dataset()
    person.PatientName, person.PatientID = f"{SECRET}^Jo", "MRN-77-31"
    modified = Dataset()
    modified.ModifiedAttributesSequence = Sequence([person])
    modified.ModifyingSystem = SECRET
    ds.OriginalAttributesSequence = Sequence([modified])
    ds.RequestAttributesSequence = Sequence([person])
    ds.ReferencedPatientSequence = Sequence([person])
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ref.ReferencedFrameNumber = "1"
    ref.PatientName = f"{SECRET}^Jo"  # not allowed inside a kept reference either
    ds.ReferencedImageSequence = Sequence([ref])
    ds.ConvolutionKernel = f"B31f {SECRET}"  # a kept attribute quoting the patient's name
    ds.PatientName = f"{SECRET}^Jo"
    ds.save_as(path, enforce_file_format=True)


def torch_logits(net: model.UNet, cfg, volume: dicom.Volume) -> np.ndarray:
    """Logits (z, y, x) of a volume by PyTorch (the path a checkpoint's ``--runtime torch`` takes)."""
    from lungseg.inference import forward

    return forward.run_logits(net, cfg, volume.hu, "cpu", runtime="torch", spacing=volume.spacing[1:])


def median_threshold(series: Path, ckpt: Path) -> tuple[float, np.ndarray]:
    """A probability between the two middle logits (so the mask is neither empty nor full), and
    the logits (z, y, x)."""
    net, cfg = predict.load_checkpoint(ckpt)
    logits = torch_logits(net, cfg, dicom.load_series(series))
    values = np.unique(logits)
    mid = len(values) // 2
    t = float(values[mid - 1] + values[mid]) / 2
    return 1.0 / (1.0 + math.exp(-t)), logits


def tilt_series(files: list[Path], angle_deg: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite a series (paths in slice-index order) as oblique: columns tilted about x, slices
    along the new normal. Returns the row and column cosines."""
    a = math.radians(angle_deg)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(a), -math.sin(a)])
    normal = np.cross(row, col)
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [*row.round(6), *col.round(6)]
        ds.ImagePositionPatient = list((np.array([-100.0, -90.0, 0.0])
                                        + (DEFAULT_Z0 + i * DZ) * normal).round(6))
        ds.save_as(f, enforce_file_format=True)
    return row, col


def case_dir(case_id: str) -> Path:
    """The case's DICOM folder; skips the calling test when the data or the case is absent."""
    try:
        data = paths.data_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc).splitlines()[0] + " (see ../shared/data/lctsc12/unpack.sh)")
    folder = paths.images_dir(data, case_id)
    if not folder.is_dir() or not paths.mask_file(data, case_id).is_file():
        pytest.skip(f"{case_id} is not unpacked in {data}")
    return folder


def image_of(volume: dicom.Volume, order: str = "as is") -> sitk.Image:
    """``volume`` as a SimpleITK image with its LPS geometry; ``order`` "reversed": slices stored
    head to foot with the slice axis pointing down (RAS-converted NIfTI often is); "mirrored": columns
    stored from the patient's left, the first axis pointing right."""
    d = orient.axis_directions(volume)[::-1].T.copy()  # columns: directions of i (x), j (y), k (z)
    hu = np.asarray(volume.hu)
    origin = np.asarray(volume.origin, dtype=float)
    dz, _, dx = volume.spacing
    if order == "reversed":
        hu, origin, d[:, 2] = hu[::-1], origin + (hu.shape[0] - 1) * dz * d[:, 2], -d[:, 2]
    if order == "mirrored":
        hu, origin, d[:, 0] = hu[:, :, ::-1], origin + (hu.shape[2] - 1) * dx * d[:, 0], -d[:, 0]
    img = sitk.GetImageFromArray(np.ascontiguousarray(hu))
    img.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection(tuple(d.ravel()))
    return img
