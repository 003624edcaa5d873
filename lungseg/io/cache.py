"""A disk cache of converted cases, so training and evaluation never parse DICOM again.

Each case is stored as ``hu.npy`` (int16/float32, z y x), ``mask.npy`` (uint8) and ``meta.json`` in
``cache_dir()/Case_XXX/KEY/``, and loaded memory-mapped. KEY hashes the name, size and mtime of every
source file plus the source of the conversion code, so a changed file or a changed reader
invalidates the entry. The cache never lives under the (read-only) data directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg import paths
from lungseg.io import dicom, masks, orient
from lungseg.progress import bar as progress_bar

_CODE = (Path(dicom.__file__), Path(orient.__file__), Path(__file__))


@dataclass(frozen=True)
class Case:
    """One case: its volume (``hu`` memory-mapped, z y x, HU) and its lung mask (z y x, bool)."""

    volume: dicom.Volume
    mask: np.ndarray

    @property
    def case_id(self) -> str:
        return self.volume.case_id


def case_key(image_dir: Path, mask_path: Path) -> str:
    """Hash of the DICOM files' (name, size, mtime), the mask's bytes and the conversion code: the
    cache entry's name (and, through the runs' data keys, part of every run key)."""
    h = hashlib.sha256()
    for code in _CODE:
        h.update(code.read_bytes())
    for p in sorted(p for p in image_dir.iterdir() if p.is_file()):
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    # The mask by its bytes (half a MB), not its mtime: the data's unpack.sh copies every mask anew
    # on each call (./run_all.sh calls it), which must not make every trained run stale.
    h.update(f"{mask_path.name}\0".encode() + hashlib.sha256(mask_path.read_bytes()).digest())
    return h.hexdigest()[:16]


def content_key(case_id: str, data: str | os.PathLike[str] | None = None) -> str:
    """The case's data by content (its image files' names and sizes, its mask's bytes), not by
    modification times: a fresh unpack of the same files keeps the key. What cached results of a
    case (the QC table's rows, a notebook's last execution) are keyed by."""
    root = paths.data_dir(data)
    h = hashlib.sha256()
    for f in sorted(p for p in paths.images_dir(root, case_id).iterdir() if p.is_file()):
        h.update(f"{f.name}\0{f.stat().st_size}\n".encode())
    h.update(paths.mask_file(root, case_id).read_bytes())
    return h.hexdigest()[:16]


def volume_meta(volume: dicom.Volume) -> dict:
    """The geometry record of a volume (JSON-able; file names without folders)."""
    return {
        "case_id": volume.case_id,
        "series_uid": volume.series_uid,
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "positions": volume.positions.tolist(),
        "files": [Path(f).name for f in volume.files],
        "orientation": list(volume.orientation),
        "sort_key": volume.sort_key,
        "slice_thickness": volume.slice_thickness,
    }


def _write(entry: Path, volume: dicom.Volume, mask: np.ndarray) -> None:
    """Write an entry into a temporary folder and rename it, so a killed run leaves no half entry.

    Safe when several processes (torchrun) convert the same case at once: the first rename wins,
    the others discard their copy, and only finished entries of other keys are removed.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        np.save(tmp / "hu.npy", volume.hu)
        np.save(tmp / "mask.npy", mask.astype(np.uint8))
        (tmp / "meta.json").write_text(json.dumps(volume_meta(volume), indent=1))
        for old in entry.parent.iterdir():  # finished entries of older keys are stale
            if old.is_dir() and old != entry and not old.name.startswith(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process has just written the same entry
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read(entry: Path, image_dir: Path) -> Case:
    meta = json.loads((entry / "meta.json").read_text())
    hu = np.load(entry / "hu.npy", mmap_mode="r")
    mask = np.load(entry / "mask.npy", mmap_mode="r").view(bool)
    volume = dicom.Volume(
        hu=hu,
        spacing=tuple(meta["spacing"]),
        origin=tuple(meta["origin"]),
        positions=np.asarray(meta["positions"]),
        files=tuple(str(image_dir / f) for f in meta["files"]),
        case_id=meta["case_id"],
        series_uid=meta["series_uid"],
        orientation=tuple(meta["orientation"]),
        sort_key=meta["sort_key"],
        slice_thickness=meta["slice_thickness"],
    )
    return Case(volume, mask)


def _entry(case_id: str, image_dir: Path, mask_path: Path) -> Path:
    """The cache folder of a case whose files are ``image_dir`` and ``mask_path``."""
    return paths.cache_dir() / case_id / case_key(image_dir, mask_path)


def is_cached(case_id: str, data: str | os.PathLike[str] | None = None) -> bool:
    """True when ``case_id``'s files exist and their conversion is complete in the cache (then
    :func:`load_case` only reads it)."""
    root = paths.data_dir(data)
    image_dir, mask_path = paths.images_dir(root, case_id), paths.mask_file(root, case_id)
    return (image_dir.is_dir() and mask_path.is_file()
            and (_entry(case_id, image_dir, mask_path) / "meta.json").is_file())


def load_case(case_id: str, data: str | os.PathLike[str] | None = None, *,
              refresh: bool = False) -> Case:
    """Volume and mask of ``case_id`` from the cache, converting from DICOM on a miss.

    Both are in the canonical axial orientation (:func:`lungseg.io.orient.canonical`; the LCTSC cases
    already are), so every case reaches training and evaluation the same way up.

    ``data`` is the data directory (see :func:`paths.data_dir`). ``refresh`` forces a reconversion.
    """
    root = paths.data_dir(data)
    image_dir, mask_path = paths.images_dir(root, case_id), paths.mask_file(root, case_id)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"no DICOM folder for {case_id}: {image_dir}")
    if not mask_path.is_file():
        raise FileNotFoundError(f"no mask for {case_id}: {mask_path} "
                                "(expected DATA/Segmentations/Case_XXX_seg.npz)")
    if paths.is_within(paths.cache_dir(), root):
        raise ValueError(f"the cache {paths.cache_dir()} must not be inside the data directory "
                         f"{root}; set ${paths.CACHE_ENV} elsewhere")
    entry = _entry(case_id, image_dir, mask_path)
    if refresh or not (entry / "meta.json").is_file():
        native = dicom.load_series(image_dir)
        mask = masks.load_mask(mask_path, native)  # masks follow the sorted acquisition grid
        volume, reo = orient.canonical(native)  # training and evaluation see one orientation
        _write(entry, volume, reo.to_canonical(mask))
    return _read(entry, image_dir)


def load_cases(case_ids: list[str], data: str | os.PathLike[str] | None = None) -> list[Case]:
    """:func:`load_case` for each id, with a progress bar."""
    return [load_case(c, data) for c in progress_bar(case_ids, desc="load", unit="case")]


def resolve_cases(cases: str, data: str | os.PathLike[str] | None = None) -> list[str]:
    """Case ids from a notebook parameter: ``"all"`` or a comma-separated list (``"Case_000,..."``)."""
    available = paths.list_cases(paths.data_dir(data))
    if cases.strip().lower() == "all":
        return available
    wanted = [c.strip() for c in cases.split(",") if c.strip()]
    missing = [c for c in wanted if c not in available]
    if missing:
        raise FileNotFoundError(f"cases not in {paths.data_dir(data) / 'Images'}: {missing}")
    return wanted
