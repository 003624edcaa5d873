"""ONNX Runtime inference for ``predict`` on a CPU, with no torch import.

On a 2-core AVX2 CPU, ONNX Runtime ran the report's UNet 1.36x faster than PyTorch in float32 with
identical masks (``benchmarks/onnx_vs_torch.py``), and a process that never imports torch starts
~2 s sooner. So ``predict`` runs the network here when ONNX Runtime is installed and the device is
the CPU. The run's weights are exported once (:func:`export`, which needs torch and ``onnx``) to
``build/onnx/<hash of the weights file>.onnx``, with the preprocessing the run was trained with in
the model's metadata. Resampling is done here as matrix products that equal torch's
``interpolate`` (``area`` down, ``bilinear`` with ``align_corners=False`` up), so the logits match
:func:`lungseg.inference.forward.predict_hu` to ~1e-5 (tests/test_ort.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np

from lungseg import paths
from lungseg.inference.resample import area_matrix, bilinear_matrix, resample
from lungseg.io import parallel, writing

CACHE_DIR = paths.BUILD / "onnx"
EXPORT_VERSION = 1
"""Bump when the exported graph or its metadata change: older cached exports are then not used."""
BATCH = 4
"""Slices per inference batch, both runtimes (ONNX Runtime: 1 to 16 measured within 5 % of each other
on 2 cores; PyTorch: fastest at 512² on 2 cores, activations stay in cache)."""
RUNTIMES = ("auto", "onnxruntime", "torch")
"""What runs the network: ``auto`` = ONNX Runtime on a CPU when it is installed, else PyTorch; for a
caller that asks for bf16 where it is native (the report's evaluation), PyTorch with bf16 autocast."""


def choose(name: str, device: str, bf16: bool = False) -> str:
    """The one rule for what runs the network: ``onnxruntime`` or ``torch`` for ``name`` (one of
    :data:`RUNTIMES`) on ``device`` (a torch device string); ValueError when it cannot run there.

    ``bf16``: the caller wants bf16 autocast and it is native on ``device``. Then ``auto`` is PyTorch:
    on a 2-core AVX-512 BF16 CPU it ran the 160² UNet over a 130-slice volume 1.9x faster than ONNX
    Runtime's float32 (1.0 vs 1.9 s; 1.8 vs 3.3 s on one thread). ``predict`` does not ask: its
    masks are float32, the same on every CPU."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")
    on_cpu = str(device).split(":")[0] == "cpu"
    if name == "torch" or (name == "auto" and (not on_cpu or bf16 or not available())):
        return "torch"
    if not on_cpu:
        raise ValueError(f"--runtime onnxruntime runs on the CPU only, not on {device!r}")
    if not available():
        raise ValueError("--runtime onnxruntime: ONNX Runtime is not installed (pip install onnxruntime)")
    return "onnxruntime"
META_KEY = "lungseg"
WEIGHTS_KEY = "lungseg_weights_sha256"
"""ONNX metadata: the SHA-256 of the ``model.pt`` the export was made from."""
SHIPPED = "model.onnx"
"""The export a release ships beside its ``model.pt``, so that predict needs no torch."""


def available() -> bool:
    """True when ONNX Runtime is installed."""
    return importlib.util.find_spec("onnxruntime") is not None


def cached_model(weights: Path) -> Path:
    """Where the export of the weights file ``weights`` (a ``model.pt``) is cached, by content."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:20]
    return CACHE_DIR / f"{digest}-v{EXPORT_VERSION}.onnx"


def shipped_model(weights: Path) -> Path | None:
    """The ONNX export shipped beside ``weights`` (a release's :data:`SHIPPED`) when it was made from
    those very weights (its metadata names their SHA-256), else None."""
    path = Path(weights).with_name(SHIPPED)
    if not path.is_file():
        return None
    import onnxruntime as ort

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    made_from = meta.custom_metadata_map.get(WEIGHTS_KEY)
    return path if made_from == writing.sha256_file(weights) else None


def export(net, preprocessing: dict, path: Path, weights_sha256: str | None = None) -> Path:
    """Export the UNet ``net`` (a torch module, in eval mode on the CPU: a copy, ``net`` is left as
    it is; input (N, 1, S, S) float32, S = ``preprocessing["image_size"]``) to ONNX at ``path``
    (atomic), with ``preprocessing`` (image_size, input_mode, hu_window, raw_offset_hu) as metadata,
    and ``weights_sha256`` (the weights file it was made from) when given. Needs torch and ``onnx``."""
    import copy
    import io

    import onnx
    import torch

    net = copy.deepcopy(net).float().cpu().eval().to(memory_format=torch.contiguous_format)
    size = int(preprocessing["image_size"])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript
        # and takes ~10x longer; its tracer warns about the UNet's shape check (constant here).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(net, (torch.zeros(1, 1, size, size),), buf,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    props = {META_KEY: json.dumps(preprocessing)}
    if weights_sha256:
        props[WEIGHTS_KEY] = weights_sha256
    onnx.helper.set_model_props(proto, props)
    path.parent.mkdir(parents=True, exist_ok=True)
    writing.atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    return path


# ---- the session ----------------------------------------------------------------------------------

class Session:
    """An ONNX Runtime session of an exported run: :meth:`logits` from HU, like
    :func:`lungseg.inference.forward.run_logits`."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        self.threads = threads or parallel.cores()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        # No busy-waiting after each batch: the same speed here, and no core taken from the
        # resampling and post-processing that follow.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ValueError(f"{path}: not an ONNX model exported by lungseg (no {META_KEY!r} metadata)")
        self.preprocessing: dict = json.loads(props[META_KEY])
        self.version = f"onnxruntime {ort.__version__}"

    def normalise(self, hu: np.ndarray) -> np.ndarray:
        """HU → network input, float32, as :func:`lungseg.network.data.normalise` computes it."""
        p = self.preprocessing
        x = np.array(hu, dtype=np.float32)  # a copy, changed in place below
        if p["input_mode"] == "window":
            # In place with float32 bounds: np.clip with Python-float bounds took 14x longer.
            lo, hi = (np.float32(v) for v in p["hu_window"])
            np.clip(x, lo, hi, out=x)
            x -= lo
            x /= hi - lo
        else:
            x += np.float32(p["raw_offset_hu"])
        return x

    def logits(self, hu: np.ndarray, name: str = "volume", progress: bool = False,
               batch_size: int = BATCH, spacing: tuple[float, float] | None = None) -> np.ndarray:
        """Logits (z, H, W) float32 on the slices' own grid for a (z, H, W) HU volume. ``spacing``:
        (dy, dx) mm of the pixels (None: square pixels). Slices square in pixels and in mm are
        resized as in training; any other slice is first brought onto a square field of view in mm
        (:mod:`lungseg.inference.fov`) and its logits back."""
        from lungseg.inference import fov

        size = int(self.preprocessing["image_size"])
        if not fov.is_plain(hu.shape, spacing):
            f = fov.field(hu.shape, spacing, size)
            x = f.to_model(self.normalise(f.pad(np.asarray(hu))))
            return f.from_model(self._run(x, name, progress, batch_size))
        full = hu.shape[-1]
        # Resampling of the whole volume at once, outside the network loop: interleaved with
        # ONNX Runtime's threads, the BLAS threads of small per-batch products slowed it down 1.7x.
        x = self.normalise(hu)
        if full != size:
            x = resample(x, area_matrix(full, size))
        y = self._run(x, name, progress, batch_size)
        return resample(y, bilinear_matrix(size, full)) if full != size else y

    def _run(self, x: np.ndarray, name: str, progress: bool, batch_size: int) -> np.ndarray:
        """The network's logits (N, S, S) for inputs (N, S, S) float32, ``batch_size`` at a time."""
        from lungseg.progress import bar as progress_bar

        y = np.empty(x.shape, dtype=np.float32)
        starts = range(0, x.shape[0], batch_size)
        for s in progress_bar(starts, desc=f"predict {name}", unit="batch", disable=not progress):
            y[s:s + batch_size] = self.session.run(None, {"x": x[s:s + batch_size, None]})[0][:, 0]
        return y


def preprocessing_of(cfg, raw_offset_hu: float) -> dict:
    """The metadata :func:`export` stores, from a run's TrainConfig (``raw_offset_hu``: what the
    "raw" input mode adds to HU)."""
    return {"image_size": int(cfg.image_size), "input_mode": cfg.input_mode,
            "hu_window": [float(v) for v in cfg.hu_window], "raw_offset_hu": float(raw_offset_hu)}


_SESSIONS: dict[tuple[str, int], Session] = {}


def session_of(net, preprocessing: dict, threads: int | None = None) -> Session:
    """The session of an in-memory UNet (e.g. a loaded run in 03_eval): exported once per weights and
    preprocessing (cached in ``build/onnx/`` by their hash), opened once per process."""
    import torch

    h = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode())
    for key, tensor in net.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    path = CACHE_DIR / f"{h.hexdigest()[:20]}-state-v{EXPORT_VERSION}.onnx"
    memo = (str(path), threads or parallel.cores())
    if memo not in _SESSIONS:
        if not path.is_file():
            export(net, preprocessing, path)
        _SESSIONS[memo] = Session(path, threads)
    return _SESSIONS[memo]
