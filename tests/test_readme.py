"""The README's result and benchmark blocks are exactly what the committed outputs give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungseg import paths, readme


def test_readme_blocks_agree_with_the_committed_outputs() -> None:
    if not (paths.FIGURES / "summary.json").is_file():
        pytest.skip("no committed full run (figures/summary.json)")
    assert readme.stale() == [], "README numbers differ from figures/: run python -c " \
                                 "'from lungseg import readme; readme.update()'"


def test_render_replaces_only_marked_blocks(tmp_path: Path) -> None:
    text = ("intro 0.5\n<!-- BEGIN lungseg:results -->\nold 0.1\n<!-- END lungseg:results -->\n"
            "<!-- BEGIN lungseg:other -->\nkeep\n<!-- END lungseg:other -->\n")
    out = readme.render(text, {"results": "new 0.9\n"})
    assert out == text.replace("old 0.1\n", "new 0.9\n")
    summary = {"config": {"split": "cases", "image_size": 64},
               "per_patient": {"cases": ["A"], **{k: {"mean": 0.9, "min": 0.9, "max": 0.9}
                                                  for k in ("dice", "hd95_mm", "msd_mm")}},
               "lctsc_2017_lung": {"dice": [0.95, 0.98], "hd95_mm": [2.1, 14.5], "msd_mm": [0.59, 2.9]}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    blocks = readme.blocks(tmp_path)
    assert "0.9000 [0.9000–0.9000]" in blocks["results"]
    assert "no cross-validation" in blocks["crossval"]
    md = tmp_path / "README.md"
    md.write_text(text)
    assert readme.update(md, tmp_path) and readme.stale(md, tmp_path) == []
    assert not readme.update(md, tmp_path)  # a second update changes nothing
