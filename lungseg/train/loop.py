"""Module 2B training: ``fit(config)`` — Adam on 0.5·BCE + 0.5·Dice, resumable and cached.

A run lives in ``build/runs/<key>/`` (:mod:`lungseg.network.runs`), where ``key`` hashes the resolved config
(minus what does not change the result: device, threads, force_retrain), the cache keys of the cases
(the source data) and the training code; its manifest ``run.json`` is written when it starts and
completed when it ends. After every epoch ``checkpoint.pt`` holds model, optimiser, scheduler, RNG
state, epoch, history and the config; a run killed mid-way and started again with the same
parameters continues from the last finished epoch and ends with the same weights as an
uninterrupted run. A finished run is loaded instead of retrained unless ``force_retrain``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from lungseg import paths, progress
from lungseg.inference import postprocess
from lungseg.io import writing
from lungseg.network import config, data, disease, losses, model, runs, speed
from lungseg.network.config import SCHEDULES, TrainConfig
from lungseg.network.runs import TrainResult
from lungseg.progress import bar as progress_bar
from lungseg.train import distributed
from lungseg.train.distributed import Dist

__all__ = ["SCHEDULES", "TrainConfig", "TrainResult", "fit", "fit_protocols", "load_run",
           "pick_device"]

log = logging.getLogger(__name__)

ONECYCLE_WARMUP = 0.15
"""Share of the steps spent warming up in the one-cycle schedule."""
pick_device = speed.pick_device
load_run = runs.load_run


def split_indices(ds: data.SliceDataset, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Train and test slice indices of ``ds`` for the config's protocol."""
    if cfg.split == "slices":
        return data.split_slices(len(ds), cfg.seed)
    if cfg.split == "all":
        return list(range(len(ds))), []
    return data.split_cases(ds.case_ids, cfg.test_cases)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """The learning-rate schedule over ``total_steps`` optimisation steps, stepped once per step."""
    total = max(1, total_steps)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                               pct_start=ONECYCLE_WARMUP)


def epoch_indices(train_idx: list[int], empty: torch.Tensor, cfg: TrainConfig, epoch: int) -> list[int]:
    """The training slices of one epoch: the slices with lung (every :func:`lung_stride`-th dataset
    index, turn by turn), and a share ``cfg.empty_keep`` of the empty-mask ones (``empty[i]`` for
    slice i), drawn from (seed, epoch) so resume is exact."""
    stride = lung_stride(cfg, epoch)
    if cfg.empty_keep >= 1 and stride <= 1:
        return train_idx
    idx = torch.as_tensor(train_idx)
    is_empty = empty[idx]
    lungs, empties = idx[~is_empty], idx[is_empty]
    if stride > 1:
        lungs = lungs[(lungs + epoch) % stride == 0]
    if cfg.empty_keep < 1:
        n_keep = round(cfg.empty_keep * len(empties))
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        empties = empties[torch.randperm(len(empties), generator=gen)[:n_keep]]
    return sorted(lungs.tolist() + empties.tolist())


def total_steps(train_idx: list[int], empty: torch.Tensor, cfg: TrainConfig, world: int = 1) -> int:
    """Optimisation steps of the whole run (epochs may differ in size by a batch with ``lung_stride``)."""
    return sum(len(_epoch_batches(epoch_indices(train_idx, empty, cfg, e), cfg, e, world))
               for e in range(cfg.epochs))


def curve_indices(test_idx: list[int], n: int) -> list[int]:
    """``n`` evenly spaced test slices (all when ``n`` is 0 or at least their number)."""
    if n <= 0 or n >= len(test_idx):
        return test_idx
    return [test_idx[i] for i in np.linspace(0, len(test_idx) - 1, n).round().astype(int)]


def _epoch_batches(train_idx: list[int], cfg: TrainConfig, epoch: int, world: int) -> list[torch.Tensor]:
    """The global batches of one epoch. Under several processes a last batch that cannot be shared
    equally is dropped: an empty share would give a NaN loss, an uneven one unequal weights."""
    batches = _batches(train_idx, cfg.batch_size, cfg.seed, epoch, True, cfg.max_steps_per_epoch)
    return batches if world == 1 else [b for b in batches if len(b) % world == 0]


def _batches(idx: list[int], batch_size: int, seed: int, epoch: int, shuffle: bool,
             cap: int = 0) -> list[torch.Tensor]:
    """Index batches; the order of an epoch depends only on (seed, epoch), so resume is exact."""
    t = torch.as_tensor(idx)
    if shuffle:
        t = t[torch.randperm(len(t), generator=torch.Generator().manual_seed(seed * 1000 + epoch))]
    out = list(t.split(batch_size))
    return out[:cap] if cap else out


def lung_stride(cfg: TrainConfig, epoch: int) -> int:
    """Every how many lung slices ``epoch`` uses: ``lung_stride``, times ``full_size_stride`` in the
    epochs at full size of a progressive-size run."""
    full = bool(cfg.early_size) and epoch >= cfg.early_epochs
    return cfg.lung_stride * (cfg.full_size_stride if full else 1)


def epoch_size(cfg: TrainConfig, epoch: int) -> int:
    """Input size (px) of the training batches of ``epoch`` (progressive size: ``early_size``)."""
    return cfg.early_size if cfg.early_size and epoch < cfg.early_epochs else cfg.image_size


def _to_device(ds: data.SliceDataset, b: torch.Tensor, device: torch.device, channels_last: bool,
               augment=None, size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``b`` on ``device``; ``augment(x, y) -> x`` (host tensors) first, when given; then reduced
    to ``size`` px as the dataset reduces 512² slices (area means; mask: at least half lung)."""
    x, y = ds.images[b], ds.masks[b].float()
    if augment is not None:
        x = augment(x, y)
    if size and size != x.shape[-1]:
        x = data.resize_slices(x, size)
        y = (data.resize_slices(y, size) >= data.MASK_THRESHOLD).float()
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def train_step(net: model.UNet, opt: torch.optim.Optimizer, sched, x: torch.Tensor, y: torch.Tensor,
               device: torch.device, amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on a batch (N,1,H,W), in bf16 autocast when ``amp`` (and native); returns the
    loss and the summed per-slice accuracy as 0-d tensors (not synced to the host)."""
    with model.autocast(device, amp):
        logits = net(x).float()
        loss = losses.bce_dice_loss(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():
        correct = (postprocess.binarize(logits) == (y > 0.5)).float().mean((1, 2, 3)).sum()
    return loss.detach(), correct


def evaluate(net: model.UNet, ds: data.SliceDataset, idx: list[int], cfg: TrainConfig,
             device: torch.device) -> tuple[float, float]:
    """Mean loss and binary accuracy (threshold 0.5) over ``idx`` in eval mode, at training size
    (NaN for no slices: a run without a test set)."""
    if not idx:
        return float("nan"), float("nan")
    net.eval()
    loss_sum, acc_sum, n = 0.0, 0.0, 0
    with torch.no_grad(), model.autocast(device, cfg.amp):
        for b in _batches(idx, max(cfg.batch_size, 8), cfg.seed, 0, shuffle=False):
            x, y = _to_device(ds, b, device, cfg.channels_last)
            logits = net(x).float()
            loss_sum += float(losses.bce_dice_loss(logits, y)) * len(b)
            acc_sum += float((postprocess.binarize(logits) == (y > 0.5)).float().mean((1, 2, 3)).sum())
            n += len(b)
    return loss_sum / max(n, 1), acc_sum / max(n, 1)


def _save(path: Path, obj: dict) -> None:
    """torch.save through :func:`lungseg.io.writing.atomic_write`: a kill never leaves a torn file."""
    writing.atomic_write(path, lambda fh: torch.save(obj, fh))


def _build(cfg: TrainConfig, steps: int, device: torch.device):
    torch.manual_seed(cfg.seed)
    net = model.UNet(base_channels=cfg.base_channels, dropout=cfg.dropout, dilation=cfg.dilation).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return net, opt, make_scheduler(opt, cfg, steps)


def _resume(ck_path: Path, net, opt, sched, dist: Dist, device: torch.device) -> tuple[dict, int]:
    ck = torch.load(ck_path, map_location="cpu", weights_only=True)
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    cpu_state, cuda_state = ck["rng"][dist.rank]
    torch.set_rng_state(cpu_state)
    if device.type == "cuda" and cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state)
    log.info("resuming %s after epoch %d", ck_path.parent, ck["epoch"])
    return ck["history"], ck["epoch"]


def _train_epoch(ddp_net, opt, sched, ds: data.SliceDataset, train_idx: list[int], cfg: TrainConfig,
                 epoch: int, dist: Dist, device: torch.device) -> tuple[float, float]:
    """One pass over the training batches; returns the mean loss and accuracy over all processes."""
    ddp_net.train()
    sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n
    batches = _epoch_batches(epoch_indices(train_idx, ds.empty, cfg, epoch), cfg, epoch, dist.world)
    spec = cfg.disease_spec()
    for step, b in enumerate(progress_bar(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                                          leave=False, disable=not dist.main)):
        b = b.tensor_split(dist.world)[dist.rank]  # this process's share of the global batch
        augment = _disease_augment(spec, cfg, epoch, step, dist.rank) if spec.active else None
        x, y = _to_device(ds, b, device, cfg.channels_last, augment, epoch_size(cfg, epoch))
        loss, correct = train_step(ddp_net, opt, sched, x, y, device, cfg.amp)
        # One host sync per step, for the epoch means the report plots.
        sums += torch.tensor([float(loss) * len(b), float(correct), len(b)], dtype=torch.float64)
    sums = distributed.all_reduce_sum(sums, dist, device)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def _disease_augment(spec: disease.DiseaseSpec, cfg: TrainConfig, epoch: int, step: int, rank: int):
    """Simulated dense lung for one step's batch (:mod:`lungseg.network.disease`), drawn from
    (seed, epoch, step, rank) so that a resumed run trains on the same images."""
    gen = disease.step_generator(cfg.seed, epoch, step, rank)

    def to_hu(x: torch.Tensor) -> torch.Tensor:
        return data.denormalise(x, cfg.input_mode, cfg.hu_window)

    def from_hu(hu: torch.Tensor) -> torch.Tensor:
        return data.normalise(hu, cfg.input_mode, cfg.hu_window)

    return lambda x, y: disease.simulate(x, y, spec, gen, to_hu, from_hu)


def _load_final(run_dir: Path) -> TrainResult:
    log.info("loaded finished run %s", run_dir)
    return runs.load_run(run_dir)


def _finish(run_dir: Path, net: model.UNet, history: dict, cfg: TrainConfig, manifest: dict,
            t_start: float) -> None:
    _save(run_dir / runs.WEIGHTS, {"model": net.state_dict(), "history": history, "config": cfg.to_dict()})
    writing.atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1) + "\n")
    manifest.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    train_wall_s=round(time.perf_counter() - t_start, 1),
                    epochs_done=len(history["train_loss"]),
                    final={k: v[-1] for k, v in history.items() if v})
    runs.write_manifest(run_dir, manifest)
    log.info("trained %s: %d epochs in %.0f s; last epoch train loss %.4f, test loss %.4f, test acc %.4f",
             run_dir.name, len(history["train_loss"]), manifest["train_wall_s"], history["train_loss"][-1],
             history["test_loss"][-1], history["test_acc"][-1])


_LAST_DATASET: dict[tuple, data.SliceDataset] = {}
"""The slices the last run of this process was built from: a profile's runs (main, other protocol,
plain twin, folds) share cases, size and preprocessing, so each builds them once (~5 s per run saved).
One entry only, so memory does not grow with the runs."""


def _dataset_of(cfg: TrainConfig, case_keys: dict[str, str]) -> data.SliceDataset:
    """The training slices of ``cfg`` (its cases, size, input mode and HU window), shared with the
    previous run of this process when those and the cases' data (``case_keys``: their files' key)
    are the same (the slices are never modified)."""
    key = (tuple(case_keys.items()), str(paths.data_dir(cfg.data_dir or None)), cfg.image_size,
           cfg.input_mode, tuple(cfg.hu_window))
    if key not in _LAST_DATASET:
        _LAST_DATASET.clear()
        _LAST_DATASET[key] = data.load_dataset(cfg.cases, cfg.data_dir or None, cfg.image_size,
                                               cfg.input_mode, cfg.hu_window)
    return _LAST_DATASET[key]


def fit(config: TrainConfig, dataset: data.SliceDataset | None = None,
        runs_dir: str | os.PathLike[str] | None = None) -> TrainResult:
    """Train (or resume, or load) the run defined by ``config`` under ``runs_dir`` (default
    ``build/runs``); see the module docstring.

    ``dataset`` may be passed to reuse slices already built for the same cases, size and mode.
    Under ``torchrun --nproc_per_node N`` each process takes 1/N of every global batch
    (``batch_size`` must be divisible by N) and DistributedDataParallel averages the gradients.
    """
    t_start = time.perf_counter()
    cfg = config.resolved().with_speed_switches()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dist, device = distributed.init(pick_device(cfg.device))
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {dist.world} processes")
    case_keys = runs.case_keys(cfg)
    key = runs.run_key(cfg, case_keys, dist.world)
    run_dir = runs.run_folder(runs.runs_dir(runs_dir), cfg, key)
    final, ckpt_path = run_dir / runs.WEIGHTS, run_dir / "checkpoint.pt"
    if final.is_file() and not cfg.force_retrain:
        return _load_final(run_dir)
    ds = dataset or _dataset_of(cfg, case_keys)
    train_idx, test_idx = split_indices(ds, cfg)
    probe = speed.cached_choice(cfg.image_size, cfg.batch_size, device)
    manifest = runs.manifest(cfg, key, case_keys,
                             runs.split_record(ds.case_ids, [i.index for i in ds.infos], test_idx),
                             probe, device, dist.world)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_manifest(run_dir, manifest)
    steps = total_steps(train_idx, ds.empty, cfg, dist.world)
    curve_idx = curve_indices(test_idx, cfg.curve_slices)
    net, opt, sched = _build(cfg, steps, device)
    torch.manual_seed(cfg.seed + dist.rank)  # own dropout stream per process (rank 0: as alone)
    ddp_net = distributed.wrap(net, dist, device)
    history: dict[str, list[float]] = {k: [] for k in ("train_loss", "train_acc", "test_loss",
                                                       "test_acc", "epoch_s", "lr")}
    start_epoch = 0
    if ckpt_path.is_file() and not cfg.force_retrain:
        history, start_epoch = _resume(ckpt_path, net, opt, sched, dist, device)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_loss, train_acc = _train_epoch(ddp_net, opt, sched, ds, train_idx, cfg, epoch, dist, device)
        test_loss, test_acc = evaluate(net, ds, curve_idx, cfg, device)
        for k, v in (("train_loss", train_loss), ("train_acc", train_acc), ("test_loss", test_loss),
                     ("test_acc", test_acc), ("epoch_s", time.perf_counter() - t0),
                     ("lr", opt.param_groups[0]["lr"])):
            history[k].append(float(v))
        if dist.main:
            left = (cfg.epochs - epoch - 1) * float(np.mean(history["epoch_s"][-3:]))
            line = (f"epoch {epoch + 1}/{cfg.epochs} train loss {train_loss:.4f} acc {train_acc:.4f} | test "
                    f"loss {test_loss:.4f} acc {test_acc:.4f} | {history['epoch_s'][-1]:.0f} s | about "
                    f"{left / 60:.1f} min left")
            if progress.headless():  # progress: the terminal's; the notebook keeps the run's summary
                progress.terminal(line)
            else:
                log.info(line)
        rng = distributed.rng_states(dist, device)
        if dist.main:
            _save(ckpt_path, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "rng": rng, "epoch": epoch + 1,
                              "history": history, "config": cfg.to_dict()})
        dist.barrier()
    net = net.cpu().eval()
    if dist.main:
        _finish(run_dir, net, history, cfg, manifest, t_start)
    dist.barrier()
    return TrainResult(net, history, cfg, run_dir, True, runs.read_manifest(run_dir))


def fit_protocols(config: TrainConfig, compare_split: str = "",
                  runs_dir: str | os.PathLike[str] | None = None) -> dict[str, TrainResult]:
    """``fit(config)``, plus the same recipe under the other split protocol when ``compare_split``
    names it ("slices" or "cases"), so 03_eval can show what slice leakage does to the scores."""
    out = {config.split: fit(config, runs_dir=runs_dir)}
    if compare_split and compare_split != config.split:
        out[compare_split] = fit(dataclasses.replace(config, split=compare_split), runs_dir=runs_dir)
    return out


def fit_plan(plan: config.TrainingPlan, runs_dir: str | os.PathLike[str] | None = None
             ) -> tuple[dict[str, TrainResult], list[TrainResult]]:
    """Every run of a profile's 02_train: the config (and the other protocol), then the folds."""
    by_split = fit_protocols(plan.config, plan.compare_split, runs_dir=runs_dir)
    folds = fit_folds(plan.config, plan.cv_folds, runs_dir=runs_dir) if plan.cv_folds else []
    return by_split, folds


def fit_plain(plan: config.TrainingPlan, runs_dir: str | os.PathLike[str] | None = None
              ) -> TrainResult | None:
    """The plan's config without simulated dense lung (``disease_p`` = 0) when the plan compares
    (``compare_disease``) and the config has any; else None."""
    if not (plan.compare_disease and plan.config.disease_p > 0):
        return None
    return fit(dataclasses.replace(plan.config, disease_p=0.0), runs_dir=runs_dir)


def fit_folds(base: TrainConfig, k: int, runs_dir: str | os.PathLike[str] | None = None) -> list[TrainResult]:
    """Train (or load) the run of every fold of a k-fold cross-validation over patients
    (:func:`lungseg.network.config.fold_configs`)."""
    return [fit(cfg, runs_dir=runs_dir) for cfg in config.fold_configs(base, k)]


def add_arguments(ap) -> None:
    """The options of ``lungseg train``: ``--profile NAME [--set key=value ...]``; under
    ``torchrun --nproc_per_node N -m lungseg train`` the same command trains with N processes."""
    ap.add_argument("--profile", default=config.DEFAULT_PROFILE,
                    help="params/NAME.yaml (its 02_train section); default %(default)s")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override a training parameter, e.g. epochs=3 dropout=0")
    ap.add_argument("--runs", default=None, help="runs folder (default build/runs)")


def command(args) -> int:
    """``lungseg train``: train (or resume, or load) the profile's run without the notebook. The last
    line printed is JSON with ``run_dir`` and the history."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bad = [item for item in args.set if "=" not in item]
    if bad:
        raise ValueError(f"--set takes KEY=VALUE, got {bad}")
    cfg = config.config_from_profile(args.profile, dict(item.split("=", 1) for item in args.set))
    result = fit(cfg, runs_dir=args.runs)
    if int(os.environ.get("RANK", "0")) == 0:
        _export_for_predict(result)
        print(json.dumps({"run_dir": str(result.run_dir), "history": result.history}))
    return 0



def _export_for_predict(result: TrainResult) -> None:
    """The ONNX export ``predict --checkpoint RUN_DIR`` uses on a CPU, made now (a few seconds) so that
    the first ``predict`` does not pay for it (lungseg.inference.ort)."""
    from lungseg.inference import ort

    if ort.available():
        target = ort.cached_model(result.run_dir / runs.WEIGHTS)
        if not target.is_file():
            prep = ort.preprocessing_of(result.config, model.REFERENCE_INPUT_OFFSET_HU)
            ort.export(result.model, prep, target)
