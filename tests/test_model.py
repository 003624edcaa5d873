"""UNet: shapes, size, strict loading of the course's reference weights, an independent
functional re-implementation, and a known-value check on real data (Case_000)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lungseg import paths
from lungseg.network.model import (
    REFERENCE_INPUT_OFFSET_HU,
    UNet,
    count_parameters,
    describe,
    load_reference,
)

torch.set_num_threads(1)  # the CI machine has two cores

REFERENCE = paths.ROOT.parent / "shared" / "models" / "SimpleUNet_v3.pt"
REFERENCE_PARAMS = 536_913  # stated in shared/models/README.md
REAL_CASE = "Case_000"
REAL_SLICES = 10  # the README's check uses ten slices; keeps the test to a few seconds
MIN_REAL_DICE = 0.9  # README: 0.95 with the right input and architecture, 0 otherwise
BN_EPS = 1e-5  # torch's BatchNorm2d default, which the reference was trained with

needs_reference = pytest.mark.skipif(
    not REFERENCE.is_file(), reason=f"reference weights absent: {REFERENCE}"
)


@pytest.fixture(scope="module")
def reference() -> UNet:
    return load_reference(REFERENCE)


@pytest.mark.parametrize("n, h, w", [(1, 8, 8), (2, 32, 48), (3, 64, 64)])
def test_output_shape(n: int, h: int, w: int) -> None:
    model = UNet().eval()
    with torch.no_grad():
        out = model(torch.randn(n, 1, h, w))
    assert out.shape == (n, 1, h, w)
    assert out.dtype == torch.float32


def test_rejects_size_not_divisible_by_8() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet()(torch.zeros(1, 1, 20, 24))


def test_parameter_count_of_the_report_model() -> None:
    assert count_parameters(UNet()) == REFERENCE_PARAMS


def test_configurable_width_and_depth() -> None:
    small = UNet(base_channels=8)
    assert 0 < count_parameters(small) < REFERENCE_PARAMS
    # Parameters scale ~ width**2: half the width gives about a quarter of them.
    assert count_parameters(small) == pytest.approx(REFERENCE_PARAMS / 4, rel=0.05)
    with torch.no_grad():
        assert small.eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 1, 16, 16)
    deep = UNet(base_channels=4, depth=4)
    names = {k.split(".")[0] for k in deep.state_dict()}
    expected = {f"{p}{i}" for p in ("conv", "upsample", "upconv") for i in range(1, 5)}
    assert names == expected | {"middle", "final"}
    assert deep.middle[0].out_channels == 4 * 2**4
    with torch.no_grad():
        assert deep.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_describe_follows_the_forward_pass() -> None:
    layers = describe(UNet(), (1, 1, 64, 64))
    names = [d["name"] for d in layers]
    # Each encoder block is followed by max-pooling then dropout; no dropout after the bottleneck.
    assert names == [
        "conv1", "pool#1", "dropout#1", "conv2", "pool#2", "dropout#2",
        "conv3", "pool#3", "dropout#3", "middle",
        "upsample3", "upconv3", "upsample2", "upconv2", "upsample1", "upconv1", "final",
    ]
    by_name = {d["name"]: d for d in layers}
    assert by_name["conv1"]["type"] == "ConvBlock"
    assert (by_name["conv1"]["in_channels"], by_name["conv1"]["out_channels"]) == (1, 16)
    assert by_name["middle"]["out_channels"] == 128
    assert by_name["middle"]["out_size"] == (8, 8)
    assert by_name["upconv3"]["in_channels"] == 128  # concatenation of 64 + 64
    assert by_name["final"]["out_size"] == (64, 64)
    assert sum(d["params"] for d in layers if "#" not in d["name"]) == REFERENCE_PARAMS


def test_load_reference_missing_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_reference(missing)


@needs_reference
def test_reference_loads_strictly(reference: UNet) -> None:
    assert not reference.training
    assert count_parameters(reference) == REFERENCE_PARAMS
    state = torch.load(REFERENCE, map_location="cpu", weights_only=True)
    assert set(state) == set(reference.state_dict())
    UNet().load_state_dict(state, strict=True)  # raises on any missing or unexpected key


def _block(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """(conv → BN(eval) → ReLU) x 2 with the Sequential indices 0, 1 and 3, 4 of the state dict."""
    for conv, bn in ((0, 1), (3, 4)):
        x = F.conv2d(x, sd[f"{name}.{conv}.weight"], sd[f"{name}.{conv}.bias"], padding=1)
        x = F.batch_norm(
            x, sd[f"{name}.{bn}.running_mean"], sd[f"{name}.{bn}.running_var"],
            sd[f"{name}.{bn}.weight"], sd[f"{name}.{bn}.bias"], training=False, eps=BN_EPS,
        )
        x = F.relu(x)
    return x


def _functional_unet(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Independent eval-mode forward of the depth-3 UNet from the raw state dict."""
    skips = []
    for level in (1, 2, 3):
        x = _block(x, sd, f"conv{level}")
        skips.append(x)
        x = F.max_pool2d(x, 2, 2)  # dropout is the identity in eval mode
    x = _block(x, sd, "middle")
    for level in (3, 2, 1):
        x = F.conv_transpose2d(
            x, sd[f"upsample{level}.weight"], sd[f"upsample{level}.bias"],
            stride=2, padding=1, output_padding=1,
        )
        x = _block(torch.cat([x, skips[level - 1]], dim=1), sd, f"upconv{level}")
    return F.conv2d(x, sd["final.weight"], sd["final.bias"])


@needs_reference
def test_matches_functional_forward(reference: UNet) -> None:
    sd = torch.load(REFERENCE, map_location="cpu", weights_only=True)
    noise = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    x = REFERENCE_INPUT_OFFSET_HU + 300 * noise  # roughly the raw value range of a CT slice
    with torch.no_grad():
        expected = _functional_unet(x, sd)
        got = reference(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _real_case():
    """Case_000 via the cache, or skip when the data set is not unpacked here."""
    try:
        from lungseg.io.cache import load_case

        return load_case(REAL_CASE)
    except FileNotFoundError as err:
        pytest.skip(f"real data absent: {err}")


@needs_reference
def test_reference_segments_real_slices(reference: UNet) -> None:
    case = _real_case()
    lung_z = np.flatnonzero(case.mask.any(axis=(1, 2)))
    mid = (lung_z[0] + lung_z[-1]) // 2
    z = slice(mid - REAL_SLICES // 2, mid + REAL_SLICES // 2)
    raw = np.asarray(case.volume.hu[z], dtype=np.float32) + REFERENCE_INPUT_OFFSET_HU
    truth = torch.from_numpy(np.array(case.mask[z], dtype=bool))
    with torch.no_grad():  # two slices at a time keeps memory small
        logits = torch.cat([reference(torch.from_numpy(raw[i:i + 2, None]))
                            for i in range(0, len(raw), 2)])
    pred = logits[:, 0] > 0
    dice = 2 * (pred & truth).sum().item() / (pred.sum() + truth.sum()).item()
    assert dice > MIN_REAL_DICE, f"Dice {dice:.3f} on {REAL_SLICES} slices of {REAL_CASE}"
