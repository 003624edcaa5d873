"""Two-class network vs one class split by the geometric rule (issue 11, item 2), measured.

    python benchmarks/two_class.py RUN_DIR

RUN_DIR: a finished held-out-patient run (e.g. the ``cpu`` profile's main run). The same recipe
(config of RUN_DIR: size, epochs, schedule, empty-slice sampling, seed) is trained once more with
two output channels (right lung, left lung; targets from :func:`lungseg.inference.sides.split_lungs` of the
course masks) on the same training patients. Both are scored per lung on the held-out patients at
threshold 0.5 with post-processing (binary: two largest components + holes, then the side rule;
two-class: largest component + holes per channel, a voxel claimed by both goes to the higher
logit). Prints one JSON line with per-lung Dice, HD95 and MSD (mm) of each approach.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm import tqdm

from lungseg.evaluation import crossval, metrics
from lungseg.inference import forward, ort, postprocess, sides
from lungseg.io import cache
from lungseg.network import data, runs, speed
from lungseg.train import loop


def _targets(case: cache.Case, size: int) -> torch.Tensor:
    """(z, 2, S, S) float: right and left lung masks at training size."""
    labels = torch.from_numpy(sides.split_lungs(np.asarray(case.mask), case.volume))
    chans = torch.stack([labels == sides.RIGHT, labels == sides.LEFT], dim=1).float()
    return (data.resize_slices(chans.flatten(0, 1).unsqueeze(1), size).view(-1, 2, size, size)
            >= data.MASK_THRESHOLD).float()


def train_two_class(cfg: loop.TrainConfig, cases: list[cache.Case]) -> torch.nn.Module:
    x = torch.cat([data.case_tensors(c, cfg.image_size, cfg.input_mode, cfg.hu_window)[0] for c in cases])
    y = torch.cat([_targets(c, cfg.image_size) for c in cases])
    empty = y.flatten(1).amax(1) == 0
    idx = list(range(len(x)))
    device = torch.device("cpu")
    steps = loop.total_steps(idx, empty, cfg)
    torch.manual_seed(cfg.seed)
    net, opt, sched = loop._build(cfg, steps, device)
    net.final = torch.nn.Conv2d(net.final.in_channels, 2, kernel_size=1)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = loop.make_scheduler(opt, cfg, steps)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    for epoch in range(cfg.epochs):
        net.train()
        for b in tqdm(loop._epoch_batches(loop.epoch_indices(idx, empty, cfg, epoch), cfg, epoch, 1),
                      desc=f"two-class epoch {epoch + 1}/{cfg.epochs}", leave=False):
            xb = x[b].contiguous(memory_format=torch.channels_last) if cfg.channels_last else x[b]
            loop.train_step(net, opt, sched, xb, y[b], device, bool(cfg.amp))
    return net.eval()


def two_class_labels(net: torch.nn.Module, cfg: loop.TrainConfig, case: cache.Case) -> np.ndarray:
    hu = torch.from_numpy(np.array(case.volume.hu)).unsqueeze(1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(hu), ort.BATCH):
            xb = data.resize_slices(data.normalise(hu[start:start + ort.BATCH], cfg.input_mode,
                                                   cfg.hu_window), cfg.image_size)
            out.append(data.upsample_logits(net(xb).float(), hu.shape[-1]).numpy())
    logits = np.concatenate(out)  # (z, 2, H, W)
    masks = [postprocess.fill_holes(postprocess.keep_largest(postprocess.binarize(logits[:, k]), 1))
             for k in (0, 1)]
    labels = np.zeros(masks[0].shape, dtype=np.uint8)
    labels[masks[0]] = sides.RIGHT
    labels[masks[1]] = sides.LEFT
    both = masks[0] & masks[1]
    labels[both & (logits[:, 0] >= logits[:, 1])] = sides.RIGHT
    return labels


def per_lung(case: cache.Case, labels: np.ndarray, truth: np.ndarray) -> dict:
    return {name: metrics.per_patient_metrics(labels == v, truth == v, case.volume.spacing)
            for name, v in crossval.STRUCTURES.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    args = ap.parse_args()
    run = runs.load_run(args.run_dir)
    cfg = run.config
    test = [c for c in cfg.cases if c in set(cfg.test_cases)]
    train_cases = [cache.load_case(c, cfg.data_dir or None) for c in cfg.cases if c not in set(test)]
    t0 = time.perf_counter()
    net2 = train_two_class(cfg, train_cases)
    train_s = time.perf_counter() - t0
    print(f"two-class training: {train_s:.0f} s; speed switches {speed.label(cfg.to_dict())}", flush=True)
    out: dict = {"binary + side rule": {}, "two-class network": {}}
    for cid in test:
        case = cache.load_case(cid, cfg.data_dir or None)
        truth = sides.split_lungs(np.asarray(case.mask), case.volume)
        logits = forward.run_logits(run.model, cfg, case.volume.hu)
        binary = sides.split_lungs(postprocess.segment(logits, 0.5, True), case.volume)
        out["binary + side rule"][cid] = per_lung(case, binary, truth)
        out["two-class network"][cid] = per_lung(case, two_class_labels(net2, cfg, case), truth)
    summary = {approach: {lung: {k: float(np.mean([r[lung][k] for r in per.values()]))
                                 for k in ("dice", "hd95_mm", "msd_mm")}
                          for lung in crossval.STRUCTURES}
               for approach, per in out.items()}
    print(json.dumps({"run": str(run.run_dir), "held_out": test, "two_class_train_s": round(train_s, 1),
                      "mean": summary, "per_case": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
