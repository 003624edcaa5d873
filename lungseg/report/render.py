"""The report as one HTML page, readable without Jupyter: ``build/executed/PROFILE/report/index.html``.

The executed notebooks are concatenated into one notebook (a heading per notebook, the run's
provenance first) and rendered by nbconvert's ``lab`` template with every code cell folded into a
``<details>`` element; figures are the notebooks' own outputs, embedded as data URIs, so the page is
one self-contained file.
"""

from __future__ import annotations

import html
from pathlib import Path

import nbformat

from lungseg.io import writing

REPORT_DIR = "report"
INDEX = "index.html"
# nbconvert's lab template with the input of every code cell folded (open it with a click).
_FOLDED = """{%- extends 'lab/index.html.j2' -%}
{% block input_group -%}
<details class="lungseg-code"><summary>code</summary>
{{ super() }}
</details>
{%- endblock input_group %}
"""


def provenance_markdown(prov: dict) -> str:
    """The run's provenance (profile, commit, date, machine, wall time per notebook) as Markdown."""
    rows = "\n".join(f"| {html.escape(nb)} | {rec.get('wall_s', 0) / 60:.1f} min | {rec.get('date', '')} |"
                     for nb, rec in prov.get("notebooks", {}).items())
    return (f"# lungseg report — profile `{prov.get('profile', '')}`\n\n"
            f"- commit `{prov.get('git_commit', 'unknown')}`, run on {prov.get('date', '')}\n"
            f"- machine: {html.escape(prov.get('machine', ''))}, torch CPU capability "
            f"{prov.get('cpu_capability', '')}\n\n"
            "Every figure and number below is an output of the notebooks as executed by `./run_all.sh` "
            "(code folded: click *code* to open it). The notebooks' parameters are in "
            "`provenance.json` beside this folder.\n\n"
            "| notebook | wall time | date |\n| --- | --- | --- |\n" + rows + "\n")


def combined_notebook(notebooks: list[Path], prov: dict) -> nbformat.NotebookNode:
    """One notebook: the provenance, then each executed notebook under a heading of its name."""
    out = nbformat.v4.new_notebook()
    out.cells.append(nbformat.v4.new_markdown_cell(provenance_markdown(prov)))
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        out.cells.append(nbformat.v4.new_markdown_cell(f"---\n\n# Notebook `{path.stem}`"))
        out.cells.extend(nb.cells)
        out.metadata.setdefault("language_info", nb.metadata.get("language_info", {}))
    return out


def render_report(notebooks: list[Path], prov: dict, out_dir: Path) -> Path:
    """Write ``out_dir/report/index.html`` (atomically) from the executed ``notebooks``."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"folded.j2": _FOLDED})])
    exporter.template_file = "folded.j2"
    body, _ = exporter.from_notebook_node(combined_notebook(notebooks, prov),
                                          resources={"metadata": {"name": f"lungseg {prov.get('profile')}"}})
    target = out_dir / REPORT_DIR / INDEX
    target.parent.mkdir(parents=True, exist_ok=True)
    return writing.atomic_write_text(target, body)
