"""Segment the lungs of a new CT series with a trained run: ``python -m lungseg predict``.

The series is read with :func:`lungseg.io.dicom.load_series` (any folder; the cache is for the data
set's cases), preprocessed as the checkpoint's training config says (``image_size``, ``input_mode``),
and the logits are upsampled to the full slice size by :mod:`lungseg.inference.forward`. The threshold and
post-processing are those the run's manifest records (chosen by 03_eval on training patients).
Outputs are written into a temporary folder beside ``OUT_DIR`` and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungseg import __version__
from lungseg.inference import ort, postprocess, qc, segment, sides
from lungseg.io import dicom, export, imagefile, orient, overlay, rtstruct, series, writing
from lungseg.network import runs, selection

if TYPE_CHECKING:  # torch is imported only when PyTorch runs the network (or exports it once)
    from lungseg.network import model
    from lungseg.network.config import TrainConfig

NO_RUN_HINT = "run ./run_all.sh first or pass --checkpoint"
RUNTIMES = ort.RUNTIMES
"""``auto``: ONNX Runtime on a CPU when it is installed (faster, :mod:`lungseg.inference.ort`), else
PyTorch."""

NIFTI_NAME = "lung_mask.nii.gz"
SEG_NAME = "lung_mask.seg.dcm"
RTSTRUCT_NAME = "lung_mask.rtstruct.dcm"
OVERVIEW_NAME = "overview.png"
STATS_NAME = "stats.json"
OUTPUT_NAMES = (NIFTI_NAME, SEG_NAME, RTSTRUCT_NAME, OVERVIEW_NAME, STATS_NAME)


class SideWarning(UserWarning):
    """The right/left split of a prediction could only be guessed (shown as a note by the CLI)."""


class PredictError(RuntimeError):
    """A predict run that cannot start or finish; the message says why and what to do."""


# ---- checkpoints -------------------------------------------------------------------------------

def choose_model(checkpoint: str | os.PathLike[str] | selection.ModelChoice | None = None
                 ) -> selection.ModelChoice:
    """The model to use and why: ``checkpoint`` when given (a run folder or weights file, or
    ``"report"``: :func:`lungseg.network.selection.report_model`), else the released model
    (:func:`lungseg.network.selection.default_model`)."""
    if isinstance(checkpoint, selection.ModelChoice):
        return checkpoint
    try:
        if str(checkpoint or "") == selection.REPORT:
            return selection.report_model()
        if checkpoint:
            return selection.given_model(checkpoint)
        return selection.default_model()
    except runs.RunNotFoundError as exc:
        raise PredictError(f"{exc} ({NO_RUN_HINT})") from None


def default_checkpoint() -> Path:
    """The run folder of :func:`choose_model` without ``--checkpoint``."""
    return choose_model().path


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The ``model.pt`` of a run folder, or the file itself; PredictError when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / runs.WEIGHTS
    if not path.is_file():
        raise PredictError(f"checkpoint not found: {path} ({NO_RUN_HINT})")
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[model.UNet, TrainConfig]:
    """The eval-mode UNet and its training config from a run's ``model.pt`` (or its run folder), by
    the one checkpoint loader (:func:`lungseg.network.runs.load_checkpoint`); PredictError naming the
    file when it is not one."""
    path = weights_file(path)
    try:
        net, cfg, _ = runs.load_checkpoint(path)
    except runs.CheckpointError as exc:
        raise PredictError(str(exc)) from None
    return net, cfg


# ---- inference ---------------------------------------------------------------------------------

def _torch_is_cpu_only() -> bool:
    """True when there is no torch (the base install: ONNX Runtime on the CPU) or the installed torch
    is a CPU-only build (a ``+cpu`` wheel) on a system without Apple MPS: then ``auto`` is the CPU,
    known without importing torch (~2 s)."""
    try:
        return importlib.metadata.version("torch").endswith("+cpu") and sys.platform != "darwin"
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec("torch") is None


def resolve_device(name: str) -> str:
    """``auto`` → cuda, mps or cpu (:func:`lungseg.network.speed.pick_device`); a named device must be
    usable here."""
    if name == "cpu" or (name == "auto" and _torch_is_cpu_only()):
        return "cpu"
    import torch

    from lungseg.network import speed

    try:
        dev = speed.pick_device(name)
    except RuntimeError as exc:
        raise PredictError(f"unknown device {name!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return str(dev)


def resolve_runtime(name: str, device: str) -> str:
    """``onnxruntime`` or ``torch`` for ``--runtime name`` on ``device`` (see :data:`RUNTIMES`)."""
    try:
        return ort.choose(name, device)
    except ValueError as exc:
        raise PredictError(str(exc)) from None


def onnx_session(checkpoint: Path, threads: int | None = None) -> ort.Session:
    """The ONNX Runtime session of a checkpoint, exported on first use (cached by the weights' hash),
    running ``threads`` threads (None: every core this process may use)."""
    return ort.Session(onnx_export(checkpoint), threads)


def onnx_export(checkpoint: Path) -> Path:
    """The ONNX model of a checkpoint's weights: the one a release ships beside them (no torch
    needed), else the cached export (``build/onnx/``), made on first use (with torch)."""
    weights = weights_file(checkpoint)
    shipped = ort.shipped_model(weights)
    if shipped is not None:
        return shipped
    cached = ort.cached_model(weights)
    if not cached.is_file():
        try:
            from lungseg.network.model import REFERENCE_INPUT_OFFSET_HU
        except ImportError:  # the base install: ONNX Runtime only
            raise PredictError(f"{weights}: no ONNX export ships with these weights, and making one needs "
                               "PyTorch: pip install 'lungseg[report]' (or use the released model)") from None
        net, cfg = load_checkpoint(weights)
        ort.export(net, ort.preprocessing_of(cfg, REFERENCE_INPUT_OFFSET_HU), cached)
    return cached


class Network:
    """The network of a checkpoint on one runtime, loaded once: :meth:`logits` of a volume, and what
    stats.json records of it. ``threads``: ONNX Runtime's threads (None: every core)."""

    def __init__(self, checkpoint: Path, device: str, runtime: str, batch_size: int | None,
                 threads: int | None = None, progress: bool = True) -> None:
        self.device, self.runtime, self.checkpoint, self.progress = device, runtime, checkpoint, progress
        if runtime == "onnxruntime":
            self.session = onnx_session(checkpoint, threads)
            self.preprocessing = self.session.preprocessing
            self.batch_size = batch_size or ort.BATCH
            self.threads, self.version = self.session.threads, self.session.version
        else:
            import torch

            self.net, self.cfg = load_checkpoint(checkpoint)
            self.preprocessing = {"image_size": self.cfg.image_size, "input_mode": self.cfg.input_mode}
            self.batch_size = batch_size or ort.BATCH
            self.threads, self.version = torch.get_num_threads(), f"torch {torch.__version__}"

    def logits(self, volume: dicom.Volume) -> np.ndarray:
        """Logits (z, y, x) float32 on ``volume``'s grid (slices of any shape and pixel spacing)."""
        if self.runtime == "torch":
            from lungseg.inference import forward

            return forward.run_logits(self.net, self.cfg, volume.hu, self.device, self.batch_size,
                                        name=volume.case_id, progress=self.progress, runtime="torch",
                                        spacing=volume.spacing[1:])
        return self.session.logits(volume.hu, volume.case_id, progress=self.progress,
                                   batch_size=self.batch_size, spacing=volume.spacing[1:])

    def logits_of(self, hu: np.ndarray) -> np.ndarray:
        """Logits (n, y, x) of a few square HU slices (n, y, x), quietly: QC's test-time change."""
        if self.runtime == "torch":
            from lungseg.inference import forward

            return forward.run_logits(self.net, self.cfg, hu, self.device, self.batch_size, runtime="torch")
        return self.session.logits(hu, batch_size=self.batch_size)


def load_network(checkpoint: Path, device: str = "auto", runtime: str = "auto",
                 batch_size: int | None = None, threads: int | None = None,
                 progress: bool = True) -> Network:
    """The :class:`Network` of ``checkpoint`` (a run folder or weights file) for ``device`` and
    ``runtime`` (:data:`RUNTIMES`), as ``predict`` loads it."""
    dev = resolve_device(device)
    return Network(checkpoint, dev, resolve_runtime(runtime, dev), batch_size, threads, progress)


# ---- output folder -----------------------------------------------------------------------------

TOOL = "predict"


def check_out_dir(out_dir: Path, dicom_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that is, lies inside or contains the input, and one that holds files
    unless ``overwrite`` and they are exactly an earlier predict output (:mod:`lungseg.io.writing`)."""
    try:
        writing.check_not_overlapping(out_dir, [dicom_dir], "output folder")
        writing.check_replaceable(out_dir, overwrite, TOOL)
    except writing.UnsafeOutputError as exc:
        raise PredictError(str(exc)) from None


class _Clock:
    """Seconds per named stage, in call order."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._t, 3)
        self._t = now

    def split(self, name: str, part: str, seconds: float) -> None:
        """Move ``seconds`` of the stage ``name`` into a stage ``part`` of their own."""
        self.stages[name] = round(self.stages[name] - seconds, 3)
        self.stages[part] = round(seconds, 3)


# ---- the command -------------------------------------------------------------------------------

def input_id(volume: dicom.Volume) -> str:
    """16 hex of the SHA-256 of the input's absolute path (the DICOM folder or the image file): the same
    input gets the same id, and the id gives away neither path nor folder name."""
    source = volume.files[0] if volume.sort_key == imagefile.SORT_KEY else str(Path(volume.files[0]).parent)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _stats(volume: dicom.Volume, labels: np.ndarray, split: sides.SplitInfo, network: Network,
           model_choice: selection.ModelChoice, threshold: float, clean: bool) -> dict:
    """What stats.json records (timings are added when the outputs are written). ``volume`` and
    ``labels`` (1 = right, 2 = left lung) are on the acquisition grid."""
    return {
        "lungseg_version": __version__,
        # No input path or folder name (often an MRN): a pseudonymous id of it; --record-input adds it.
        "input_id": input_id(volume),
        "series_uid": volume.series_uid,
        "acquisition_plane": series.plane_name(volume.orientation),
        "image_orientation_patient": list(volume.orientation),
        "slices": volume.shape[0],
        "shape_zyx": list(volume.shape),
        "spacing_mm_zyx": list(volume.spacing),
        "labels": {"1": "right lung", "2": "left lung"},
        "lung_voxels": int(np.count_nonzero(labels)),
        "lung_volume_ml": export.lung_volume_ml(labels, volume.spacing),
        "right_lung_ml": export.lung_volume_ml(labels, volume.spacing, sides.RIGHT),
        "left_lung_ml": export.lung_volume_ml(labels, volume.spacing, sides.LEFT),
        "lungs_touching": split.touched,
        "side_split_method": split.method,
        "threshold": threshold,
        "postprocess": clean,
        "checkpoint": str(model_choice.path),
        "model": model_choice.record(),
        "image_size": network.preprocessing["image_size"],
        "input_mode": network.preprocessing["input_mode"],
        "device": network.device,
        "runtime": network.version,
    }


def mask_like_name(image_file: Path) -> str:
    """The mask written beside the NIfTI for an NRRD or MetaImage input, in the input's format."""
    suffix = next(s for s in imagefile.SUFFIXES if image_file.name.lower().endswith(s))
    return "lung_mask" + {".nhdr": ".nrrd", ".mhd": ".mha"}.get(suffix, suffix)


def _write_outputs(tmp: Path, volume: dicom.Volume, labels: np.ndarray, reo: orient.Reorientation,
                   clock: _Clock, image_file: Path | None = None) -> list[str]:
    """NIfTI, SEG and RTSTRUCT on the acquisition grid (``volume``, ``labels``); the overview in the
    canonical axial orientation, whatever the acquisition plane. For an ``image_file`` input (no DICOM
    to reference) no SEG or RTSTRUCT; a NIfTI input gets its NIfTI mask on its own voxel grid, an NRRD
    or MetaImage input also gets its mask in its own format, on its own grid. Returns the names
    written."""
    nifti_input = image_file is not None and image_file.name.lower().endswith((".nii", ".nii.gz"))
    if nifti_input:  # on the input's own voxel grid and header, so that ct[mask > 0] picks the lungs
        imagefile.write_mask_like(labels, image_file, tmp / NIFTI_NAME)
    else:
        export.write_nifti(labels, volume, tmp / NIFTI_NAME)
    clock.lap("nifti_s")
    canon, _ = orient.canonical(volume)
    # Titled by the series, never by the input's folder or file name (often an MRN).
    title = f"predicted lungs, series …{volume.series_uid[-16:]}" if volume.series_uid else "predicted lungs"
    overlay.write_overview(canon, reo.to_canonical(labels), tmp / OVERVIEW_NAME, title)
    clock.lap("overview_s")
    if image_file is not None:
        written = [NIFTI_NAME, OVERVIEW_NAME]
        if not nifti_input:
            like = tmp / mask_like_name(image_file)
            written.append(imagefile.write_mask_like(labels, image_file, like).name)
            clock.lap("mask_like_s")
        return written
    sources = export.read_sources(volume)  # the slices' headers, for both DICOM outputs
    export.write_seg(labels, volume, tmp / SEG_NAME, sources)
    clock.lap("seg_s")
    rtstruct.write_rtstruct(labels, volume, tmp / RTSTRUCT_NAME, sources=sources)
    clock.lap("rtstruct_s")
    return [NIFTI_NAME, SEG_NAME, RTSTRUCT_NAME, OVERVIEW_NAME]


def inference_settings(ckpt: Path, threshold: float | None, clean: bool | None) -> tuple[float, bool]:
    """Threshold and post-processing: as given, else the run's manifest (chosen by 03_eval on the
    training patients), else ``postprocess.DEFAULT_THRESHOLD`` with post-processing."""
    saved = runs.inference_settings(ckpt if ckpt.is_dir() else ckpt.parent)
    default = float(saved.get("threshold", postprocess.DEFAULT_THRESHOLD))
    return (threshold if threshold is not None else default,
            clean if clean is not None else bool(saved.get("postprocess", True)))


def predict(dicom_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            checkpoint: str | os.PathLike[str] | selection.ModelChoice | None = None, device: str = "auto",
            batch_size: int | None = None, threshold: float | None = None,
            clean: bool | None = None, overwrite: bool = False, series_uid: str | None = None,
            recursive: bool | None = None, runtime: str = "auto", check: bool = True,
            record_input: bool = False, progress: bool = True) -> dict:
    """Segment the series in ``dicom_dir`` (a DICOM folder, or a NIfTI/NRRD/MetaImage file: see
    :mod:`lungseg.io.imagefile`) and write NIfTI, DICOM SEG, RTSTRUCT, overview and stats into
    ``out_dir`` (created whole or not at all); return the stats. Relative paths are taken from the
    current directory. ``checkpoint``: a run folder or weights file, or a :func:`choose_model` choice;
    None = the default model (recorded with the reason in ``stats["model"]``). ``threshold``/``clean``
    default to what 03_eval chose for the run (its
    manifest), else 0.5 and post-processing on. Any axis-aligned series (coronal, prone,
    feet first...) is brought to the training orientation for inference (:mod:`lungseg.io.orient`) and
    its mask back to the acquisition grid for the outputs; oblique series are refused.
    ``runtime``: one of :data:`RUNTIMES`; ``batch_size`` None = the runtime's own default.
    ``check``: judge the mask (:mod:`lungseg.inference.qc`; ``stats["qc"]``); False only to time predict
    without it. ``record_input``: also write the input's absolute path into stats.json (by default only
    :func:`input_id`). ``progress``: the inference's progress bar."""
    dicom_dir, out_dir = Path(dicom_dir).absolute(), Path(out_dir).absolute()
    image_file = dicom_dir if imagefile.is_image_file(dicom_dir) else None
    if image_file is None and not dicom_dir.is_dir():
        raise PredictError(f"DICOM folder not found: {dicom_dir}" + (
            f" (a file; lungseg reads DICOM folders and {', '.join(imagefile.SUFFIXES)} files)"
            if dicom_dir.is_file() else ""))
    if image_file is not None and not image_file.is_file():
        raise PredictError(f"image file not found: {image_file}")
    check_out_dir(out_dir, dicom_dir, overwrite)
    clock = _Clock()
    choice = choose_model(checkpoint)
    ckpt = choice.path
    threshold, clean = inference_settings(ckpt, threshold, clean)
    try:
        postprocess.check_threshold(threshold)
    except ValueError as err:
        raise PredictError(f"--{err}") from None
    network = load_network(ckpt, device, runtime, batch_size, progress=progress)
    clock.lap("load_model_s")
    if image_file is not None:
        try:
            volume = imagefile.load_image(image_file)
        except imagefile.ImageFileError as exc:
            raise PredictError(str(exc)) from None
    else:
        volume = dicom.load_series(dicom_dir, series_uid, recursive, volume_only=True)
    clock.lap("read_dicom_s")
    return segment_series(network, volume, out_dir, choice, threshold, clean, clock, overwrite=overwrite,
                          sources=[dicom_dir], check=check, image_file=image_file,
                          extra={"input": str(dicom_dir)} if record_input else None)


def segment_series(network: Network, volume: dicom.Volume, out_dir: Path, choice: selection.ModelChoice,
                   threshold: float, clean: bool, clock: _Clock, *, overwrite: bool = False,
                   sources: list[Path] = (), extra: dict | None = None, stage_label: str = "",
                   check: bool = True, image_file: Path | None = None) -> dict:
    """Segment a loaded ``volume`` with ``network`` and write predict's five outputs into ``out_dir``
    (built in a temporary sibling named with ``stage_label``, renamed into place when complete: see
    :func:`lungseg.io.writing.staged_folder`, which also refuses ``sources`` overlapping ``out_dir``);
    return the stats. ``extra`` is added to stats.json and to the folder's marker (``batch`` records
    the model and settings there). ``choice``: the model, as stats.json records it. ``clock`` has
    timed the stages before; this adds inference, post-processing, QC (``check``) and each export."""
    small = series.too_small(volume.shape)
    if small:
        raise PredictError(f"{image_file or (sources[0] if sources else volume.case_id)}: {small}")
    canon, reo = orient.canonical(volume)
    logits = network.logits(canon)
    clock.lap("inference_s")
    # Sides from the DICOM geometry, split on the canonical grid so that every acquisition of the
    # same anatomy gets the very same labels (ties in the split are broken in one array order).
    qc_timings: dict[str, float] = {}
    # The flip agreement runs the network again: only when the shipped rule judges by it.
    flip = network.logits_of if check and qc.judges("flip") else None
    seg = segment.segment(canon, logits, threshold, clean, flip, check, qc_timings)
    canon_labels, split = seg.labels, seg.split
    if split.method == "single":  # sided by position only: say so, the user must check it
        side = "right" if split.right_ml else "left"
        warnings.warn(f"{volume.case_id}: the predicted lungs form one part with no neck to split at; "
                      f"all of it is labelled {side} lung by its position in the image: check the labels",
                      SideWarning, stacklevel=2)
    labels = reo.to_native(canon_labels)
    clock.lap("postprocess_s")
    clock.split("postprocess_s", "qc_s", sum(qc_timings.values()))
    verdict = seg.verdict
    stats = _stats(volume, labels, split, network, choice, threshold, clean)
    stats["reoriented_for_inference"] = not reo.is_identity
    del logits, seg
    stats.update(extra or {})
    if verdict is not None:
        stats["qc"] = verdict.to_dict()
    with writing.staged_folder(out_dir, TOOL, overwrite=overwrite, sources=sources, extra=extra,
                               label=stage_label) as tmp:
        stats["outputs"] = [*_write_outputs(tmp, volume, labels, reo, clock, image_file), STATS_NAME]
        if image_file is not None:
            stats["input_file"] = {"format": mask_like_name(image_file).split(".", 1)[1],
                                   "reader": imagefile.SORT_KEY}
        stats["timings_s"] = {**clock.stages, "total_s": round(sum(clock.stages.values()), 3)}
        # Per slice and per core, so machines of different sizes compare (threads = cores used).
        per_slice = clock.stages["inference_s"] / max(1, canon.shape[0])
        stats["inference_per_slice"] = {"ms": round(1000 * per_slice, 2), "threads": network.threads,
                                        "core_ms": round(1000 * per_slice * network.threads, 2)}
        writing.atomic_write_text(tmp / STATS_NAME, json.dumps(stats, indent=1) + "\n")
    return stats
