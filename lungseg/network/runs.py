"""The run store: one folder per training run, named by what defines it, described by ``run.json``.

``build/runs/<profile>-<split>[-foldK]-<key8>/`` holds ``model.pt`` (weights, history, config),
``checkpoint.pt`` while training, and the manifest ``run.json``, written by training only: the
resolved config, the data it was trained on (each case's cache key), the code version, the split
membership of every slice, the preprocessing (HU window, input size), the speed switches measured
for the machine and provenance. Once 03_eval has chosen them on the training patients,
``inference.json`` beside it holds the threshold and post-processing ``predict`` uses. Everything
downstream (03_eval, ``predict``, the viewer) reads its decisions from these two files.

The runs one report used are recorded per profile in ``build/runs/reports/PROFILE.json`` by
02_train; :func:`profile_runs` and :func:`default_model` resolve "the latest run" there and nowhere
else. A report whose main run caps its epochs (``max_steps_per_epoch > 0``: the ``quick`` profile,
CI's smoke test) is never a default: :func:`default_model` then takes the released model in
``models/`` (:mod:`lungseg.report.release`).
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
RELEASED = paths.MODELS / "lungseg-cpu-lctsc12"
"""The released model (a run folder with ``model.pt``, ``run.json`` and ``MODEL_CARD.md``)."""
PROFILE_ENV = "LUNGSEG_PROFILE"
"""Names the report 03_eval evaluates when its ``profile`` parameter is empty (the tests set it to
their smoke profile; otherwise the latest report that is not a smoke test)."""
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


# ---- the runs of one report ---------------------------------------------------------------------

def _record_file(profile: str, folder: Path | None = None) -> Path:
    return (folder or RUNS) / "reports" / f"{profile}.json"


def tested_slices(r: TrainResult) -> tuple[int, int]:
    """(test slices, all slices) of a run's split, from its manifest; (0, 0) when it records none."""
    per = r.manifest.get("split", {}).get("per_case", {})
    return sum(len(v["test"]) for v in per.values()), sum(v["slices"] for v in per.values())


def describe_runs(by_split: dict[str, TrainResult], folds: list[TrainResult]) -> str:
    """What a report trained, one line per run, without keys or times (02_train's checked output): the
    split each run drew (its slice counts come from the data and the seed, the same on every machine)."""
    lines = []
    for split, r in by_split.items():
        c = r.config
        test = f", test {', '.join(c.test_cases)}" if c.split == "cases" else ""
        n_test, n_all = tested_slices(r)
        lines.append(f"{split} split: {len(c.cases)} cases{test}, {n_test} of {n_all} slices held out; "
                     f"{len(r.history['train_loss'])} epochs at {c.image_size} px, batch {c.batch_size}, "
                     f"lr {c.lr} ({c.schedule})")
    if folds:
        lines.append(f"{len(folds)} cross-validation folds, test patients (test slices): "
                     + " | ".join(f"{', '.join(f.config.test_cases)} ({tested_slices(f)[0]})" for f in folds))
    return "\n".join(lines)


def record_profile_runs(profile: str, runs: dict[str, TrainResult], folds: list[TrainResult],
                  main_split: str, figures_dir: str, plain: TrainResult | None = None) -> Path:
    """Written by 02_train: which runs the profile's report uses (main, other protocol, folds and
    the main run's twin trained without simulated dense lung, when the profile compares them)."""
    rec = {"profile": profile, "written": time.time(), "main": main_split,
           "smoke": runs[main_split].config.max_steps_per_epoch > 0,
           "runs": {split: str(r.run_dir) for split, r in runs.items()},
           "folds": [str(r.run_dir) for r in folds], "figures_dir": figures_dir,
           "plain": str(plain.run_dir) if plain is not None else ""}
    f = _record_file(profile)
    f.parent.mkdir(parents=True, exist_ok=True)
    return writing.atomic_write_text(f, json.dumps(rec, indent=1) + "\n")


def is_smoke(record: dict) -> bool:
    """A smoke-test report: its main run caps the steps of every epoch (the ``quick`` profile).
    Records from before the flag are judged by their main run's manifest."""
    if "smoke" in record:
        return bool(record["smoke"])
    main = record.get("runs", {}).get(record.get("main", ""), "")
    if not main:
        return False
    return int(read_manifest(main).get("config", {}).get("max_steps_per_epoch", 0) or 0) > 0


def _records(folder: Path | None = None) -> list[dict]:
    reports = (folder or RUNS) / "reports"
    return [json.loads(f.read_text()) for f in sorted(reports.glob("*.json"))] if reports.is_dir() else []


def latest_profile_record(folder: Path | None = None) -> dict:
    """The record of the latest report that is not a smoke test (:func:`is_smoke`)."""
    records = _records(folder)
    real = [r for r in records if not is_smoke(r)]
    if not real:
        smoke = ", ".join(sorted(r["profile"] for r in records))
        raise RunNotFoundError(f"no trained runs recorded in {(folder or RUNS) / 'reports'}"
                               + (f" except smoke tests ({smoke}), never a default" if smoke else "")
                               + ": run ./run_all.sh (or 02_train) first")
    return max(real, key=lambda r: r["written"])


def profile_record(profile: str = "", folder: Path | None = None) -> dict:
    """The record of ``profile``'s latest 02_train. Empty ``profile``: ``$LUNGSEG_PROFILE`` when set,
    else :func:`latest_profile_record`."""
    profile = profile or os.environ.get(PROFILE_ENV, "")
    if not profile:
        return latest_profile_record(folder)
    f = _record_file(profile, folder)
    if not f.is_file():
        raise RunNotFoundError(f"no trained runs recorded for profile {profile!r} ({f}): run "
                               f"./run_all.sh --profile {profile} (or 02_train) first")
    return json.loads(f.read_text())


@dataclass
class ProfileRuns:
    """The finished runs of one report: ``main`` and ``by_split`` (main and the other protocol)."""

    profile: str
    main: TrainResult
    by_split: dict[str, TrainResult]
    fold_dirs: list[Path]
    figures_dir: str
    how: str = ""
    """Why this report: named, from ``$LUNGSEG_PROFILE``, or the latest that is not a smoke test."""
    plain_dir: Path | None = None
    """The main run's twin trained without simulated dense lung (``compare_disease``), if any."""

    def folds(self) -> list[TrainResult]:
        return [load_run(d) for d in self.fold_dirs]

    def plain(self) -> TrainResult | None:
        return load_run(self.plain_dir) if self.plain_dir else None

    def describe(self) -> str:
        """Which runs are evaluated, and why these (03_eval prints it at its top)."""
        lines = [f"Evaluating the {self.profile!r} report ({self.how}):"]
        for split, r in self.by_split.items():
            role = "main" if r is self.main else "other protocol"
            test = f", test patients {', '.join(r.config.test_cases)}" if r.config.split == "cases" else ""
            lines.append(f"  {role}: {r.run_dir.name} ({split} split, {len(r.config.cases)} cases, "
                         f"{r.config.image_size} px, {r.config.epochs} epochs{test})")
        lines += [f"  cross-validation fold {i}: {d.name}" for i, d in enumerate(self.fold_dirs)]
        if self.plain_dir:
            lines.append(f"  without simulated dense lung (same recipe otherwise): {self.plain_dir.name}")
        return "\n".join(lines)


def profile_runs(profile: str = "", folder: Path | None = None) -> ProfileRuns:
    """Load the runs :func:`record_profile_runs` recorded (never trains)."""
    env = os.environ.get(PROFILE_ENV, "")
    how = ("named by the profile parameter" if profile else f"named by ${PROFILE_ENV}" if env
           else "the latest report that is not a smoke test")
    rec = profile_record(profile, folder)
    by_split = {split: load_run(d) for split, d in rec["runs"].items()}
    return ProfileRuns(rec["profile"], by_split[rec["main"]], by_split,
                      [Path(d) for d in rec["folds"]], rec["figures_dir"], how,
                      Path(rec["plain"]) if rec.get("plain") else None)


def default_run(profile: str = "", split: str = "cases", folder: Path | None = None) -> Path:
    """The ``split`` run (held-out patients, so its inference settings were chosen without the test
    patients) of the latest report that is not a smoke test (or of ``profile``)."""
    rec = profile_record(profile, folder)
    if split not in rec["runs"]:
        raise RunNotFoundError(f"the latest report ({rec['profile']} profile) trained no {split}-split "
                               "run: pass --checkpoint RUN_DIR")
    run_dir = Path(rec["runs"][split])
    if not (run_dir / WEIGHTS).is_file():
        raise RunNotFoundError(f"{run_dir}: recorded but not finished; rerun ./run_all.sh")
    return run_dir


# ---- which model a command uses -----------------------------------------------------------------

@dataclass(frozen=True)
class ModelChoice:
    """The model a command uses: its run folder, a short name, where it comes from (``given``,
    ``report`` or ``released``) and why it was chosen, in a sentence."""

    path: Path
    name: str
    source: str
    reason: str

    def record(self) -> dict:
        """What ``stats.json`` and ``cohort.csv`` record of it."""
        inside = paths.is_within(self.path, paths.ROOT)
        path = str(self.path.resolve().relative_to(paths.ROOT)) if inside else str(self.path)
        return {"name": self.name, "source": self.source, "path": path, "reason": self.reason}


def released_model(folder: Path | None = None) -> ModelChoice | None:
    """The released model when its weights are there (a clone has them; a copy of the package may not)."""
    folder = folder or RELEASED
    if not (folder / WEIGHTS).is_file():
        return None
    name = read_manifest(folder).get("release", {}).get("name", folder.name)
    return ModelChoice(folder, name, "released", "")


REPORT = "report"
"""``--checkpoint report``: the held-out-patient run of the latest local report (:func:`report_model`)."""


def default_model() -> ModelChoice:
    """The model ``predict``, ``batch`` and the viewer use without ``--checkpoint``: always the released
    model (the same masks whatever was trained locally); RunNotFoundError when it is missing."""
    released = released_model()
    if released is None:
        raise RunNotFoundError(f"no released model in {RELEASED} (a copy of the package without it?); "
                               f"pass --checkpoint {REPORT} or a run folder")
    return ModelChoice(released.path, released.name, "released",
                       "the default: the released model (--checkpoint report: the latest local report's run)")


def report_model(folder: Path | None = None) -> ModelChoice:
    """``--checkpoint report``: the held-out-patient run of the latest local report that is not a smoke
    test; RunNotFoundError when there is none."""
    skipped = sorted(r["profile"] for r in _records(folder) if is_smoke(r))
    note = f"; smoke-test reports are never chosen (skipped: {', '.join(skipped)})" if skipped else ""
    try:
        rec = latest_profile_record(folder)
    except RunNotFoundError as exc:
        raise RunNotFoundError(f"{exc}{note}") from None
    run_dir = default_run(rec["profile"], "cases", folder)
    return ModelChoice(run_dir, f"{rec['profile']} report run {run_dir.name}", REPORT,
                       f"asked for: the held-out-patient run of the latest local report ({rec['profile']} "
                       f"profile, {time.strftime('%Y-%m-%d %H:%M', time.localtime(rec['written']))}){note}")


def given_model(path: str | os.PathLike[str]) -> ModelChoice:
    """A model named on the command line (a run folder or a weights file)."""
    p = Path(path).absolute()
    run_dir = p if p.is_dir() else p.parent
    released = read_manifest(run_dir).get("release", {}).get("name")
    name = released or (p.name if p.is_file() and p.name != WEIGHTS else run_dir.name)
    return ModelChoice(p, name, "given", "named with --checkpoint")
