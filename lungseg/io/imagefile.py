"""CT volumes from research image files: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and
MetaImage (``.mha``, ``.mhd``), read with SimpleITK into the same :class:`lungseg.io.dicom.Volume` a
DICOM series gives, so that ``predict`` treats both alike.

Geometry is SimpleITK's, which is DICOM's (LPS): the direction of the first two image axes gives the
ImageOrientationPatient, slices are put in ascending order along their normal (a file stored the other
way round, as RAS-oriented NIfTI often is, is reversed in memory), and :func:`mask_image` maps a mask
back onto the file's own grid and header, whatever its orientation. A sheared grid, a 2D or 4D image, a
vector (RGB) image, 8-bit or windowed intensities, a label map and values that cannot be HU are refused
with the file named; an oblique grid is refused by :mod:`lungseg.io.orient`, as for DICOM.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lungseg.io.dicom import Volume

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File names ``predict`` reads as an image file (anything else is a DICOM folder)."""
FORMS_TOL = 1e-4
"""Largest difference, relative to the voxel size, between a NIfTI header's qform and sform axes still
taken as the same orientation (the qform is a float32 quaternion: about 1e-7)."""
ORTHOGONAL_TOL = 1e-3
"""Largest |cos| between the slice axis and the in-plane axes, or deviation from the normal, still
taken as an orthogonal grid."""
HU_LIMITS = (-32768, 32767)
LABEL_MAP_VALUES = 16
AIR_ABOVE = -500.0
"""HU: when the lowest 1% of a chest CT's values (padding left out) lie above this, it holds no air."""
PADDING_BELOW = -1500.0
"""HU: values below this are padding outside the field of view (e.g. -2048, -3024), not air."""
"""An image with no more distinct values (sampled) is a label map, not a CT."""
SORT_KEY = "image file geometry (SimpleITK direction and origin)"
FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage",
           ".mhd": "metaimage"}
"""The format of each suffix, as ``batch``'s cohort table names it (``input``: dicom or one of these)."""


class ImageFileError(ValueError):
    """An image file that cannot be read as a CT volume; the message names the file."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a path whose name ends in one of :data:`SUFFIXES` (case-insensitive)."""
    return str(path).lower().endswith(SUFFIXES)


def format_of(path: str | os.PathLike[str]) -> str:
    """"nifti", "nrrd" or "metaimage" for an image file name; ValueError for any other name."""
    name = str(path).lower()
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise ValueError(f"{path}: not a {', '.join(SUFFIXES)} file")


def stem_of(path: str | os.PathLike[str]) -> str:
    """The file name without its image suffix (``ct.nii.gz`` → ``ct``)."""
    name = Path(path).name
    return name[: -len(next(s for s in SUFFIXES if name.lower().endswith(s)))]


def _read(path: Path):
    import SimpleITK as sitk

    if not path.is_file():
        raise ImageFileError(f"{path}: image file not found")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    if path.name.lower().endswith((".nrrd", ".nhdr")):
        _check_nrrd_space(path)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints to the terminal; we check ourselves
    with native_stderr() as said:
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as exc:  # SimpleITK's only error type: keep its last line, not the C++ trace
            error = exc
    # The readers' own diagnostics (MetaIO writes "data not read completely" to the C++ stream, and
    # ITK then reports a stale errno such as "No such file or directory") say more than the exception.
    last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    reason = " ".join(" ".join(said).split()) or last
    raise ImageFileError(f"{path}: not a readable NIfTI/NRRD/MetaImage file ({reason})") from None


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Capture what C/C++ code (ITK's readers) writes to file descriptor 2 while the block runs,
    instead of letting it reach the terminal between our own messages; the list receives its
    non-empty lines when the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln for ln in sink.read().decode("utf-8", "replace").splitlines() if ln.strip())


def _check_nifti(path: Path) -> None:
    """What ITK's NIfTI reader would change silently, refused first: a sheared affine (coerced to an
    orthogonal grid, moving every voxel) and NaN or infinite voxels (read as 0)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        m = np.asarray(img.affine, dtype=float)[:3, :3]
    except Exception as exc:  # nibabel's many header errors; the file is not read further
        raise ImageFileError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0:
        raise ImageFileError(f"{path}: no orientation in the NIfTI header (qform_code and sform_code are "
                             "both 0), so the patient's right and left cannot be told; convert the scan "
                             "again with its orientation (e.g. dcm2niix from the DICOM series)")
    _check_nifti_forms(path, img.header)
    try:  # every voxel the header promises must be there (ITK fills a cut-off file with zeros)
        data = np.asarray(img.dataobj.get_unscaled())
    except Exception as exc:  # nibabel's IOError/EOFError/zlib errors on a short or damaged file
        raise ImageFileError(f"{path}: truncated or damaged NIfTI file: the voxel data ends early "
                             f"({type(exc).__name__}: {exc})") from None
    cols = m / np.linalg.norm(m, axis=0)
    if not np.all(np.abs(cols.T @ cols - np.eye(3)) <= ORTHOGONAL_TOL):
        raise ImageFileError(f"{path}: the image axes are not orthogonal (sheared grid, e.g. a tilted "
                             "gantry); resample it to an orthogonal grid first")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise ImageFileError(f"{path}: NaN or infinite voxel values")


def _check_nifti_forms(path: Path, header) -> None:
    """Both of a NIfTI header's orientations set (qform and sform) but with different axes or voxel
    sizes: readers choose differently (nibabel the sform, ITK by its own rules), so right and left, or
    the size of every voxel, depend on the program that opens the file; refused."""
    if int(header["qform_code"]) == 0 or int(header["sform_code"]) == 0:
        return
    q = np.asarray(header.get_qform(), dtype=float)[:3, :3]
    s = np.asarray(header.get_sform(), dtype=float)[:3, :3]
    # The qform is stored as a float32 quaternion: compare to its precision, per axis (mm per voxel).
    if np.any(np.abs(q - s) > FORMS_TOL * np.linalg.norm(s, axis=0)):
        raise ImageFileError(f"{path}: the NIfTI header's two orientations disagree (qform and sform "
                             "give different axes or voxel sizes), so the patient's right and left "
                             "depend on the program reading it; make them equal (e.g. nibabel: "
                             "img.set_qform(img.get_sform())) or convert the scan again")


def _check_nrrd_space(path: Path) -> None:
    """An NRRD header without ``space`` (or ``space dimension``) and ``space directions`` has no
    patient orientation: ITK would assume one, and right and left could come out swapped."""
    with open(path, "rb") as fh:
        head = fh.read(65536).split(b"\n\n", 1)[0].decode("latin-1").lower()
    fields = {line.split(":", 1)[0].strip() for line in head.splitlines() if ":" in line}
    if not ({"space", "space dimension"} & fields and "space directions" in fields):
        raise ImageFileError(f"{path}: no patient orientation in the NRRD header (no 'space' and 'space "
                             "directions' fields), so the patient's right and left cannot be told; write "
                             "the scan with its orientation")


def _grid(path: Path, dimension: int, components: int, size: tuple[int, ...],
          direction: tuple[float, ...]) -> tuple[np.ndarray, bool]:
    """The (3, 3) direction matrix (columns: the i, j, k axes in LPS) and whether k runs against the
    slice normal; ImageFileError for a grid lungseg cannot take without resampling."""
    if dimension != 3 or components != 1:
        raise ImageFileError(f"{path}: a {dimension}D image of {components} component(s) per voxel; "
                             "lungseg reads one 3D CT volume of scalar voxels")
    if min(size) < 2:
        raise ImageFileError(f"{path}: size {size} is not a volume")
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    normal = np.cross(d[:, 0], d[:, 1])
    if (abs(d[:, 0] @ d[:, 1]) > ORTHOGONAL_TOL or abs(abs(d[:, 2] @ normal) - 1) > ORTHOGONAL_TOL
            or abs(np.linalg.norm(normal) - 1) > ORTHOGONAL_TOL):
        raise ImageFileError(f"{path}: the image axes are not orthogonal (sheared grid, e.g. a tilted "
                             "gantry); resample it to an orthogonal grid first")
    return d, bool(d[:, 2] @ normal < 0)


def _hu(path: Path, values: np.ndarray) -> np.ndarray:
    """Voxel values as int16 HU; refused when they are not finite or cannot be HU at all."""
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise ImageFileError(f"{path}: voxels of type {values.dtype} are not CT intensities")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise ImageFileError(f"{path}: NaN or infinite voxel values")
    if values.dtype.itemsize == 1:
        raise ImageFileError(f"{path}: 8-bit voxels ({values.dtype}): a display or windowed image, not a "
                             "CT in Hounsfield units")
    sample = values.ravel()[:: max(1, values.size // 200_000)]  # a label map shows in any sample
    if len(np.unique(sample)) <= LABEL_MAP_VALUES:
        raise ImageFileError(f"{path}: at most {LABEL_MAP_VALUES} distinct values: a label map or mask, "
                             "not a CT in Hounsfield units")
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0:
        raise ImageFileError(f"{path}: no voxel below 0 (values {lo:g} to {hi:g}); in HU the air in a chest "
                             "CT is about -1000: stored values without their rescale, or a windowed image?")
    if lo < HU_LIMITS[0] or hi > HU_LIMITS[1]:
        raise ImageFileError(f"{path}: values {lo:g} to {hi:g} exceed the int16 range of CT numbers; "
                             "is it a CT in Hounsfield units?")
    inside = sample[sample > PADDING_BELOW]  # padding outside the field of view is not air
    if lo < 0 and inside.size and np.percentile(inside, 1) > AIR_ABOVE:
        raise ImageFileError(f"{path}: no air in the image (the lowest 1% of values lie above "
                             f"{np.percentile(inside, 1):g}, values {lo:g} to {hi:g}); in HU the air "
                             "around a chest and in its lungs is -1000 to -800: values not in Hounsfield "
                             "units (another rescale, or not a CT)?")
    return np.rint(values).astype(np.int16) if values.dtype != np.int16 else values


def load_image(path: str | os.PathLike[str]) -> Volume:
    """The CT volume of one NIfTI/NRRD/MetaImage file: ``hu`` (z, y, x) int16 HU, z ascending along the
    slice normal, with the LPS geometry of the file (mm)."""
    import SimpleITK as sitk

    path = Path(path).absolute()
    image = _read(path)
    d, reverse = _grid(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize(),
                       image.GetDirection())
    hu = _hu(path, sitk.GetArrayFromImage(image))  # (k, j, i) = (slice, row, column); a copy: a view
    # would outlive the image it points into
    sx, sy, sz = image.GetSpacing()
    origin = np.asarray(image.GetOrigin(), dtype=float)
    nz = hu.shape[0]
    if reverse:  # ascending along the normal: the last stored slice comes first
        hu = hu[::-1]
        origin = origin + (nz - 1) * sz * d[:, 2]
    normal = np.cross(d[:, 0], d[:, 1])
    positions = float(origin @ normal) + sz * np.arange(nz)
    name = stem_of(path)
    return Volume(hu=np.ascontiguousarray(hu), spacing=(float(sz), float(sy), float(sx)),
                  origin=tuple(float(v) for v in origin), positions=positions,
                  files=(str(path),) * nz, case_id=name, series_uid="",
                  orientation=tuple(float(v) for v in d[:, :2].T.ravel()), sort_key=SORT_KEY)


def write_mask_like(mask: np.ndarray, source: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write a (z, y, x) uint8 mask of :func:`load_image`'s volume of ``source`` as an image file ``out``
    (format from its suffix) on the source file's own grid: its voxel order, origin, spacing and
    direction."""
    import SimpleITK as sitk

    source = Path(source)
    header = sitk.ImageFileReader()  # the header only: the voxels were read once, by load_image
    header.SetFileName(str(source))
    with native_stderr():
        header.ReadImageInformation()
    _, reverse = _grid(source, header.GetDimension(), header.GetNumberOfComponents(), header.GetSize(),
                       header.GetDirection())
    stored = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8)[::-1] if reverse else mask, dtype=np.uint8)
    if stored.shape[::-1] != tuple(header.GetSize()):
        raise ValueError(f"mask shape {stored.shape} does not match {source}")
    out_image = sitk.GetImageFromArray(stored)
    out_image.SetOrigin(header.GetOrigin())
    out_image.SetSpacing(header.GetSpacing())
    out_image.SetDirection(header.GetDirection())
    sitk.WriteImage(out_image, str(out), useCompression=True)
    return Path(out)


MASK_MAX_LABELS = 64
"""A mask file holds at most this many distinct values (0 and labels); more is an image, not a mask."""
GRID_TOL = 1e-3
"""Tolerance (in voxels) when matching a mask's grid to the CT's."""


def load_mask_on(path: str | os.PathLike[str], volume: Volume) -> np.ndarray:
    """The labels of the mask file ``path`` (NIfTI/NRRD/MetaImage) as a (z, y, x) uint8 array on
    ``volume``'s grid (any volume: DICOM series or image file). The mask must lie on the same voxels
    (same size, spacing, origin; axes may be stored in another order or direction): no resampling.
    ImageFileError otherwise, naming the file and the mismatch."""
    import SimpleITK as sitk

    path = Path(path).absolute()
    image = _read(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageFileError(f"{path}: a {image.GetDimension()}D image of "
                             f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel; a mask is "
                             "one 3D label volume")
    values = sitk.GetArrayFromImage(image)  # (k, j, i)
    labels = np.unique(values[:: max(1, values.shape[0] // 64)])
    if (np.issubdtype(values.dtype, np.floating) and not np.all(labels == np.round(labels))) \
            or len(labels) > MASK_MAX_LABELS or labels.min() < 0 or labels.max() > 255:
        raise ImageFileError(f"{path}: voxel values are not labels (0 = background, small positive "
                             "integers = structures): is it an image rather than a mask?")
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    mask_to_lps = np.eye(4)
    mask_to_lps[:3, :3] = d * np.asarray(image.GetSpacing(), dtype=float)
    mask_to_lps[:3, 3] = image.GetOrigin()
    from lungseg.io.orient import voxel_to_lps

    m = np.linalg.inv(voxel_to_lps(volume)) @ mask_to_lps  # mask (i, j, k) -> CT (i, j, k)
    rot, shift = m[:3, :3], m[:3, 3]
    target = volume.shape[::-1]  # (x, y, z) sizes of the CT
    order, signs = np.argmax(np.abs(rot), axis=0), np.sign(rot[np.argmax(np.abs(rot), axis=0), range(3)])
    expected = np.zeros((3, 3))
    expected[order, range(3)] = signs
    ijk = values.transpose(2, 1, 0)
    if sorted(order) != [0, 1, 2] or not np.allclose(rot, expected, atol=GRID_TOL):
        raise ImageFileError(f"{path}: the mask's voxels are not the CT's (another spacing or a rotated "
                             "grid); resample it onto the CT first")
    out = np.moveaxis(ijk, range(3), order)
    for axis in range(3):
        mask_axis = int(np.flatnonzero(order == axis)[0])
        start = 0.0 if signs[mask_axis] > 0 else target[axis] - 1.0
        if abs(shift[axis] - start) > GRID_TOL or out.shape[axis] != target[axis]:
            raise ImageFileError(f"{path}: the mask's grid ({values.shape[::-1]} voxels, origin "
                                 f"{tuple(round(v, 2) for v in image.GetOrigin())}) is not the CT's "
                                 f"({tuple(target)} voxels, origin "
                                 f"{tuple(round(v, 2) for v in volume.origin)})")
        if signs[mask_axis] < 0:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out.transpose(2, 1, 0), dtype=np.uint8)
