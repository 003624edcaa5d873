"""The QC study's table (lungseg.evaluation.qc_calibrate.score_table): its series scored in worker
processes (the cohort machinery) give the rows scored in this process."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from builders import TINY_CHANNELS

from lungseg.evaluation import qc_calibrate
from lungseg.network import model, runs
from lungseg.network.config import TrainConfig

KINDS = ["original", "trim", "truncate_top"]
TIMES = ("inference_s", "qc_timings_s", "logits_shared")
"""How a row was computed, not what it says (a worker shares logits only with its own earlier series)."""


def _fold_run(folder: Path) -> runs.TrainResult:
    """An untrained tiny UNet saved as a fold run whose test patients are Case_000 and Case_003."""
    torch.manual_seed(0)
    net = model.UNet(base_channels=TINY_CHANNELS).eval()
    cfg = TrainConfig(cases=["Case_000", "Case_003"], test_cases=["Case_000", "Case_003"], image_size=16,
                      split="cases",
                      base_channels=TINY_CHANNELS, epochs=1)
    folder.mkdir(parents=True)
    torch.save({"model": net.state_dict(), "history": {"train_loss": [1.0]}, "config": cfg.to_dict()},
               folder / runs.WEIGHTS)
    return runs.load_run(folder)


def _same(a: object, b: object) -> bool:
    """Equal, floats to 1e-4 (one thread per worker may round a convolution differently)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4) or (math.isnan(a) and math.isnan(b))
    return a == b


def test_series_scored_in_workers_match_those_scored_here(tmp_path: Path, real_case: Path) -> None:
    run = _fold_run(tmp_path / "fold")
    here = qc_calibrate.score_table([run], KINDS, use_cache=False, workers=0)
    pooled = qc_calibrate.score_table([run], KINDS, use_cache=False, workers=2)
    assert [r["kind"] for r in here] == KINDS * 2 == [r["kind"] for r in pooled]  # two patients
    for a, b in zip(here, pooled, strict=True):
        assert _same({k: v for k, v in a.items() if k not in TIMES},
                     {k: v for k, v in b.items() if k not in TIMES})
    assert here[1]["slices"] < here[0]["slices"]  # trim cut slices: the variants really differ
    # One task per patient: its slice-keeping variants always reuse the unchanged scan's logits.
    assert all(r["logits_shared"] == (r["kind"] != "original") for r in here + pooled)


def test_cached_rows_are_used_only_at_the_runs_current_settings(tmp_path: Path, real_case: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold run retuned since its rows were cached (03_eval saves its inference.json) is scored
    again at its new threshold, not served the rows of the old one."""
    monkeypatch.setattr(qc_calibrate, "CACHE", tmp_path / "qc")
    run = _fold_run(tmp_path / "fold")
    first = qc_calibrate.score_table([run], ["original"], case_ids=["Case_000"], workers=0)
    again = qc_calibrate.score_table([run], ["original"], case_ids=["Case_000"], workers=0)
    assert first == again and first[0]["threshold"] == 0.5  # a cache hit at the default settings
    runs.save_inference(run.run_dir, 0.7, False, "a test")
    retuned = qc_calibrate.score_table([run], ["original"], case_ids=["Case_000"], workers=0)
    assert (retuned[0]["threshold"], retuned[0]["postprocess"]) == (0.7, False)


@pytest.mark.parametrize("workers, tasks, pooled", [(0, 10, False), (1, 10, False), (2, 1, False),
                                                     (2, 2, True)])
def test_a_pool_starts_only_when_it_pays(workers: int, tasks: int, pooled: bool) -> None:
    executor = qc_calibrate._executor(workers, tasks)
    try:
        assert (type(executor).__name__ == "DaskExecutor") == pooled
        if pooled:  # one-thread workers with lungseg.heap's malloc settings, not Dask's trim threshold
            from lungseg import heap

            env = executor.client.run(lambda: (tuple(os.environ.get(k) for k in heap.SETTINGS),
                                               os.environ.get("OMP_NUM_THREADS")))
            want = (tuple(heap.environ().values()), "1")
            assert want[0][1] != "65536" and list(env.values()) == [want, want]
    finally:
        executor.close()


def test_variants_that_keep_slices_share_the_source_logits_and_score_as_their_own(tmp_path: Path,
                                                                                   real_case: Path) -> None:
    """A variant that declares source_slices holds exactly those slices' pixels, a variant that
    changes some slices (metal streaks, a consolidation) shares the others' logits, and each row
    scored with the source's logits equals the row scored by running the network on its own pixels."""
    import numpy as np

    from lungseg.evaluation import failures
    from lungseg.io import cache

    run = _fold_run(tmp_path / "fold")
    case = cache.load_case("Case_000")
    threshold, clean = qc_calibrate.run_settings(run)
    source = qc_calibrate.source_logits(run, np.asarray(case.volume.hu))
    hu = np.asarray(case.volume.hu)
    for kind in ("original", "trim", "truncate_top", "truncate_bottom", "no_lung", "shift", "metal",
                 "consolidation"):
        variant = failures.make_failure(case.volume, np.asarray(case.mask), kind, np.random.default_rng(3))
        own = qc_calibrate.score_series(run, variant, threshold, clean)
        shared = qc_calibrate.score_series(run, variant, threshold, clean, source, hu)
        if kind == "shift":
            assert not shared["logits_shared"]  # every slice's pixels moved: their own logits
            continue
        if variant.source_slices is not None:
            start, stop = variant.source_slices
            assert np.array_equal(variant.volume.hu, hu[start:stop])
            assert shared["logits_shared"] == (kind != "original")  # the first series computes them
        else:
            same = [np.array_equal(a, b) for a, b in zip(variant.volume.hu, hu, strict=True)]
            assert 0 < sum(same) < len(same) and shared["logits_shared"]  # some slices changed
        assert _same({k: v for k, v in own.items() if k not in TIMES},
                     {k: v for k, v in shared.items() if k not in TIMES})


def test_dense_study_in_workers_matches_the_study_here(tmp_path: Path, real_case: Path) -> None:
    """03_eval's dense-lung study on the worker pool gives :func:`dense.study`'s rows, in the order of
    the patients, for a model scored with QC and one without."""
    from lungseg.evaluation import dense
    from lungseg.io import cache

    run = _fold_run(tmp_path / "fold")
    kinds = ("dense_shift",)
    ids = ["Case_003", "Case_000"]
    here = dense.study(cache.load_cases(ids), {"a": dense.run_scorer(run), "b": dense.run_scorer(run, False)},
                       kinds)
    models = {"a": (run, True), "b": (run, False)}
    pooled = dense.pooled_study(ids, models, kinds, workers=2)
    assert [(r["case"], r["kind"], r["model"]) for r in pooled] == [
        (c, k, m) for c in ids for k in ("original", *kinds) for m in "ab"]
    assert all(_same(a, b) for a, b in zip(here, pooled, strict=True))
    assert {r["qc"] for r in here if r["model"] == "a"} <= {"pass", "review", "fail"}
    assert {r["qc"] for r in here if r["model"] == "b"} == {""}
