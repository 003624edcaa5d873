"""Data pipeline and training loop: splits, normalisation, one step, resume, determinism, reuse."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lungseg import paths
from lungseg.evaluation import crossval
from lungseg.network import config, data, losses, model, runs
from lungseg.train import loop

TINY = 32  # px: real slices downsampled 16x, enough to exercise the loop in seconds
REAL_CASES = ["Case_000", "Case_005"]


def _have_cases() -> bool:
    try:
        root = paths.data_dir()
    except FileNotFoundError:
        return False
    return all(paths.images_dir(root, c).is_dir() for c in REAL_CASES)


realdata = pytest.mark.skipif(not _have_cases(), reason=f"needs {REAL_CASES} in the data dir")


# ---- synthetic, known answers -------------------------------------------------------------

def test_normalise_window_and_raw() -> None:
    hu = torch.tensor([-2000.0, data.HU_WINDOW[0], data.HU_WINDOW[1], 3000.0])
    assert data.normalise(hu, "window").tolist() == [0.0, 0.0, 1.0, 1.0]
    assert data.normalise(torch.tensor([-1024.0, 0.0]), "raw").tolist() == [0.0, 1024.0]
    with pytest.raises(ValueError, match="unknown input mode"):
        data.normalise(hu, "zscore")


def test_resize_is_block_mean() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # top-left 2x2 block: (0 + 1 + 4 + 5) / 4 = 2.5
    assert data.resize_slices(x, 2)[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert data.upsample_logits(torch.zeros(2, 1, 8, 8), 32).shape == (2, 1, 32, 32)


def test_split_slices_is_the_reports_random_split() -> None:
    train_idx, test_idx = data.split_slices(300)
    assert len(train_idx) == 200 and len(test_idx) == 100
    assert sorted(train_idx + test_idx) == list(range(300))
    gen = torch.Generator().manual_seed(42)
    ref = torch.utils.data.random_split(range(300), [2 / 3, 1 / 3], generator=gen)
    assert train_idx == list(ref[0].indices)
    assert data.split_slices(300) == (train_idx, test_idx)


def test_split_cases_has_no_patient_on_both_sides() -> None:
    ids = ["A"] * 3 + ["B"] * 2 + ["C"] * 4
    train_idx, test_idx = data.split_cases(ids, ["B"])
    assert test_idx == [3, 4]
    assert {ids[i] for i in train_idx} == {"A", "C"}
    with pytest.raises(ValueError, match="not in the dataset"):
        data.split_cases(ids, ["Z"])


def test_kfold_covers_every_case_once() -> None:
    ids = [f"Case_{i:03d}" for i in range(12)]
    folds = config.fold_cases(ids, 4)
    assert sorted(c for f in folds for c in f) == ids
    assert all(len(f) == 3 for f in folds)


def test_one_fold_rule_for_the_config_the_run_key_and_the_cross_validation() -> None:
    """``--set kfold=3 fold=2`` trains the very run the report's cross-validation calls fold 2, which
    is the held-out run itself (test patients 002, 005, 008, 011): one key, one folder."""
    ids = [f"Case_{i:03d}" for i in range(12)]
    base = loop.TrainConfig(cases=ids, split="cases", profile="cpu")
    folds = [c.resolved() for c in config.fold_configs(base, 3)]
    by_set = config.config_from_profile("quick", {"cases": "Case_000,Case_005", "kfold": "2", "fold": "1"})
    assert by_set.kfold == 2 and by_set.fold == 1
    assert [c.test_cases for c in folds] == crossval.folds(ids, 3)
    assert folds[2].test_cases == list(data.DEFAULT_TEST_CASES)
    keys = {"c": "k"}
    same = [dataclasses.replace(c, cases=["c"]) for c in (folds[2], base.resolved())]
    assert runs.run_key(same[0], keys) == runs.run_key(same[1], keys)
    with pytest.raises(ValueError, match="fold must be"):
        dataclasses.replace(base, kfold=3, fold=3).resolved()


def test_config_rejects_unknown_parameters() -> None:
    with pytest.raises(TypeError, match="unknown training parameters"):
        loop.TrainConfig.from_params(cases="all", epochz=3)


# ---- real data, tiny --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ds() -> data.SliceDataset:
    if not _have_cases():
        pytest.skip(f"needs {REAL_CASES} in the data dir")
    return data.load_dataset(REAL_CASES, image_size=TINY)


def _tiny_cfg(**kw: object) -> loop.TrainConfig:
    base = dict(cases=REAL_CASES, split="cases", test_cases=["Case_005"], image_size=TINY,
                epochs=2, batch_size=4, lr=1e-3, max_steps_per_epoch=3, threads=1)
    base.update(kw)
    return loop.TrainConfig(**base)  # type: ignore[arg-type]


@realdata
def test_dataset_items(tiny_ds: data.SliceDataset) -> None:
    image, mask, info = tiny_ds[0]
    assert image.shape == mask.shape == (1, TINY, TINY)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert info.case_id == "Case_000" and info.index == 0
    locs = [i.location_mm for i in tiny_ds.infos if i.case_id == "Case_000"]
    assert locs == sorted(locs)


@realdata
def test_one_step_lowers_the_loss(tiny_ds: data.SliceDataset) -> None:
    torch.manual_seed(0)
    net = model.UNet().train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    lung = [i for i in range(len(tiny_ds)) if tiny_ds.masks[i].any()][:8]
    x, y = tiny_ds.images[lung], tiny_ds.masks[lung].float()
    torch.manual_seed(1)  # same dropout mask for both evaluations
    before = losses.bce_dice_loss(net(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    torch.manual_seed(1)
    with torch.no_grad():
        after = losses.bce_dice_loss(net(x), y)
    assert float(after) < float(before.detach())


def _weights(result: loop.TrainResult) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def _same_history(a: dict, b: dict) -> bool:
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    return all(a[k] == b[k] for k in keys)


@realdata
def test_determinism_and_reuse(tiny_ds, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(runs, "RUNS", tmp_path)
    first = loop.fit(_tiny_cfg(force_retrain=True), dataset=tiny_ds)
    second = loop.fit(_tiny_cfg(force_retrain=True), dataset=tiny_ds)
    assert first.trained_now and second.trained_now
    assert len(first.history["train_loss"]) == 2
    assert _same_history(first.history, second.history)
    w1, w2 = _weights(first), _weights(second)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    reused = loop.fit(_tiny_cfg(), dataset=tiny_ds)
    assert not reused.trained_now and reused.run_dir == first.run_dir
    assert all(torch.equal(w1[k], v) for k, v in reused.model.state_dict().items())


@realdata
def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_ds, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(runs, "RUNS", tmp_path / "straight")
    straight = loop.fit(_tiny_cfg(), dataset=tiny_ds)

    monkeypatch.setattr(runs, "RUNS", tmp_path / "killed")
    real_save = loop._save

    def save_then_die(path, obj):
        real_save(path, obj)
        if path.name == "checkpoint.pt" and obj["epoch"] == 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(loop, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(_tiny_cfg(), dataset=tiny_ds)
    monkeypatch.setattr(loop, "_save", real_save)
    assert not (tmp_path / "killed" / straight.run_dir.name / "model.pt").exists()
    resumed = loop.fit(_tiny_cfg(), dataset=tiny_ds)
    assert resumed.trained_now
    assert _same_history(straight.history, resumed.history)
    w1, w2 = _weights(straight), _weights(resumed)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_paper_profile_is_the_coursework_recipe_stated_once() -> None:
    """The paper profile trains the coursework's run (512², random slice split, 10 epochs, batch 3,
    Adam lr 0.1 constant, seed 42) and takes it from TrainConfig's defaults, not from a second copy."""
    section = config.load_profile("paper")["02_train"]
    recipe = ("image_size", "split", "epochs", "batch_size", "lr", "schedule", "seed", "test_cases")
    assert not set(recipe) & set(section), "paper.yaml restates the recipe that TrainConfig holds"
    plan = config.training_plan("paper")
    cfg = plan.config
    assert (cfg.image_size, cfg.split, cfg.epochs, cfg.batch_size, cfg.lr, cfg.schedule, cfg.seed) == (
        512, "slices", 10, 3, 0.1, "constant", 42)
    assert cfg.disease_p == 0.0 and plan.compare_split == "cases" and plan.cv_folds == 0


def test_lung_stride_alternates_lung_slices_and_keeps_every_empty_draw() -> None:
    """Known answer on 12 slices (4 empty): stride 2 takes the even lung slices in even epochs and the
    odd ones in odd epochs, so two epochs use each lung slice once; the empty-slice draw is the one
    stride 1 makes, and the schedule counts each epoch's own batches."""
    empty = torch.tensor([True, True] + [False] * 8 + [True, True])
    idx = list(range(12))
    base = loop.TrainConfig(empty_keep=0.5, batch_size=3, epochs=2)
    strided = dataclasses.replace(base, lung_stride=2)
    lungs = set(range(2, 10))
    for epoch in (0, 1):
        every = loop.epoch_indices(idx, empty, base, epoch)
        half = loop.epoch_indices(idx, empty, strided, epoch)
        assert set(every) - lungs == set(half) - lungs and len(set(every) - lungs) == 2
        assert set(half) & lungs == {i for i in lungs if i % 2 == epoch % 2}
    both = set(loop.epoch_indices(idx, empty, strided, 0)) | set(loop.epoch_indices(idx, empty, strided, 1))
    assert both >= lungs
    assert loop.total_steps(idx, empty, strided) == 2 * 2  # 4 lung + 2 empty slices, batches of 3
    assert loop.total_steps(idx, empty, base) == 2 * 4  # 8 + 2 slices: 4 batches


def test_full_size_stride_thins_only_the_full_size_epochs() -> None:
    """Known answer: with progressive size (epoch 0 reduced), full_size_stride 2 leaves epoch 0 every
    lung slice and gives epoch 1 (full size) every other one; without progressive size it does nothing;
    a stride below 1 is refused."""
    empty = torch.tensor([True, True] + [False] * 8 + [True, True])
    idx = list(range(12))
    cfg = loop.TrainConfig(empty_keep=1.0, batch_size=3, epochs=2, image_size=32, early_size=16,
                           early_epochs=1, full_size_stride=2)
    lungs = set(range(2, 10))
    assert [loop.lung_stride(cfg, e) for e in (0, 1)] == [1, 2]
    assert set(loop.epoch_indices(idx, empty, cfg, 0)) >= lungs
    assert set(loop.epoch_indices(idx, empty, cfg, 1)) & lungs == {i for i in lungs if i % 2 == 1}
    plain = dataclasses.replace(cfg, early_size=0, early_epochs=0)
    assert [loop.lung_stride(plain, e) for e in (0, 1)] == [1, 1]
    with pytest.raises(ValueError, match="full_size_stride"):
        dataclasses.replace(cfg, full_size_stride=0).resolved()


@realdata
def test_progressive_size_trains_the_early_epochs_on_reduced_slices(tiny_ds, tmp_path, monkeypatch) -> None:
    """early_size: epoch 0's batches are the dataset's slices reduced by area means (masks: at least
    half lung), the last epoch's are the dataset's own; a run trains through both and is checked."""
    cfg = _tiny_cfg(early_size=16, early_epochs=1).resolved()
    assert [loop.epoch_size(cfg, e) for e in range(cfg.epochs)] == [16, TINY]
    b = torch.arange(4)
    x, y = loop._to_device(tiny_ds, b, torch.device("cpu"), False, None, loop.epoch_size(cfg, 0))
    assert x.shape == y.shape == (4, 1, 16, 16)
    assert torch.allclose(x, data.resize_slices(tiny_ds.images[b], 16))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    monkeypatch.setattr(runs, "RUNS", tmp_path)
    result = loop.fit(cfg, dataset=tiny_ds)
    assert len(result.history["train_loss"]) == 2 and all(v == v for v in result.history["train_loss"])
    for bad in (12, 2 * TINY):  # not a multiple of 8; larger than the slices
        with pytest.raises(ValueError, match="early_size"):
            _tiny_cfg(early_size=bad, early_epochs=1).resolved()
