"""lungseg.report.bench on a synthetic case: the table comes out and the variants agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import write_case

from lungseg import cli, paths

CASE = "Case_900"


def test_dicom_benchmark_prints_a_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "default-cache"))  # restored afterwards
    write_case(tmp_path / "DATA", CASE, n=4)
    argv = ["dicom", "--cases", CASE, "--repeat", "1", "--data", str(tmp_path / "DATA"),
            "--cache-dir", str(tmp_path / "bench-cache")]
    assert cli.main(["bench", *argv]) == 0
    out = capsys.readouterr().out
    assert "naive/cold" in out
    assert any(line.startswith(CASE) and line.split()[1] == "4" for line in out.splitlines())
    assert any(line.startswith("total") for line in out.splitlines())
    assert (tmp_path / "bench-cache" / CASE).is_dir()


def test_repeat_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "dicom", "--repeat", "0"])
