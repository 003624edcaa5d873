"""``lungseg bench train``: training and inference throughput, project loop vs naive loop.

In one process, at the report's settings (512², batch 3) and at the cpu profile's (``--size``,
``--batch``), it times:

- **naive**: the loop the coursework describes — plain float32 NCHW PyTorch, a ``DataLoader`` over
  per-slice tensors (shuffle), ``BCELoss`` on sigmoid outputs + Dice, ``.item()`` for loss and
  accuracy every step;
- **project**: :func:`lungseg.train.loop.train_step` as ``fit`` runs it — memory layout and precision as
  :func:`lungseg.network.speed.choose` measures fastest on this machine (channels_last or not; bf16 autocast
  only where native), batches taken by indexing one in-memory tensor, BCE from logits, one host
  sync per step.

Both train the same UNet from the same seed on the same slices (real slices of one case from the
cache when the data is there, else random tensors: throughput does not depend on the values). It
also reports the achieved FLOP/s (FLOPs counted by ``torch.utils.flop_counter``) against this
machine's measured float32 matmul FLOP/s, and the time to predict a whole case at 512².
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from lungseg import paths
from lungseg.inference import forward
from lungseg.io import writing
from lungseg.io.cache import load_case
from lungseg.network import config, data, losses, model, speed
from lungseg.train import loop

REPORT_SIZE, REPORT_BATCH = data.FULL_SIZE, 3
_CPU = config.load_profile("cpu")["02_train"]
CPU_SIZE, CPU_BATCH = int(_CPU["image_size"]), int(_CPU["batch_size"])
MATMUL_N = 2048
WARMUP_STEPS = 1
INFER_CASE = "Case_000"


def _slices(size: int, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` slices (N,1,S,S) and masks: real ones of INFER_CASE when available, else random."""
    try:
        paths.data_dir()
        ds = data.SliceDataset([load_case(INFER_CASE)], size)
        idx = torch.linspace(0, len(ds) - 1, n).long()
        return ds.images[idx], ds.masks[idx].float(), f"{INFER_CASE} slices"
    except FileNotFoundError:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(n, 1, size, size, generator=gen)
        return x, (x > 0.5).float(), "random tensors"


def naive_steps(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int) -> float:
    """Seconds per step of the naive loop (after warm-up)."""
    torch.manual_seed(42)
    net = model.UNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    bce = torch.nn.BCELoss()
    done, start = 0, 0.0
    while done < steps + WARMUP_STEPS:
        for xb, yb in loader:
            if done == WARMUP_STEPS:
                start = time.perf_counter()
            prob = torch.sigmoid(net(xb))
            inter = (prob * yb).sum((1, 2, 3))
            dice = (2 * inter + 1e-6) / (prob.sum((1, 2, 3)) + yb.sum((1, 2, 3)) + 1e-6)
            loss = 0.5 * bce(prob, yb) + 0.5 * (1 - dice).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            ((prob > 0.5).float() == yb).float().mean().item()
            done += 1
            if done == steps + WARMUP_STEPS:
                break
    return (time.perf_counter() - start) / steps


def project_steps(x: torch.Tensor, y: torch.Tensor, batch: int, steps: int) -> tuple[float, str]:
    """Seconds per step of the project's training step (switches measured for this machine,
    indexed batches), and a label of the switches."""
    device = torch.device("cpu")
    choice = speed.choose(x.shape[-1], batch, device)
    cl, amp = bool(choice["channels_last"]), bool(choice["amp"])
    torch.manual_seed(42)
    net = model.UNet()
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(42))
    start = 0.0
    for k in range(steps + WARMUP_STEPS):
        if k == WARMUP_STEPS:
            start = time.perf_counter()
        b = order[(k * batch) % len(x):][:batch]
        xb = x[b].contiguous(memory_format=torch.channels_last) if cl else x[b]
        loss, correct = loop.train_step(net, opt, sched, xb, y[b], device, amp=amp)
        float(loss), float(correct)
    return (time.perf_counter() - start) / steps, speed.label(choice)


def train_flops(size: int, batch: int) -> float:
    """FLOPs of one training step (forward + backward) of the default UNet."""
    net = model.UNet()
    x = torch.zeros(batch, 1, size, size)
    with FlopCounterMode(display=False) as counter:
        losses.bce_dice_loss(net(x), torch.zeros_like(x)).backward()
    return float(counter.get_total_flops())


def matmul_flops_per_s(n: int = MATMUL_N, repeat: int = 5) -> float:
    """Measured float32 matmul FLOP/s of this machine (torch, current thread setting)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - start)


def run_train(args: argparse.Namespace) -> int:
    peak = matmul_flops_per_s()
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {cap}; "
          f"matmul {MATMUL_N}² float32: {peak / 1e9:.1f} GFLOP/s")
    settings = [("report", REPORT_SIZE, REPORT_BATCH), ("cpu profile", args.size, args.batch)]
    print(f"{'setting':<22}{'loop':<9}{'slices/s':>10}{'GFLOP/s':>10}{'% matmul':>10}{'ratio':>8}")
    result: dict = {"cpu_capability": cap, "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "matmul_gflops": peak / 1e9, "steps": args.steps, "training": [], "inference": []}
    for name, size, batch in settings:
        x, y, source = _slices(size, max(batch * (args.steps + WARMUP_STEPS), 2 * batch))
        flops = train_flops(size, batch)
        naive = naive_steps(x, y, batch, args.steps)
        ours, switches = project_steps(x, y, batch, args.steps)
        for kind, sec in (("naive", naive), ("project", ours)):
            ratio = f"{naive / sec:.2f}x" if kind == "project" else ""
            print(f"{name + f' {size}² b{batch}':<22}{kind:<9}{batch / sec:>10.2f}"
                  f"{flops / sec / 1e9:>10.1f}{100 * flops / sec / peak:>9.0f}%{ratio:>8}")
        result["training"].append({"setting": name, "size": size, "batch": batch, "inputs": source,
                                   "naive_slices_s": batch / naive, "project_slices_s": batch / ours,
                                   "ratio": naive / ours, "project_switches": switches})
        print(f"  project switches (measured here): {switches}; inputs: {source}")
    try:
        case = load_case(INFER_CASE)
    except FileNotFoundError:
        print(f"inference: skipped ({INFER_CASE} not in the data directory)")
        case = None
    net = model.UNet()
    for size in (REPORT_SIZE, args.size) if case is not None else ():
        start = time.perf_counter()
        forward.predict_hu(net, case.volume.hu, size, name=INFER_CASE)
        sec = time.perf_counter() - start
        n = case.volume.shape[0]
        core_ms = 1000 * sec / n * torch.get_num_threads()
        print(f"inference {INFER_CASE} ({n} slices) at {size}², logits to 512²: "
              f"{sec:.1f} s ({n / sec:.1f} slices/s, {core_ms:.0f} core-ms/slice)")
        result["inference"].append({"case": INFER_CASE, "slices": n, "size": size, "seconds": sec,
                                    "core_ms_per_slice": core_ms})
    if args.save:
        out = paths.resolve(args.save) / f"bench_train_{cap.lower()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        writing.atomic_write_text(out, json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"saved {out}")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="training/inference throughput: project loop vs naive loop",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=CPU_SIZE, help="cpu-profile image size (px)")
    p.add_argument("--batch", type=int, default=CPU_BATCH, help="cpu-profile batch size")
    p.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    p.add_argument("--save", metavar="DIR", default="",
                   help="also write the numbers as DIR/bench_train_<cpu capability>.json (the README's "
                        "benchmark table is generated from figures/bench_train_*.json)")
    p.set_defaults(func=run_train)
