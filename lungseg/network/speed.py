"""Speed switches chosen by measurement on the machine at hand, never by CPU flags.

Memory layout (channels_last or not) and precision (bf16 autocast or float32) each help on some
machines and hurt on others: on a 2-core AVX-512 BF16 CPU bf16 + channels_last train 3x faster than
plain float32, while on an AVX2-only CPU channels_last made the step 1.6x *slower*. :func:`choose`
times a few real training steps of the report's UNet for every candidate at the run's image and batch
size, picks the fastest, logs the timings and caches the choice per machine (CPU capability, ISA
limit, device, threads, torch version), so the probe costs seconds once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from lungseg import paths
from lungseg.io import writing
from lungseg.network import losses, model

log = logging.getLogger(__name__)
WARMUP_STEPS = 2
TIMED_STEPS = 3
CACHE_DIR = paths.BUILD / "speed"
_SEEN: dict[Path, dict] = {}


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; otherwise the named device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def machine(device: torch.device) -> dict:
    """What a measured choice depends on (JSON-able)."""
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
            "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""),
            "processor": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def candidates(device: torch.device) -> list[tuple[bool, bool]]:
    """(channels_last, amp) pairs worth timing: bf16 only where it is native (elsewhere autocast
    would emulate it, always slower)."""
    amps = (False, True) if model.bf16_native(device) else (False,)
    return [(cl, amp) for amp in amps for cl in (False, True)]


def _step_seconds(image_size: int, batch_size: int, device: torch.device, channels_last: bool,
                  amp: bool) -> float:
    """Median seconds of one Adam step of the UNet on a random batch (the training loop's work)."""
    torch.manual_seed(0)
    net = model.UNet().to(device).train()
    x = torch.rand(batch_size, 1, image_size, image_size, device=device)
    y = (torch.rand_like(x) > 0.5).float()
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    times = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        t0 = time.perf_counter()
        with model.autocast(device, amp):
            loss = losses.bce_dice_loss(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _cache_file(info: dict, image_size: int, batch_size: int) -> Path:
    key = hashlib.sha256(json.dumps([info, image_size, batch_size], sort_keys=True).encode()).hexdigest()
    return CACHE_DIR / f"{key[:16]}.json"


def choose(image_size: int, batch_size: int, device: torch.device) -> dict:
    """{"channels_last", "amp", "seconds_per_step": {candidate: s}, "machine"}: the fastest candidate
    for this machine, measured once and cached in ``build/speed/``."""
    info = machine(device)
    cache = _cache_file(info, image_size, batch_size)
    if cache in _SEEN:  # asked again in this process: no second log line
        return _SEEN[cache]
    if cache.is_file():
        choice = json.loads(cache.read_text())
        log.info("speed: %s (cached measurement %s)", label(choice), cache.name)
        _SEEN[cache] = choice
        return choice
    timings = {}
    for cl, amp in candidates(device):
        timings[f"channels_last={cl},amp={amp}"] = _step_seconds(image_size, batch_size, device, cl, amp)
    best = min(timings, key=timings.get)
    cl, amp = (part.split("=")[1] == "True" for part in best.split(","))
    choice = {"channels_last": cl, "amp": amp, "seconds_per_step": timings, "machine": info,
              "image_size": image_size, "batch_size": batch_size}
    log.info("speed: %s, measured %s", label(choice),
             ", ".join(f"{k} {v:.3f} s/step" for k, v in timings.items()))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    writing.atomic_write_text(cache, json.dumps(choice, indent=1) + "\n")
    _SEEN[cache] = choice
    return choice


def cached_choice(image_size: int, batch_size: int, device: torch.device) -> dict | None:
    """The measurement :func:`choose` cached for this machine and size, if any (for provenance)."""
    cache = _cache_file(machine(device), image_size, batch_size)
    return json.loads(cache.read_text()) if cache.is_file() else None


def label(choice: dict) -> str:
    return (f"{'channels_last' if choice['channels_last'] else 'NCHW'}, "
            f"{'bf16 autocast' if choice['amp'] else 'float32'}")
