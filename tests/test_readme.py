"""The README's result and benchmark blocks are exactly what the committed outputs give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungseg import paths
from lungseg.report import readme


def test_readme_blocks_agree_with_the_committed_outputs() -> None:
    if not (paths.FIGURES / "summary.json").is_file():
        pytest.skip("no committed full run (figures/summary.json)")
    assert readme.stale() == [], "README numbers differ from figures/: run python -c " \
                                 "'from lungseg.report import readme; readme.update()'"


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


def test_predict_block_renders_the_measured_times(tmp_path: Path) -> None:
    assert "not measured" in readme.predict_block(tmp_path)
    stage = {"wall_s": 8.26, "startup_s": 1.5, "read_s": 0.4, "inference_s": 2.5, "postprocess_s": 1.9,
             "exports_s": 1.9}
    case = {"case": "Case_008", "slices": 148, "side_split_method": "components",
            "onnxruntime": stage, "torch": {**stage, "wall_s": 11.0, "inference_s": 3.4},
            "dice_onnxruntime_vs_torch": {"right": 1.0, "left": 0.99998}}
    (tmp_path / "predict_timing.json").write_text(json.dumps(
        {"repeat": 3, "cpu_capability": "AVX2", "cores": 2, "warm_up_wall_s": 12.3, "cases": [case]}))
    block = readme.predict_block(tmp_path)
    assert "| Case_008 | 148 | components | **8.3 s** | 11.0 s |" in block
    assert "2.5 / 3.4" in block and "1.00000 / 0.99998" in block and "8.3–8.3 s per case" in block


def test_batch_block_renders_the_measured_and_extrapolated_times(tmp_path: Path) -> None:
    assert "not measured" in readme.batch_block(tmp_path)
    run = {"wall_s": 40.0, "worker_peak_rss_mb": [800.0, 700.0], "masks_equal_loop": True,
           "nifti_bytes_equal_loop": True, "workers": 2}
    d = {"cases": [f"Case_00{i}" for i in range(8)], "slices": {"Case_000": 154, "Case_001": 120},
         "model": "m", "cores": 2, "load_average_start_end": [0.5, 1.9],
         "loop_predict": {"wall_s": 80.0, "peak_rss_mb": [700.0, 780.0]}, "batch_default": run,
         "batch_in_process": {**run, "peak_rss_mb": 900.0},
         "batch_dask_shell": {**run, "cluster_start_s": 3.2},
         "batch_12": {"series": 12, "wall_s": 60.0, "workers": 2, "files": 1800, "scan_s": 1.8,
                      "worker_s_per_series": 9.0, "fixed_s": 6.0}}
    (tmp_path / "batch_timing.json").write_text(json.dumps(d))
    block = readme.batch_block(tmp_path)
    assert "| 40.0 s | 12.0 | **2.00×** | 800 MB | identical bytes |" in block
    assert "| 12 series (measured) | 2 (this machine) | **60 s** |" in block
    # 6 s + 1000 x (9 s + 150 files x 1 ms) / 2 workers = 4581 s = 76 min
    assert "| 1,000 series (extrapolated) | 2 (this machine) | 76 min |" in block


def test_the_readme_is_short_and_its_pages_exist() -> None:
    """Install, usage, outputs in the README (at most 200 lines); the rest in docs/, every generated
    block on some page and every local link resolving."""
    import re

    text = readme.README.read_text()
    assert len(text.splitlines()) <= 200
    first = text.splitlines()[2:5]  # the two commands a new user types, first
    assert first[0] == "```bash" and first[1].startswith("./run_all.sh ")
    assert first[2].startswith("./run_all.sh --tests")
    found = {m.group(2) for page in readme.pages() for m in readme._BLOCK.finditer(page.read_text())}
    assert set(readme.blocks()) <= found
    for page in readme.pages():
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_report_timing_block_renders_each_cpu_kind_and_its_levels(tmp_path: Path) -> None:
    from lungseg.report import bench_report

    summary = {"per_patient_tuned": {"dice": {"mean": 0.9801}},
               "cross_validation": {"per_structure": {
                   "Lung_R": {"dice": {"mean": 0.981}, "worst_case": {"dice": 0.969}},
                   "Lung_L": {"dice": {"mean": 0.977}, "worst_case": {"dice": 0.961}}}}}
    qc_eval = {"heldout": {"bad": {"rate": 0.97}, "sound": {"rate": 0.01}}}
    lv = bench_report.levels(summary, qc_eval)
    assert lv["cv_worst_patient_dice"] == 0.961 and lv["heldout_tuned_dice"] == 0.9801
    runs = [{"isa": isa, "cpu_capability": cap, "machine": "vm x86_64 2 cpu",
             "notebooks_s": {"01_dicom": 60.0, "02_train": 300.0}, "notebooks_total_s": 360.0, "levels": lv}
            for isa, cap in (("native", "AVX512"), ("avx2", "AVX2"))]
    (tmp_path / "report_timing.json").write_text(json.dumps(
        {"commit": "0123456789abc", "date": "2026-12-06T03:00:00Z", "profile": "cpu", "runs": runs}))
    block = readme.report_timing_block(tmp_path)
    assert "native (AVX512)" in block and "avx2 (AVX2)" in block and "**6.0 min**" in block
    assert "0.9810 / 0.9770 (0.9610)" in block and "97.0% / 1.0%" in block
