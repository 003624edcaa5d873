"""Every path the project uses, anchored to the repository root.

papermill and nbval start kernels in different working directories, so nothing in the package may
depend on the current directory: relative paths given as parameters are resolved against ``ROOT``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT: Path = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding ``lungseg/``)."""

DATA_ENV = "LUNGSEG_DATA"
CACHE_ENV = "LUNGSEG_CACHE"
BUILD_ENV = "LUNGSEG_BUILD"
"""Another build folder: the tests set it, so that nothing they train or record ever becomes what a
user's commands resolve to (``build/runs/reports``, the default model)."""

CHECKOUT: bool = (ROOT / "pyproject.toml").is_file()
"""True in a clone of the repository (or an editable install); False for a package installed from a
wheel, whose ``ROOT`` is site-packages: nothing may be written there."""
DEFAULT_DATA: Path = ROOT / "data"
FIGURES: Path = ROOT / "figures"
MODELS: Path = ROOT / "models" if CHECKOUT else Path(__file__).resolve().parent / "released"
"""Released models, each a run folder with its model card: ``models/`` of a clone, committed; an
installed wheel carries them as ``lungseg/released/`` (pyproject.toml maps one to the other)."""
_DEFAULT_BUILD = (ROOT / "build" if CHECKOUT else
                  Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lungseg")


def _build_dir() -> Path:
    chosen = os.environ.get(BUILD_ENV)
    if not chosen:
        return _DEFAULT_BUILD
    p = Path(chosen).expanduser()
    return p if p.is_absolute() else ROOT / p


BUILD: Path = _build_dir()
"""Git-ignored outputs: executed notebooks, caches, checkpoints, quick-profile figures
(``$LUNGSEG_BUILD``, else ``<repo>/build`` in a clone, ``~/.cache/lungseg`` for an installed
package)."""


def resolve(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as an absolute path; a relative one is taken relative to the repo root, and one
    under ``build/`` follows ``$LUNGSEG_BUILD`` (profiles name their outputs ``build/quick/...``)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.parts and p.parts[0] == "build" and BUILD != _DEFAULT_BUILD:
        return BUILD.joinpath(*p.parts[1:])
    return ROOT / p


def relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repository when it lies inside it (what committed files record),
    else as given."""
    p = resolve(path)
    return str(p.relative_to(ROOT)) if is_within(p, ROOT) and p.is_relative_to(ROOT) else str(path)


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``path`` if given and non-empty, else ``$LUNGSEG_DATA``, else ``ROOT/data``.

    Raises FileNotFoundError with the expected layout when the folder is missing.
    """
    chosen = path or os.environ.get(DATA_ENV) or DEFAULT_DATA
    d = resolve(chosen)
    if not d.is_dir():
        raise FileNotFoundError(
            f"data directory not found: {d}\n"
            "Expected DATA/Images/Case_XXX/*.dcm and DATA/Segmentations/Case_XXX_seg.npz; "
            f"set it with --data DIR, ${DATA_ENV}, or unpack the cases with "
            "../shared/data/lctsc12/unpack.sh data"
        )
    return d


def is_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when ``path`` is ``folder`` or lies below it (symbolic links resolved)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def images_dir(data: Path, case_id: str) -> Path:
    """``DATA/Images/Case_XXX``: the case's DICOM folder."""
    return data / "Images" / case_id


def mask_file(data: Path, case_id: str) -> Path:
    """``DATA/Segmentations/Case_XXX_seg.npz``: the case's lung mask."""
    return data / "Segmentations" / f"{case_id}_seg.npz"


def list_cases(data: Path) -> list[str]:
    """Case ids (folder names under ``DATA/Images``), sorted."""
    images = data / "Images"
    if not images.is_dir():
        raise FileNotFoundError(f"no Images folder in the data directory: {images}")
    return sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))


def cache_dir() -> Path:
    """Where converted volumes are cached (``$LUNGSEG_CACHE`` or ``build/cache``); never under DATA."""
    return resolve(os.environ.get(CACHE_ENV) or BUILD / "cache")


def git_commit(*pathspec: str) -> str:
    """The repository's HEAD commit, with "+dirty" when tracked files under ``pathspec`` (git
    pathspecs, default the whole tree) have changes; "unknown" outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *(pathspec or (".",))], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
