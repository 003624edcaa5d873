"""Profiles and notebooks agree: every profile parameter is a parameter of its notebook."""

from __future__ import annotations

import dataclasses

import papermill as pm
import pytest

from lungseg import cli
from lungseg.network import config
from lungseg.report import runner


def test_every_profile_parameter_exists_in_its_notebook() -> None:
    notebooks = {nb.stem: nb for nb in runner.notebooks()}
    assert list(notebooks) == ["01_dicom", "02_train", "03_eval", "05_qc"]  # 04_cohort: a batch folder's
    plan = {f.name for f in dataclasses.fields(config.TrainingPlan)} - {"config"}
    training = {f.name for f in dataclasses.fields(config.TrainConfig)} | plan
    for profile in config.profile_names():
        for stem, params in config.load_profile(profile).items():
            assert stem in notebooks, f"{profile}.yaml names an unknown notebook {stem}"
            declared = set(pm.inspect_notebook(str(notebooks[stem])))
            if stem == "02_train":  # its training plan comes from the profile (config.training_plan)
                assert set(params) - training <= set(runner.TRAIN_NOTEBOOK_PARAMS)
                config.training_plan(profile)  # every key is understood
                continue
            unknown = set(params) - declared
            assert not unknown, f"{profile}.yaml/{stem}: {sorted(unknown)} not in the parameters cell"
    for stem in runner.TAKES_PROFILE:  # runner.run injects it
        assert "profile" in pm.inspect_notebook(str(notebooks[stem])), stem


def test_02_train_restates_no_training_parameter() -> None:
    """A new TrainConfig field needs no edit of the notebook: it takes a profile plus overrides."""
    declared = set(pm.inspect_notebook(str(runner.NOTEBOOKS / "02_train.ipynb")))
    training = {f.name for f in dataclasses.fields(config.TrainConfig)}
    assert declared & training <= {"data_dir", "profile"}
    assert {"profile", "overrides"} <= declared


def test_03_eval_takes_no_training_parameters() -> None:
    """The run is found through 02_train's record, never recomputed from restated parameters."""
    declared = set(pm.inspect_notebook(str(runner.NOTEBOOKS / "03_eval.ipynb")))
    training = {f.name for f in dataclasses.fields(config.TrainConfig)}
    assert declared & training <= {"device", "threads", "data_dir", "profile"}
    for profile in config.profile_names():
        assert set(config.load_profile(profile).get("03_eval", {})) & training <= {"device", "threads"}


def test_unknown_profile_and_notebook_selection() -> None:
    with pytest.raises(config.ProfileError, match="unknown profile 'nope'.*quick"):
        config.load_profile("nope")
    assert [nb.stem for nb in runner.notebooks(["02"])] == ["02_train"]
    with pytest.raises(ValueError, match="no notebook matches"):
        runner.notebooks(["99"])
    assert cli.main(["report", "--profile", "nope"]) == 2  # a message, not a traceback


def _one_notebook_report(tmp_path, monkeypatch, name: str, parameters: str, profile: dict,
                         cells: list[str]) -> None:
    """A report of one notebook ``name`` (a tagged ``parameters`` cell, then ``cells``) and a profile
    "t" giving it ``profile``, in ``tmp_path``, with the report runner pointed at them."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / f"{name}.ipynb")
    (tmp_path / "params").mkdir()
    lines = "".join(f"  {k}: {v}\n" for k, v in profile.items())
    (tmp_path / "params" / "t.yaml").write_text(f"{name}:\n{lines}")
    monkeypatch.setattr(runner, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(config, "PROFILES", tmp_path / "params")
    monkeypatch.setattr(runner.paths, "BUILD", tmp_path / "build")


def test_a_failing_cell_is_named_and_exits_nonzero(tmp_path, monkeypatch, capsys) -> None:
    _one_notebook_report(tmp_path, monkeypatch, "01_fail", "x = 1  # a parameter", {"x": 7},
                         ["y = x + 1", "raise ValueError(f'broken {x}')"])
    assert runner.run("t", kernel="python3") == 1
    err = capsys.readouterr().err
    assert "FAILED: " in err and "01_fail.ipynb, cell" in err and "ValueError: broken 7" in err


def test_a_headless_run_stores_figures_as_images_and_no_progress(tmp_path, monkeypatch) -> None:
    """The report's own execution path (runner.run → execute): a Figure made without pyplot is an
    image in the executed notebook and the HTML, a progress bar leaves one summary line and no stderr,
    and the kernel has no transport warning to print."""
    import json

    import nbformat

    _one_notebook_report(tmp_path, monkeypatch, "01_fig", "n = 1", {"n": 3}, [
        "from matplotlib.figure import Figure\n"
        "from lungseg.progress import bar\n"
        "from lungseg.report import plots\n"
        "for _ in bar(range(n), desc='work', unit='step'):\n"
        "    pass\n"
        "fig = Figure()\n"
        "fig.subplots().plot([0, 1])\n"
        "plots.show(fig)"])
    assert runner.run("t", kernel="python3") == 0
    executed = tmp_path / "build" / "executed" / "t"
    outputs = nbformat.read(executed / "01_fig.ipynb", 4).cells[-1].outputs
    assert [o.get("name") for o in outputs if o.output_type == "stream"] == ["stdout"]
    assert outputs[0].text.startswith("work: 3 steps in ")
    assert [o.output_type for o in outputs][1:] == ["display_data"] and "image/png" in outputs[1].data
    page = (executed / "report" / "index.html").read_text()
    assert "<Figure size" not in page and page.count('" src="data:image/png;base64') == 1
    assert '<img alt="figure"' in page  # alt text: no nbconvert warning
    assert '<h2 id="Limitations">' in page  # the generated front page
    prov = json.loads((executed / "provenance.json").read_text())
    assert prov["notebooks"]["01_fig"]["parameters"] == {"n": 3}


def test_the_front_page_and_discussions_quote_the_committed_run() -> None:
    """Known values: the numbers on the front page and in 03's and 05's discussions are those of the
    committed summary.json and qc_evaluation.json, formatted, never typed."""
    import json

    from lungseg import paths
    from lungseg.report import discussion, front

    summary_file, qc_file = paths.FIGURES / "summary.json", paths.FIGURES / "qc_evaluation.json"
    if not (summary_file.is_file() and qc_file.is_file()):
        pytest.skip("no committed full run")
    summary, qc_eval = json.loads(summary_file.read_text()), json.loads(qc_file.read_text())
    page = front.front_page({"profile": "cpu", "notebooks": {}}, summary, qc_eval, {"01_dicom": "Why?"})
    for section in ("Aim", "What it reproduces", "Data", "Methods in brief", "Key results", "Limitations",
                    "Reproducibility", "Contents"):
        assert f"\n## {section}\n" in page or page.startswith(f"## {section}")
    held = summary["per_patient_tuned"]["dice"]
    assert f"{held['mean']:.4f} [{held['min']:.4f}–{held['max']:.4f}]" in page
    bad = qc_eval["heldout"]["bad"]
    assert f"**{bad['flagged']} of {bad['series']}** bad masks" in page
    assert "- `01_dicom`: Why?" in page and "CC BY 3.0" in page and "GTV" in page
    assert f"3D Dice of {held['mean']:.4f}" in discussion.evaluation(summary)
    assert f"QC flags {bad['flagged']} of {bad['series']} bad masks" in discussion.quality_control(qc_eval)
    assert "(03_eval did not run" in front.front_page({"profile": "x"})


def test_every_checked_cell_is_stored_as_run() -> None:
    """nbval refuses a checked cell stored without an execution count ("unrun reference cell")."""
    import nbformat

    for nb in runner.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"):
        for cell in nbformat.read(nb, 4).cells:
            if cell.cell_type == "code" and cell.source.startswith("# NBVAL_CHECK_OUTPUT"):
                assert cell.execution_count is not None and cell.outputs, f"{nb.name}: {cell.source[:80]}"


def test_a_rerun_with_nothing_changed_executes_nothing(tmp_path, monkeypatch, capsys) -> None:
    """The second run of an unchanged report skips the notebook (its figure staged again, its
    provenance kept); a changed parameter, or --rerun, executes it again."""
    import json

    log = tmp_path / "executions.txt"
    _one_notebook_report(tmp_path, monkeypatch, "01_count", "n = 1\nfigures_dir = ''\nw = ''",
                         {"n": 3, "figures_dir": str(tmp_path / "out")},
                         [f"from pathlib import Path\n"
                          f"with open({str(log)!r}, 'a') as fh:\n"
                          f"    fh.write(f'{{n}}\\n')\n"
                          f"Path(figures_dir).mkdir(parents=True, exist_ok=True)\n"
                          f"Path(figures_dir, 'n.txt').write_text(str(n))"])
    executions = lambda: log.read_text().split()  # noqa: E731
    assert runner.run("t", kernel="python3") == 0
    prov_file = tmp_path / "build" / "executed" / "t" / "provenance.json"
    first = json.loads(prov_file.read_text())["notebooks"]["01_count"]
    (tmp_path / "out" / "n.txt").unlink()  # published again from the stored execution
    assert runner.run("t", kernel="python3") == 0
    assert executions() == ["3"]
    assert "not executed again" in capsys.readouterr().out
    assert (tmp_path / "out" / "n.txt").read_text() == "3"
    assert json.loads(prov_file.read_text())["notebooks"]["01_count"] == first
    assert runner.run("t", kernel="python3", rerun=True) == 0
    assert executions() == ["3", "3"]
    weights = tmp_path / "weights.bin"  # a parameter naming a file: its bytes are an input
    weights.write_bytes(b"a")
    (tmp_path / "params" / "t.yaml").write_text(
        f"01_count:\n  n: 3\n  figures_dir: {str(tmp_path / 'out')!r}\n  w: {str(weights)!r}\n")
    assert runner.run("t", kernel="python3") == 0 and runner.run("t", kernel="python3") == 0
    assert executions() == ["3", "3", "3"]
    weights.write_bytes(b"b")
    assert runner.run("t", kernel="python3") == 0
    assert executions() == ["3", "3", "3", "3"]
    (tmp_path / "params" / "t.yaml").write_text(
        f"01_count:\n  n: 4\n  figures_dir: {str(tmp_path / 'out')!r}\n")
    assert runner.run("t", kernel="python3") == 0
    assert executions() == ["3", "3", "3", "3", "4"] and (tmp_path / "out" / "n.txt").read_text() == "4"


def test_the_kernel_shutdown_race_alone_is_silenced() -> None:
    """ipykernel's control task destroyed at shutdown is dropped from the asyncio log; any other
    pending task, or another asyncio message, still shows."""
    import logging

    from lungseg.report import execute

    race = ("Task was destroyed but it is pending!\ntask: <Task pending name='Task-48' "
            "coro=<Kernel.dispatch_control() running at ipykernel/kernelbase.py:372>>")
    other = "Task was destroyed but it is pending!\ntask: <Task pending coro=<work() running at x.py:3>>"
    execute.quiet_shutdown_race()
    execute.quiet_shutdown_race()  # once only
    log = logging.getLogger("asyncio")
    assert sum(isinstance(f, execute._ShutdownRace) for f in log.filters) == 1

    def passes(msg: str) -> bool:
        return bool(log.filter(logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)))

    assert not passes(race) and passes(other) and passes("Unclosed client session")
