"""Never destroy a user's files (issue class 1): every writer (anonymise, convert, predict) refuses a
destination that is, lies inside or contains its input, refuses a non-empty destination unless asked
to replace lungseg's own earlier output, and leaves every file that existed before unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from synthetic import write_series

from lungseg import cli
from lungseg.io import writing

CASE = "Case_Z"


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (relative path -> digest), folders as 'dir'."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A user's working folder: two cases and a notes file."""
    write_series(tmp_path / "WORK" / CASE, n=3)
    write_series(tmp_path / "WORK" / "Case_Y", n=2)
    (tmp_path / "WORK" / "notes.txt").write_text("my notes\n")
    return tmp_path / "WORK"


def _ckpt(tmp_path: Path) -> Path:
    from builders import write_checkpoint

    return write_checkpoint(tmp_path / "run" / "model.pt")


def _commands(work: Path, dst: Path, ckpt: Path) -> dict[str, list[str]]:
    src = str(work / CASE)
    return {"anonymise": ["anonymise", src, str(dst)],
            "convert": ["convert", src, "--out", str(dst / "vol.npy") if dst.suffix != ".npy" else str(dst)],
            "predict": ["predict", src, "--out", str(dst), "--checkpoint", str(ckpt)]}


@pytest.mark.parametrize("command", ["anonymise", "convert", "predict"])
@pytest.mark.parametrize("where", ["the-source", "inside-the-source", "parent-of-the-source",
                                   "cwd-dot-parent"])
def test_destinations_overlapping_the_input_are_refused(tmp_path: Path, work: Path, command: str,
                                                        where: str, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _ckpt(tmp_path)
    dst = {"the-source": work / CASE, "inside-the-source": work / CASE / "out",
           "parent-of-the-source": work, "cwd-dot-parent": Path(".")}[where]
    if where == "cwd-dot-parent":  # cd WORK && python -m lungseg anonymise Case_Z .
        monkeypatch.chdir(work)
    if command == "convert" and where in ("parent-of-the-source", "cwd-dot-parent"):
        pytest.skip("convert writes one file: a file beside the source folder is not an overlap")
    before = _tree(work)
    argv = _commands(work, dst, ckpt)[command]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "error:" in err and ("input" in err or "not empty" in err), err
    assert _tree(work) == before


@pytest.mark.parametrize("command", ["anonymise", "predict"])
def test_a_folder_of_the_users_is_never_replaced(tmp_path: Path, work: Path, command: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _ckpt(tmp_path)
    dst = tmp_path / "results"
    dst.mkdir()
    (dst / "earlier_case.txt").write_text("keep me\n")
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert cli.main([*_commands(work, dst, ckpt)[command], *extra]) == 1
        assert "error:" in capsys.readouterr().err
        assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", ["anonymise", "predict"])
def test_overwrite_replaces_only_its_own_output(tmp_path: Path, work: Path, command: str) -> None:
    ckpt = _ckpt(tmp_path)
    dst = tmp_path / "out"
    argv = _commands(work, dst, ckpt)[command]
    assert cli.main(argv) == 0
    assert writing.read_marker(dst)["tool"] == command
    assert cli.main(argv) == 1  # not without --overwrite
    assert cli.main([*argv, "--overwrite"]) == 0
    (dst / "my_notes.txt").write_text("mine\n")  # the user adds a file to the output folder
    assert cli.main([*argv, "--overwrite"]) == 1
    assert (dst / "my_notes.txt").read_text() == "mine\n"
    other = "predict" if command == "anonymise" else "anonymise"
    (dst / "my_notes.txt").unlink()
    assert cli.main([*_commands(work, dst, ckpt)[other], "--overwrite"]) == 1  # another tool's output


def test_convert_never_overwrites_a_file_it_did_not_write(tmp_path: Path, work: Path) -> None:
    out = tmp_path / "mine.npy"
    out.write_bytes(b"a user's file")
    argv = ["convert", str(work / CASE), "--out", str(out)]
    assert cli.main(argv) == 1 and cli.main([*argv, "--overwrite"]) == 1
    assert out.read_bytes() == b"a user's file"
    fresh = tmp_path / "vol.npy"
    argv = ["convert", str(work / CASE), "--out", str(fresh)]
    assert cli.main(argv) == 0 and cli.main(argv) == 1 and cli.main([*argv, "--overwrite"]) == 0
    (tmp_path / "user.json").write_text("{}")  # a sidecar the user wrote: not ours
    assert cli.main(["convert", str(work / CASE), "--out", str(tmp_path / "user.npy"), "--overwrite"]) == 1
    assert (tmp_path / "user.json").read_text() == "{}"


def test_a_symbolic_link_into_the_source_is_refused(tmp_path: Path, work: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(work / CASE / "sub", target_is_directory=True)
    before = _tree(work)
    assert cli.main(["anonymise", str(work / CASE), str(link)]) == 1
    assert _tree(work) == before


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("old")

    def fail(fh: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        writing.atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_staged_folder_leaves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), writing.staged_folder(tmp_path / "out", "test") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
