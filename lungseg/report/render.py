"""The report as one HTML page, readable without Jupyter: ``build/executed/PROFILE/report/index.html``.

The executed notebooks are concatenated into one notebook (a heading per notebook, the generated
front page first: :mod:`lungseg.report.front`) and rendered by nbconvert's ``lab`` template with
every code cell folded into a ``<details>`` element; figures are the notebooks' own outputs,
embedded as data URIs, so the page is one self-contained file.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from lungseg.io import writing
from lungseg.report import front

REPORT_DIR = "report"
INDEX = "index.html"
# nbconvert's lab template with the input of every code cell folded (open it with a click), and each
# image's alt text from its output's metadata (the lab template drops it; plots.show sets it).
_FOLDED = """{%- extends 'lab/index.html.j2' -%}
{% block input_group -%}
<details class="lungseg-code"><summary>code</summary>
{{ super() }}
</details>
{%- endblock input_group %}
{% block data_png scoped -%}
{%- set alt = (output | get_metadata('alt', 'image/png')) or 'figure' -%}
{{ super() | replace('<img src=', '<img alt="' ~ (alt | escape_html) ~ '" src=') }}
{%- endblock data_png %}
"""


QUESTION = "**Question:**"
"""How a notebook's first cell states its question (the front page's contents list them)."""


def question(nb: nbformat.NotebookNode) -> str:
    """The question a notebook's first Markdown cell states, or ""."""
    for cell in nb.cells[:1]:
        for line in cell.source.splitlines():
            if line.startswith(QUESTION):
                return line[len(QUESTION):].strip()
    return ""


def combined_notebook(notebooks: list[Path], front_page: str) -> nbformat.NotebookNode:
    """One notebook: the front page, then each executed notebook under a heading of its name."""
    out = nbformat.v4.new_notebook()
    out.cells.append(nbformat.v4.new_markdown_cell(front_page))
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        out.cells.append(nbformat.v4.new_markdown_cell(f"---\n\n# Notebook `{path.stem}`"))
        out.cells.extend(nb.cells)
        out.metadata.setdefault("language_info", nb.metadata.get("language_info", {}))
    return out


def render_report(notebooks: list[Path], prov: dict, out_dir: Path, summary: dict | None = None,
                  qc_eval: dict | None = None) -> Path:
    """Write ``out_dir/report/index.html`` (atomically) from the executed ``notebooks``, after the front
    page (:func:`lungseg.report.front.front_page`) of the run's ``provenance``, ``summary.json`` and
    ``qc_evaluation.json``."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"folded.j2": _FOLDED})])
    exporter.template_file = "folded.j2"
    questions = {p.stem: question(nbformat.read(p, as_version=4)) for p in notebooks}
    page = combined_notebook(notebooks, front.front_page(prov, summary, qc_eval, questions))
    body, _ = exporter.from_notebook_node(page,
                                          resources={"metadata": {"name": f"lungseg {prov.get('profile')}"}})
    target = out_dir / REPORT_DIR / INDEX
    target.parent.mkdir(parents=True, exist_ok=True)
    return writing.atomic_write_text(target, body)
