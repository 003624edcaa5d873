"""Whether a notebook's last execution still stands, so that a rerun with nothing changed skips it.

``lungseg report`` (``./run_all.sh``) asks :func:`key` for each notebook before executing it. The key
hashes everything the notebook's results depend on:

- the notebook's bytes, its parameters (and the bytes of any file a parameter names) and the profile
  file;
- the package's code and the pinned requirements;
- the machine's numerics: torch's version and CPU capability, the ISA and thread limits in the
  environment, the CPU model (bf16 and float32 give other digits);
- the data, by content (:func:`lungseg.io.cache.content_key` of every case);
- for notebooks that read a profile's trained runs, every file of those runs.

After a run, :func:`remember` stores each executed notebook's key (its inputs as they were when it
started, the runs as the whole run left them, so that the next run's keys match) with the files it
wrote into the staging folder. A notebook whose stored key equals its key now is not executed: its
staged files are put back as they were and its executed copy and provenance record stay.
``lungseg report --rerun`` executes every notebook anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lungseg import paths
from lungseg.io import cache, writing

ENV_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "LUNGSEG_DATA", "LUNGSEG_PROFILE", "LUNGSEG_CACHE")
"""Environment variables that change what a notebook computes (numerics, threads, which inputs)."""
KEY_FILE = "key.json"


@dataclass(frozen=True)
class Entry:
    """A notebook's last successful execution: its key and the staged files it wrote."""

    folder: Path
    key: str
    files: tuple[str, ...]
    """Paths relative to the staging folder."""


def _hash_files(h: hashlib._Hash, files: Iterable[Path], root: Path) -> None:
    for f in sorted(files):
        h.update(f"{f.relative_to(root).as_posix()}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())


def _code(h: hashlib._Hash) -> None:
    package = Path(__file__).resolve().parents[1]
    _hash_files(h, (f for f in package.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                    and f.suffix != ".pyc"), package)
    for name in ("requirements.txt", "pyproject.toml"):
        if (paths.ROOT / name).is_file():
            h.update(name.encode() + (paths.ROOT / name).read_bytes())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _machine(h: hashlib._Hash) -> None:
    import torch

    h.update(json.dumps([torch.__version__, torch.backends.cpu.get_cpu_capability(), _cpu_model(),
                         os.cpu_count(), platform.machine(), platform.python_version(),
                         {k: os.environ.get(k) for k in ENV_VARS}]).encode())


def _data(h: hashlib._Hash, data: str | None) -> None:
    try:
        root = paths.data_dir(data)
    except (FileNotFoundError, ValueError):  # no data: the notebook reports it when it runs
        h.update(f"no data {data}".encode())
        return
    h.update(str(root.resolve()).encode())
    for case_id in paths.list_cases(root):
        if paths.mask_file(root, case_id).is_file():
            h.update(f"{case_id}\0{cache.content_key(case_id, root)}\n".encode())


def _runs(h: hashlib._Hash, profile: str) -> None:
    """Every file of the runs the profile's 02_train recorded (none yet: nothing added)."""
    from lungseg.network import runs, selection

    try:
        rec = selection.profile_record(profile)
    except runs.RunNotFoundError:
        return
    dirs = [*rec["runs"].values(), *rec["folds"], *([rec["plain"]] if rec.get("plain") else [])]
    h.update(json.dumps({k: v for k, v in rec.items() if k != "written"}, sort_keys=True).encode())
    for d in sorted(set(dirs)):
        folder = Path(d)
        h.update(f"run {d}\n".encode())
        if folder.is_dir():
            _hash_files(h, (f for f in folder.iterdir() if f.is_file()), folder)


def inputs_key(notebook: Path, params: dict, profile: str, data: str | None) -> str:
    """The hex hash of what ``notebook`` executed with ``params`` reads besides trained runs: its bytes,
    parameters, profile file, the package's code, the machine's numerics and the data (taken before
    it executes: an edit during the run is a change for the next one)."""
    h = hashlib.sha256()
    h.update(notebook.read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for name, value in sorted(params.items()):  # a parameter naming a file (03's reference weights)
        f = paths.resolve(value) if isinstance(value, str) and value else None
        if f is not None and f.is_file():
            h.update(f"{name}\0".encode() + hashlib.sha256(f.read_bytes()).digest())
    from lungseg.network import config

    profile_file = config.PROFILES / f"{profile}.yaml"
    if profile_file.is_file():
        h.update(profile_file.read_bytes())
    _code(h)
    _machine(h)
    _data(h, data)
    return h.hexdigest()


def key(inputs: str, profile: str, reads_runs: bool) -> str:
    """The notebook's key: its :func:`inputs_key` and, for a notebook that reads ``profile``'s trained
    runs, every file of those runs as they are now."""
    h = hashlib.sha256(inputs.encode())
    if reads_runs:
        _runs(h, profile)
    return h.hexdigest()


def entry(cache_dir: Path, name: str) -> Entry | None:
    """The stored execution of notebook ``name`` (None when there is none or it is incomplete)."""
    folder = cache_dir / name
    try:
        rec = json.loads((folder / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
    files = tuple(rec.get("files", []))
    if not all((folder / "files" / f).is_file() for f in files):
        return None
    return Entry(folder, rec.get("key", ""), files)


def forget(cache_dir: Path, name: str) -> None:
    """Drop the stored execution of ``name`` (done before executing it again: a failed execution must
    never be taken for the stored one)."""
    shutil.rmtree(cache_dir / name, ignore_errors=True)


def snapshot(staging: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``staging``, by relative path: what a notebook wrote is what
    changed between the snapshots before and after it."""
    if not staging.is_dir():
        return {}
    return {f.relative_to(staging).as_posix(): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in staging.rglob("*") if f.is_file()}


def written(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Files new or changed between two :func:`snapshot` calls."""
    return sorted(f for f, stat in after.items() if before.get(f) != stat)


def remember(cache_dir: Path, name: str, key_now: str, staging: Path, files: list[str]) -> None:
    """Store ``name``'s key and a copy of the staged ``files`` it wrote."""
    forget(cache_dir, name)
    folder = cache_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        out = folder / "files" / f
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(staging / f, out)
    record = {"key": key_now, "files": files}
    writing.atomic_write_text(folder / KEY_FILE, json.dumps(record, indent=1) + "\n")


def restore(stored: Entry, staging: Path) -> None:
    """Put a skipped notebook's staged files back, as its last execution wrote them."""
    for f in stored.files:
        out = staging / f
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(stored.folder / "files" / f, out)
