"""Safe writing: the one place where lungseg creates, replaces or removes files.

Rules every writer follows (``anonymise``, ``convert``, ``predict``, ``release``, the run store;
the cache builds each entry in a temporary folder renamed into place by the same rule, in
:mod:`lungseg.io.cache`):

- a file is written under a temporary name beside its final name and renamed into place, so a
  crash never leaves a half-written file under the real name (:func:`atomic_write`);
- an output folder is built as a temporary sibling and renamed into place when complete
  (:func:`staged_folder`); it is never equal to, inside, or a parent of any input;
- a folder that already holds something is replaced only when the user asked for it
  (``overwrite``) *and* it carries the marker :data:`MARKER` that lungseg wrote there, listing every
  file it wrote: a folder holding anything else (a notes file, another case) is refused, so lungseg
  never deletes or overwrites a file it did not create itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from lungseg import __version__

MARKER = ".lungseg-output.json"
"""Written last into every output folder: which tool wrote it and the files it wrote."""


class UnsafeOutputError(ValueError):
    """An output location that could destroy or mix with files lungseg did not create."""


def _tag() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, then rename it to ``path``.

    The parent folder must exist. On any error the temporary file is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{_tag()}")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def _related(dst: Path, src: Path) -> str | None:
    """How ``dst`` overlaps ``src`` ("is", "is inside", "contains"), or None (links resolved)."""
    d, s = dst.resolve(), src.resolve()
    if d == s:
        return "is"
    if s in d.parents:
        return "is inside"
    if d in s.parents:
        return "contains"
    return None


def check_not_overlapping(dst: str | os.PathLike[str], sources: Iterable[str | os.PathLike[str]],
                          what: str = "output") -> None:
    """Refuse an output path that is, lies inside, or contains any of ``sources``."""
    for src in sources:
        how = _related(Path(dst), Path(src))
        if how is not None:
            raise UnsafeOutputError(f"refusing to write: the {what} {Path(dst).absolute()} {how} the "
                                    f"input {Path(src).absolute()}; choose a separate destination")


def read_marker(folder: Path) -> dict | None:
    """The marker of a lungseg output folder, or None when there is none (or it is unreadable)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


def _contents(folder: Path) -> set[str]:
    """Every file and folder below ``folder``, as relative POSIX paths."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def check_replaceable(dst: str | os.PathLike[str], overwrite: bool, tool: str) -> None:
    """Refuse ``dst`` unless it is absent, an empty folder, or (with ``overwrite``) a folder holding
    exactly an earlier output of lungseg ``tool`` (its :data:`MARKER` lists everything in it)."""
    dst = Path(dst)
    if not dst.exists() and not dst.is_symlink():
        blocker = next((p for p in dst.parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UnsafeOutputError(f"cannot create {dst}: {blocker} is a file, not a folder")
        return
    if dst.is_symlink() or not dst.is_dir():
        raise UnsafeOutputError(f"{dst} exists and is not a folder; choose another destination")
    held = _contents(dst)
    if not held:
        return
    if not overwrite:
        raise UnsafeOutputError(f"{dst} is not empty; choose a new folder, or pass --overwrite to replace "
                                f"an earlier {tool} output there")
    marker = read_marker(dst)
    if marker is None or marker.get("tool") != tool:
        raise UnsafeOutputError(f"{dst} was not written by lungseg {tool} (no {MARKER} of it): "
                                "--overwrite replaces only lungseg's own earlier output")
    ours = set(marker["files"]) | {MARKER}
    ours |= {parent.as_posix() for f in marker["files"] for parent in Path(f).parents if str(parent) != "."}
    foreign = sorted(held - ours)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise UnsafeOutputError(f"{dst} holds files lungseg {tool} did not write ({shown}); nothing "
                                "was replaced: move them away or choose another destination")


def write_marker(folder: Path, tool: str, extra: dict | None = None) -> None:
    """Record in ``folder`` that lungseg ``tool`` wrote every file now in it."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    marker = {"tool": tool, "lungseg_version": __version__, "files": files, **(extra or {})}
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=1) + "\n")


def stage_names(dst: Path, label: str, tag: str) -> tuple[Path, Path]:
    """The temporary siblings :func:`staged_folder` uses for ``dst``: (partial, old)."""
    partial, old = (dst.with_name(f".{dst.name}.{label}{kind}-{tag}") for kind in ("partial", "old"))
    return partial, old


@contextmanager
def staged_folder(dst: str | os.PathLike[str], tool: str, *, overwrite: bool = False,
                  sources: Iterable[str | os.PathLike[str]] = (), extra: dict | None = None,
                  label: str = "") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dst``; when the block succeeds, mark it and rename it
    to ``dst``. Checks first (:func:`check_not_overlapping`, :func:`check_replaceable`): ``dst`` is
    replaced only when it held lungseg ``tool``'s own earlier output. On any error nothing changes.
    The temporary siblings are named ``.NAME.LABELpartial-TAG`` and ``.NAME.LABELold-TAG``
    (:func:`stage_names`), so a caller can recognise its own leftovers after a crash."""
    dst = Path(dst).absolute()
    check_not_overlapping(dst, sources)
    check_replaceable(dst, overwrite, tool)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = stage_names(dst, label, _tag())
    tmp.mkdir()  # mkdir, not mkdtemp: the usual permissions (umask), not 0700
    try:
        yield tmp
        write_marker(tmp, tool, extra)
        check_replaceable(dst, overwrite, tool)  # again: something may have appeared meanwhile
        if dst.exists():
            os.replace(dst, old)
            try:
                os.replace(tmp, dst)
            except OSError:
                os.replace(old, dst)  # put the previous output back
                raise
        else:
            os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)  # only ever our own earlier output (checked above)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks: the fingerprint of a model's weights."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
