"""The report's 2D UNet ("SimpleUNet" of the course's Practical 3) and helpers around it.

Module names follow the course's reference state dict (``conv1..convN``, ``middle``,
``upsampleN..1``, ``upconvN..1``, ``final``), so its weights load with ``strict=True``.
Tensors are (N, C, H, W); the model maps a (N, 1, H, W) slice to (N, 1, H, W) lung logits.
"""

from __future__ import annotations

import os
from collections import Counter

import torch
from torch import nn

REFERENCE_INPUT_OFFSET_HU = 1024.0
"""The reference model expects raw stored values = HU + 1024 (RescaleIntercept −1024), unscaled."""

DEFAULT_IN_CHANNELS = 1
DEFAULT_BASE_CHANNELS = 16
DEFAULT_DEPTH = 3
DEFAULT_DROPOUT = 0.5
DEFAULT_DILATION = 1
REFERENCE_INPUT_SIZE = (1, 1, 512, 512)
"""(N, C, H, W) of one CT slice as the reference model was trained on."""

_KERNEL = 3
_PAD = 1  # "same" padding for the 3x3 convolutions
_POOL = 2  # each level halves H and W, so H and W must be divisible by 2**depth


class ConvBlock(nn.Sequential):
    """(Conv2d 3x3 → BatchNorm2d → ReLU) x 2: (N, c_in, H, W) → (N, c_out, H, W).

    A Sequential so parameter names are ``0`` (conv), ``1`` (BN), ``3`` (conv), ``4`` (BN),
    exactly those of the reference state dict.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        pad = _PAD * dilation  # "same" for any dilation
        super().__init__(
            nn.Conv2d(in_channels, out_channels, _KERNEL, stride=1, padding=pad, dilation=dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, _KERNEL, stride=1, padding=pad, dilation=dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _upsample(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """Transposed conv that exactly doubles H and W: (N, c_in, H, W) → (N, c_out, 2H, 2W)."""
    return nn.ConvTranspose2d(
        in_channels, out_channels, _KERNEL, stride=_POOL, padding=_PAD, output_padding=1
    )


class UNet(nn.Module):
    """2D UNet: (N, in_channels, H, W) → (N, 1, H, W) logits (no sigmoid); logit > 0 is lung.

    Level ``i`` (1-based) has ``base_channels * 2**(i-1)`` channels, the bottleneck
    ``base_channels * 2**depth``; the defaults (16, 32, 64; 128) are the report's model.
    Each encoder block is followed by MaxPool2d(2) then Dropout2d(``dropout``); each decoder
    stage upsamples, concatenates [upsampled, skip] along channels and applies a ConvBlock.
    H and W must be divisible by ``2**depth``.

    ``dilation`` > 1 dilates the bottleneck's two convolutions (same parameters, so the same state
    dict): the receptive field grows from about 75 to 75 + 32·(dilation − 1) input pixels, enough at
    ``dilation`` 4 to see a whole hemithorax at 160² and tell an opacified lung (bounded by ribs and
    mediastinum) from the heart or liver.
    """

    def __init__(
        self,
        in_channels: int = DEFAULT_IN_CHANNELS,
        base_channels: int = DEFAULT_BASE_CHANNELS,
        depth: int = DEFAULT_DEPTH,
        dropout: float = DEFAULT_DROPOUT,
        dilation: int = DEFAULT_DILATION,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]  # last one: bottleneck
        c_in = in_channels
        for level in range(1, depth + 1):
            self.add_module(f"conv{level}", ConvBlock(c_in, widths[level - 1]))
            c_in = widths[level - 1]
        # Parameter-free, shared by every level (the reference state dict has no entries for them).
        self.pool = nn.MaxPool2d(_POOL, _POOL)
        self.dropout = nn.Dropout2d(dropout)
        self.middle = ConvBlock(widths[depth - 1], widths[depth], dilation)
        for level in range(depth, 0, -1):
            c_up, c_skip = widths[level], widths[level - 1]
            self.add_module(f"upsample{level}", _upsample(c_up, c_skip))
            self.add_module(f"upconv{level}", ConvBlock(2 * c_skip, c_skip))
        self.final = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) float → (N, 1, H, W) logits."""
        factor = _POOL**self.depth
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"H and W must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        skips = []
        for level in range(1, self.depth + 1):
            x = getattr(self, f"conv{level}")(x)
            skips.append(x)  # skip taken before pooling: full resolution of this level
            x = self.dropout(self.pool(x))
        x = self.middle(x)
        for level in range(self.depth, 0, -1):
            x = getattr(self, f"upsample{level}")(x)
            # Order [upsampled, skip] checked against the reference weights (Dice 0.95 on real
            # data; the swapped order gives a useless segmentation).
            x = torch.cat([x, skips[level - 1]], dim=1)
            x = getattr(self, f"upconv{level}")(x)
        return self.final(x)


def load_reference(path: str | os.PathLike[str]) -> UNet:
    """The default UNet with the course's reference weights loaded strictly, in eval mode (CPU).

    Its input is raw stored pixel values, i.e. HU + ``REFERENCE_INPUT_OFFSET_HU``.
    Raises FileNotFoundError naming ``path`` when the file is absent.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference weights not found: {os.fspath(path)}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = UNet()
    model.load_state_dict(state, strict=True)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def describe(
    model: UNet, input_size: tuple[int, ...] = REFERENCE_INPUT_SIZE
) -> list[dict[str, object]]:
    """The top-level layers/blocks in call order, from a forward pass on zeros of ``input_size``.

    Each entry: ``name`` (module name; shared modules called several times get ``#k``),
    ``type`` (class name), ``in_channels`` / ``out_channels`` (of the actual tensors, so a
    decoder block shows the concatenation's width), ``out_size`` (H, W in pixels) and
    ``params`` (parameter count of that module). Runs in eval mode without gradients and
    restores the model's training flag.
    """
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            calls.append((name, module, args[0], out))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_children()]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(input_size, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return _entries(calls)


def _entries(calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]) -> list[dict]:
    """Turn recorded (name, module, input, output) calls into describe()'s dicts."""
    repeated = {n for n, k in Counter(name for name, *_ in calls).items() if k > 1}
    seen: Counter[str] = Counter()
    entries = []
    for name, module, inp, out in calls:
        seen[name] += 1
        entries.append({
            "name": f"{name}#{seen[name]}" if name in repeated else name,
            "type": type(module).__name__,
            "in_channels": int(inp.shape[1]),
            "out_channels": int(out.shape[1]),
            "out_size": (int(out.shape[-2]), int(out.shape[-1])),
            "params": count_parameters(module),
        })
    return entries


def bf16_native(device: torch.device) -> bool:
    """True where bfloat16 runs natively: CUDA, and CPUs with AVX-512 BF16 / AMX (oneDNN)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast when ``enabled`` and native on ``device`` (measured on a 2-core AVX-512 BF16
    CPU: 2.0-2.4x faster training than float32, no loss scaling needed); otherwise a no-op."""
    on = enabled and bf16_native(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)
