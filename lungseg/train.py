"""Module 2B training: ``fit(config)`` — Adam on 0.5·BCE + 0.5·Dice, resumable and cached.

A run lives in ``build/runs/<key>/``, where ``key`` hashes the resolved config (minus what does
not change the result: device, threads, force_retrain), the cache keys of the cases (i.e. the
source data) and the source of the training code. After every epoch ``checkpoint.pt`` holds model,
optimiser, scheduler, RNG state, epoch, history and the config; a run killed mid-way and started
again with the same parameters continues from the last finished epoch and ends with the same
weights as an uninterrupted run. A finished run is loaded instead of retrained unless
``force_retrain``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from . import cache, data, losses, model, paths, speed

log = logging.getLogger(__name__)

RUNS = paths.BUILD / "runs"
SCHEDULES = ("constant", "cosine", "onecycle")
ONECYCLE_WARMUP = 0.15
"""Share of the steps spent warming up in the one-cycle schedule."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (defaults: the report's recipe)."""

    cases: list[str] = field(default_factory=list)
    """Case ids; empty = every case in the data directory."""
    data_dir: str = ""
    image_size: int = data.FULL_SIZE
    input_mode: str = "window"
    split: str = "slices"
    """"slices" (the report's random 2/3–1/3 of slices) or "cases" (held-out patients)."""
    test_cases: list[str] = field(default_factory=lambda: list(data.DEFAULT_TEST_CASES))
    kfold: int = 0
    """With split="cases" and kfold=k>1: test cases are fold ``fold`` of a k-fold over patients."""
    fold: int = 0
    epochs: int = 10
    batch_size: int = 3
    lr: float = 0.1
    schedule: str = "constant"
    weight_decay: float = 0.0
    seed: int = 42
    base_channels: int = model.DEFAULT_BASE_CHANNELS
    dropout: float = model.DEFAULT_DROPOUT
    max_steps_per_epoch: int = 0
    """0 = full epochs; >0 caps the steps of every epoch (CI smoke runs)."""
    empty_keep: float = 1.0
    """Share of the training slices with an empty mask (above and below the lungs, ~45 %) used in
    each epoch, drawn anew every epoch from (seed, epoch); 1 = all of them."""
    curve_slices: int = 0
    """Test slices scored after every epoch for the training curves: 0 = all, else that many evenly
    spaced (the full test set is scored by 03_eval; this only draws Figure 3)."""
    channels_last: bool | str = False
    """channels_last memory layout; "auto" = whichever :func:`lungseg.speed.choose` measures faster."""
    amp: bool | str = False
    """bf16 autocast where the hardware runs it natively (CUDA; CPUs with AVX-512 BF16); "auto" =
    measured, as ``channels_last``."""
    device: str = "auto"
    threads: int = 0
    """torch intra-op threads; 0 = leave torch's default."""
    force_retrain: bool = False

    # Fields that do not change the trained weights on one machine, left out of the run key.
    NON_KEY = ("device", "threads", "force_retrain", "data_dir")

    def resolved(self) -> TrainConfig:
        """A copy with ``cases`` and ``test_cases`` made explicit from the data directory."""
        cfg = dataclasses.replace(self)
        if not cfg.cases:
            cfg.cases = paths.list_cases(paths.data_dir(cfg.data_dir or None))
        if cfg.split == "cases" and cfg.kfold > 1:
            cfg.test_cases = data.kfold_cases(cfg.cases, cfg.kfold, cfg.fold, cfg.seed)
        if cfg.split not in ("slices", "cases"):
            raise ValueError(f"split must be 'slices' or 'cases', got {cfg.split!r}")
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
        if "auto" in (cfg.channels_last, cfg.amp):  # measured on this machine, cached, logged
            choice = speed.choose(cfg.image_size, cfg.batch_size, pick_device(cfg.device))
            cfg.channels_last = choice["channels_last"] if cfg.channels_last == "auto" else cfg.channels_last
            cfg.amp = choice["amp"] if cfg.amp == "auto" else cfg.amp
        return cfg

    @classmethod
    def from_params(cls, cases: str = "all", test_cases: str = "", **params: object) -> TrainConfig:
        """A config from flat notebook parameters: ``cases``/``test_cases`` as comma-separated
        strings (``"all"`` = every case; empty ``test_cases`` = ``DEFAULT_TEST_CASES``)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(params) - fields
        if unknown:
            raise TypeError(f"unknown training parameters: {sorted(unknown)}")
        cfg = cls(**params)  # type: ignore[arg-type]
        cfg.cases = cache.resolve_cases(cases, cfg.data_dir or None)
        if test_cases.strip():
            cfg.test_cases = [c.strip() for c in test_cases.split(",") if c.strip()]
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """A trained model with its history (per-epoch lists) and where the run lives."""

    model: model.UNet
    history: dict[str, list[float]]
    config: TrainConfig
    run_dir: Path
    trained_now: bool


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu; otherwise the named device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# dicom.py and cache.py are covered by the cases' cache keys.
_CODE = ("model.py", "losses.py", "data.py", "train.py")


def run_key(cfg: TrainConfig, world: int = 1) -> str:
    """Hash of the config (without ``NON_KEY``), the cases' cache keys, the training code and,
    for multi-process runs, the number of processes (on CPU BatchNorm statistics depend on it)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in cfg.NON_KEY},
                        sort_keys=True).encode())
    if world > 1:
        h.update(f"world={world}".encode())
    root = paths.data_dir(cfg.data_dir or None)
    for c in cfg.cases:
        h.update(cache.case_key(paths.images_dir(root, c), paths.mask_file(root, c)).encode())
    for name in _CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def split_indices(ds: data.SliceDataset, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Train and test slice indices of ``ds`` for the config's protocol."""
    if cfg.split == "slices":
        return data.split_slices(len(ds), cfg.seed)
    return data.split_cases(ds.case_ids, cfg.test_cases)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule, stepped once per optimisation step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                               pct_start=ONECYCLE_WARMUP)


def epoch_indices(train_idx: list[int], empty: torch.Tensor, cfg: TrainConfig, epoch: int) -> list[int]:
    """The training slices of one epoch: every slice with lung, and a share ``cfg.empty_keep`` of
    the empty-mask ones (``empty[i]`` for slice i), drawn from (seed, epoch) so resume is exact."""
    if cfg.empty_keep >= 1:
        return train_idx
    idx = torch.as_tensor(train_idx)
    is_empty = empty[idx]
    empties = idx[is_empty]
    n_keep = round(cfg.empty_keep * len(empties))
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    kept = empties[torch.randperm(len(empties), generator=gen)[:n_keep]]
    return sorted(idx[~is_empty].tolist() + kept.tolist())


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


def _to_device(ds: data.SliceDataset, b: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = ds.images[b].to(device, non_blocking=True)
    y = ds.masks[b].to(device, non_blocking=True).float()
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
        correct = ((logits > 0) == (y > 0.5)).float().mean((1, 2, 3)).sum()
    return loss.detach(), correct


def evaluate(net: model.UNet, ds: data.SliceDataset, idx: list[int], cfg: TrainConfig,
             device: torch.device) -> tuple[float, float]:
    """Mean loss and binary accuracy (threshold 0.5) over ``idx`` in eval mode, at training size."""
    net.eval()
    loss_sum, acc_sum, n = 0.0, 0.0, 0
    with torch.no_grad(), model.autocast(device, cfg.amp):
        for b in _batches(idx, max(cfg.batch_size, 8), cfg.seed, 0, shuffle=False):
            x, y = _to_device(ds, b, device, cfg.channels_last)
            logits = net(x).float()
            loss_sum += float(losses.bce_dice_loss(logits, y)) * len(b)
            acc_sum += float(((logits > 0).float() == y).float().mean((1, 2, 3)).sum())
            n += len(b)
    return loss_sum / max(n, 1), acc_sum / max(n, 1)


def _save(path: Path, obj: dict) -> None:
    """torch.save to a temporary name, then rename: a kill never leaves a torn checkpoint."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _build(cfg: TrainConfig, steps_per_epoch: int, device: torch.device):
    torch.manual_seed(cfg.seed)
    net = model.UNet(base_channels=cfg.base_channels, dropout=cfg.dropout).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return net, opt, make_scheduler(opt, cfg, steps_per_epoch)


@dataclass(frozen=True)
class _Dist:
    """This process's place in a torchrun launch: rank and world size (0 and 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _dist_init(device: torch.device) -> tuple[_Dist, torch.device]:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (gloo on CPU, nccl on
    CUDA, one GPU per process); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), device
    dist = torch.distributed
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size()), device


def _wrap(net: model.UNet, dist: _Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``net`` when running in several processes. On CUDA BatchNorm
    is synchronised across processes; on CPU (SyncBatchNorm is GPU-only) each process normalises
    with the statistics of its share of the batch, so curves match one process only approximately."""
    if dist.world == 1:
        return net
    if device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index])
    return torch.nn.parallel.DistributedDataParallel(net)


def _load_final(final: Path, cfg: TrainConfig, run_dir: Path) -> TrainResult:
    state = torch.load(final, map_location="cpu", weights_only=True)
    net = model.UNet(base_channels=cfg.base_channels, dropout=cfg.dropout)
    net.load_state_dict(state["model"])
    log.info("loaded finished run %s", run_dir)
    return TrainResult(net.eval(), state["history"], cfg, run_dir, trained_now=False)


def _rng_states(dist: _Dist, device: torch.device) -> list:
    """Every process's RNG state (dropout), gathered so a resumed run continues each stream."""
    state = (torch.get_rng_state(), torch.cuda.get_rng_state() if device.type == "cuda" else None)
    if dist.world == 1:
        return [state]
    states: list = [None] * dist.world
    torch.distributed.all_gather_object(states, state)
    return states


def _resume(ck_path: Path, net, opt, sched, dist: _Dist, device: torch.device) -> tuple[dict, int]:
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
                 epoch: int, dist: _Dist, device: torch.device) -> tuple[float, float]:
    """One pass over the training batches; returns the mean loss and accuracy over all processes."""
    ddp_net.train()
    sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n
    batches = _epoch_batches(epoch_indices(train_idx, ds.empty, cfg, epoch), cfg, epoch, dist.world)
    for b in tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                  disable=not dist.main):
        b = b.tensor_split(dist.world)[dist.rank]  # this process's share of the global batch
        x, y = _to_device(ds, b, device, cfg.channels_last)
        loss, correct = train_step(ddp_net, opt, sched, x, y, device, cfg.amp)
        # One host sync per step, for the epoch means the report plots.
        sums += torch.tensor([float(loss) * len(b), float(correct), len(b)], dtype=torch.float64)
    if dist.world > 1:
        sums = sums.to(device)
        torch.distributed.all_reduce(sums)
        sums = sums.cpu()
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def fit(config: TrainConfig, dataset: data.SliceDataset | None = None) -> TrainResult:
    """Train (or resume, or load) the run defined by ``config``; see the module docstring.

    ``dataset`` may be passed to reuse slices already built for the same cases, size and mode.
    Under ``torchrun --nproc_per_node N`` each process takes 1/N of every global batch
    (``batch_size`` must be divisible by N) and DistributedDataParallel averages the gradients.
    """
    cfg = config.resolved()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dist, device = _dist_init(pick_device(cfg.device))
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {dist.world} processes")
    run_dir = RUNS / run_key(cfg, dist.world)
    final, ckpt_path = run_dir / "model.pt", run_dir / "checkpoint.pt"
    if final.is_file() and not cfg.force_retrain:
        return _load_final(final, cfg, run_dir)
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    ds = dataset or data.load_dataset(cfg.cases, cfg.data_dir or None, cfg.image_size,
                                      cfg.input_mode)
    train_idx, test_idx = split_indices(ds, cfg)
    steps = len(_epoch_batches(epoch_indices(train_idx, ds.empty, cfg, 0), cfg, 0, dist.world))
    curve_idx = curve_indices(test_idx, cfg.curve_slices)
    net, opt, sched = _build(cfg, steps, device)
    torch.manual_seed(cfg.seed + dist.rank)  # own dropout stream per process (rank 0: as alone)
    ddp_net = _wrap(net, dist, device)
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
            log.info("epoch %d/%d train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.0f s",
                     epoch + 1, cfg.epochs, train_loss, train_acc, test_loss, test_acc,
                     history["epoch_s"][-1])
        rng = _rng_states(dist, device)
        if dist.main:
            _save(ckpt_path, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "rng": rng, "epoch": epoch + 1,
                              "history": history, "config": cfg.to_dict()})
        dist.barrier()
    net = net.cpu().eval()
    if dist.main:
        _save(final, {"model": net.state_dict(), "history": history, "config": cfg.to_dict()})
        (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    dist.barrier()
    return TrainResult(net, history, cfg, run_dir, trained_now=True)


def fit_protocols(config: TrainConfig, compare_split: str = "") -> dict[str, TrainResult]:
    """``fit(config)``, plus the same recipe under the other split protocol when ``compare_split``
    names it ("slices" or "cases"), so 03_eval can show what slice leakage does to the scores."""
    runs = {config.split: fit(config)}
    if compare_split and compare_split != config.split:
        runs[compare_split] = fit(dataclasses.replace(config, split=compare_split))
    return runs


def load_run(run_dir: str | os.PathLike[str]) -> TrainResult:
    """A finished run from its folder (``model.pt`` holds weights, history and config)."""
    run_dir = paths.resolve(run_dir)
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    cfg = TrainConfig(**state["config"])
    net = model.UNet(base_channels=cfg.base_channels, dropout=cfg.dropout)
    net.load_state_dict(state["model"])
    return TrainResult(net.eval(), state["history"], cfg, run_dir, trained_now=False)


NOTEBOOK_ONLY = ("figures_dir", "compare_split", "cv_folds", "reference_weights", "interactive")


def config_from_profile(profile: str, overrides: dict[str, str] | None = None) -> TrainConfig:
    """The 02_train section of ``params/PROFILE.yaml`` (plus ``key=value`` overrides) as a config."""
    from . import report  # the profiles are read where the notebooks read them

    params = {k: v for k, v in report.load_profile(profile).get("02_train", {}).items()
              if k not in NOTEBOOK_ONLY}
    for key, text in (overrides or {}).items():
        params[key] = yaml.safe_load(text)
    return TrainConfig.from_params(**params)


def main(argv: list[str] | None = None) -> int:
    """``python -m lungseg.train --profile NAME [--set key=value ...]``; under
    ``torchrun --nproc_per_node N`` the same command trains with N processes."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lungseg.train", description=main.__doc__)
    ap.add_argument("--profile", default="quick", help="params/NAME.yaml (its 02_train section)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override a training parameter, e.g. epochs=3 dropout=0")
    ap.add_argument("--runs", default=None, help="runs folder (default build/runs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    global RUNS
    if args.runs:
        RUNS = paths.resolve(args.runs)
    overrides = dict(item.split("=", 1) for item in args.set)
    result = fit(config_from_profile(args.profile, overrides))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), "history": result.history}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
