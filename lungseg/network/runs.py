"""The run store: one folder per training run, named by what defines it, described by ``run.json``.

``build/runs/<profile>-<split>[-foldK]-<key8>/`` holds ``model.pt`` (weights, history, config),
``checkpoint.pt`` while training, and the manifest ``run.json``, written by training only: the
resolved config, the data it was trained on (each case's cache key), the code version, the split
membership of every slice, the preprocessing (HU window, input size), the speed switches measured
for the machine and provenance. Once 03_eval has chosen them on the training patients,
``inference.json`` beside it holds the threshold and post-processing ``predict`` uses. Everything
downstream (03_eval, ``predict``, the viewer) reads its decisions from these two files.
Which runs a report used and which model a command uses are :mod:`lungseg.network.selection`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungseg import __version__, paths
from lungseg.io import cache, writing

if TYPE_CHECKING:  # torch is imported where a model is loaded: predict on ONNX Runtime needs none
    import torch

    from lungseg.network import model
    from lungseg.network.config import TrainConfig

log = logging.getLogger(__name__)
RUNS = paths.BUILD / "runs"
MANIFEST = "run.json"
WEIGHTS = "model.pt"
INFERENCE = "inference.json"
"""The inference settings 03_eval chose, beside ``run.json`` (which is written only by training)."""
KEY_CHARS = 8
"""Key characters in a run folder's name, ``<profile>-<split>[-foldK]-<key8>``."""
# The code whose change changes the trained weights (dicom.py, orient.py and cache.py are covered by
# the cases' cache keys).
TRAINING_CODE = ("network/config.py", "network/model.py", "network/losses.py", "network/data.py",
                 "network/disease.py", "train/loop.py", "train/distributed.py")
"""The training code (paths in the package) whose change changes a run key."""


class RunNotFoundError(FileNotFoundError):
    """No finished run where one was expected; the message says how to make one."""


class CheckpointError(ValueError):
    """A weights file that is not a lungseg checkpoint (nor the course's reference weights)."""


@dataclass
class TrainResult:
    """A trained model with its history (per-epoch lists), config and folder."""

    model: model.UNet
    history: dict[str, list[float]]
    config: TrainConfig
    run_dir: Path
    trained_now: bool = False
    manifest: dict = field(default_factory=dict)


def runs_dir(folder: str | os.PathLike[str] | None = None) -> Path:
    return paths.resolve(folder) if folder else RUNS


def code_hash() -> str:
    """SHA-256 (16 hex) of the training code."""
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update((Path(__file__).parents[1] / name).read_bytes())
    return h.hexdigest()[:16]


def case_keys(cfg: TrainConfig) -> dict[str, str]:
    """Each case's cache key (a hash of its source files): the data fingerprint of a run."""
    root = paths.data_dir(cfg.data_dir or None)
    return {c: cache.case_key(paths.images_dir(root, c), paths.mask_file(root, c)) for c in cfg.cases}


def run_key(cfg: TrainConfig, case_keys: dict[str, str], world: int = 1) -> str:
    """Hash of the config (without ``NON_KEY``), the cases' cache keys (the source data), the
    training code and, for multi-process runs, the number of processes (on CPU BatchNorm statistics
    depend on it)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in cfg.NON_KEY},
                        sort_keys=True).encode())
    if world > 1:
        h.update(f"world={world}".encode())
    for c in cfg.cases:
        h.update(case_keys[c].encode())
    h.update(code_hash().encode())
    return h.hexdigest()[:16]


def split_record(case_ids: list[str], slice_index: list[int], test_idx: list[int]) -> dict:
    """Per case: number of slices and the indices of its test slices (``case_ids``/``slice_index``
    give each dataset item's case and slice; ``test_idx`` the test items)."""
    out: dict[str, dict] = {}
    for c, i in zip(case_ids, slice_index, strict=True):
        rec = out.setdefault(c, {"slices": 0, "test": []})
        rec["slices"] = max(rec["slices"], i + 1)
    for j in test_idx:
        out[case_ids[j]]["test"].append(int(slice_index[j]))
    for rec in out.values():
        rec["test"].sort()
    return out


def manifest(cfg: TrainConfig, key: str, case_keys: dict[str, str], split: dict, speed: dict | None,
             device: torch.device, world: int) -> dict:
    """The manifest of a run that starts now (``status`` "training")."""
    import torch

    from lungseg.network import data

    return {"key": key, "status": "training", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": cfg.to_dict(),
            "data": {"dir": str(paths.data_dir(cfg.data_dir or None)), "case_keys": case_keys},
            "code": {"lungseg_version": __version__, "git_commit": paths.git_commit("lungseg"),
                     "training_code_sha256": code_hash()},
            "split": {"protocol": cfg.split,
                      "test_cases": list(cfg.test_cases) if cfg.split == "cases" else [],
                      "per_case": split},
            "preprocessing": {"input_mode": cfg.input_mode, "hu_window": list(cfg.hu_window),
                              "image_size": cfg.image_size, "full_size": data.FULL_SIZE,
                              "mask_threshold": data.MASK_THRESHOLD,
                              "logits": "bilinear upsampling to the full slice size before any threshold"},
            "provenance": {"torch": torch.__version__, "device": str(device), "processes": world,
                           "threads": torch.get_num_threads(), "speed_probe": speed,
                           "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu"}}


def write_manifest(run_dir: Path, content: dict) -> Path:
    return writing.atomic_write_text(run_dir / MANIFEST, json.dumps(content, indent=1) + "\n")


def read_manifest(run_dir: str | os.PathLike[str]) -> dict:
    """The run's ``run.json`` ({} for runs older than manifests)."""
    f = Path(run_dir) / MANIFEST
    return json.loads(f.read_text()) if f.is_file() else {}


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[model.UNet, TrainConfig, dict]:
    """The one checkpoint loader: the eval-mode UNet, its training config and the saved state (weights,
    history, config) of a ``model.pt``. Loaded with ``weights_only=True`` (no pickled code runs). A
    bare state dict (the course's reference weights) is the reference model: 512² input, raw stored
    values. CheckpointError naming the file when it is neither."""
    import torch

    from lungseg.network import data, model
    from lungseg.network.config import TrainConfig

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files that are not checkpoints
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    if isinstance(state, dict) and "model" in state and "config" in state:
        try:
            cfg = TrainConfig.from_dict(state["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: checkpoint config not understood ({exc})") from None
        weights = state["model"]
    elif isinstance(state, dict) and "conv1.0.weight" in state:
        cfg = TrainConfig(image_size=data.FULL_SIZE, input_mode="raw")
        weights, state = state, {"model": state}
    else:
        raise CheckpointError(f"{path}: not a lungseg run checkpoint (expected keys 'model' and "
                              "'config', as loop.fit writes)")
    net = model.UNet(base_channels=cfg.base_channels, dropout=cfg.dropout, dilation=cfg.dilation)
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the UNet of its config ({exc})") from None
    return net.eval(), cfg, state


def load_run(run_dir: str | os.PathLike[str]) -> TrainResult:
    """A finished run from its folder (``model.pt`` holds weights, history and config)."""
    run_dir = paths.resolve(run_dir)
    if not (run_dir / WEIGHTS).is_file():
        raise RunNotFoundError(f"no finished run in {run_dir} (no {WEIGHTS}): run 02_train first")
    net, cfg, state = load_checkpoint(run_dir / WEIGHTS)
    return TrainResult(net, state.get("history", {}), cfg, run_dir, False, read_manifest(run_dir))


def test_masks(run: TrainResult, case_ids: list[str], n_slices: list[int]) -> list[np.ndarray]:
    """Per case, a bool (z,) array: True where the slice was in the run's test set, read from the
    manifest (so evaluation never re-derives the split)."""
    per_case = run.manifest.get("split", {}).get("per_case")
    if per_case is None:
        raise RunNotFoundError(f"{run.run_dir}: no split record in {MANIFEST} (a run from before "
                               "manifests): retrain it with 02_train")
    out = []
    for c, n in zip(case_ids, n_slices, strict=True):
        rec = per_case.get(c)
        if rec is None or rec["slices"] != n:
            raise ValueError(f"{run.run_dir}: case {c} with {n} slices was not in this run's data "
                             f"({rec['slices'] if rec else 0} slices recorded)")
        mask = np.zeros(n, dtype=bool)
        mask[rec["test"]] = True
        out.append(mask)
    return out


# ---- inference settings chosen by 03_eval -------------------------------------------------------

def save_inference(run_dir: Path, threshold: float, clean: bool, chosen_on: str) -> dict:
    """Record the chosen threshold and post-processing in the run's ``inference.json``."""
    settings = {"threshold": float(threshold), "postprocess": bool(clean), "chosen_on": chosen_on}
    writing.atomic_write_text(Path(run_dir) / INFERENCE, json.dumps(settings, indent=1) + "\n")
    return settings


def inference_settings(run_dir: Path) -> dict:
    """The run's chosen inference settings ({} when 03_eval has not chosen any): ``inference.json``,
    else the ``inference`` record of ``run.json`` (the released model; runs of the previous layout)."""
    f = Path(run_dir) / INFERENCE
    if f.is_file():
        return json.loads(f.read_text())
    return read_manifest(run_dir).get("inference") or {}


def run_folder(root: Path, cfg: TrainConfig, key: str) -> Path:
    """The folder of the run ``key`` under ``root``: an existing one of that key, whatever profile
    named it (``*-<key8>``) or in the old layout (the bare key), else a new
    ``<profile>-<split>[-foldK]-<key8>``."""
    for found in sorted(root.glob(f"*-{key[:KEY_CHARS]}")):
        if read_manifest(found).get("key", key) == key:
            return found
    if (root / key).is_dir():
        log.info("run %s found in its old folder (named by the bare key)", key)
        return root / key
    fold = f"-fold{cfg.fold}" if cfg.split == "cases" and cfg.kfold > 1 else ""
    return root / f"{cfg.profile or 'run'}-{cfg.split}{fold}-{key[:KEY_CHARS]}"
