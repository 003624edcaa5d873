"""Soft Dice (eq. 2) and BCE + Dice (eq. 3) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lungseg.network.losses import (
    BCE_WEIGHT,
    DICE_EPS,
    DICE_WEIGHT,
    BCEDiceLoss,
    bce_dice_loss,
    soft_dice_loss,
)

torch.set_num_threads(1)

LOGIT_OF_0_8 = math.log(0.8 / 0.2)  # sigmoid(this) = 0.8 exactly (up to float rounding)
LARGE_LOGIT = 100.0  # sigmoid saturates to exactly 0/1 in float32


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    """1x1x2x2 sample: p = [[0.8, 0.5], [0.5, 0.2]], g = [[1, 1], [0, 0]]."""
    logits = torch.tensor([[[[LOGIT_OF_0_8, 0.0], [0.0, -LOGIT_OF_0_8]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    return logits, target


def test_soft_dice_hand_computed() -> None:
    # Σp·g = 0.8 + 0.5 = 1.3; Σp = 0.8 + 0.5 + 0.5 + 0.2 = 2.0; Σg = 2
    # dice = (2·1.3 + ε) / (2.0 + 2 + ε) = 2.6 / 4.0 = 0.65 → loss 0.35
    logits, target = _tiny()
    expected = 1 - (2 * 1.3 + DICE_EPS) / (4.0 + DICE_EPS)
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.35, abs=1e-5)


def test_bce_dice_hand_computed() -> None:
    # BCE per pixel: −ln 0.8, −ln 0.5, −ln 0.5, −ln 0.8 (target 0, p 0.2 → −ln(1 − 0.2))
    # mean = (2·0.22314 + 2·0.69315) / 4 = 0.45815; loss = 0.5·0.45815 + 0.5·0.35 = 0.40407
    logits, target = _tiny()
    bce = -(2 * math.log(0.8) + 2 * math.log(0.5)) / 4
    expected = BCE_WEIGHT * bce + DICE_WEIGHT * 0.35
    assert bce_dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(0.40407, abs=1e-4)
    assert BCEDiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-5)


def test_empty_prediction_and_empty_target_is_perfect() -> None:
    # p = sigmoid(−100) = 0 exactly, g = 0: dice = ε / ε = 1, loss 0 (not NaN)
    logits = torch.full((1, 1, 4, 4), -LARGE_LOGIT)
    target = torch.zeros(1, 1, 4, 4)
    assert soft_dice_loss(logits, target).item() == 0.0


def test_perfect_prediction_gives_zero_dice_loss() -> None:
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    logits = (2 * target - 1) * LARGE_LOGIT
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_averages_per_sample() -> None:
    # Not pooled over the batch: a small-lung slice counts as much as a large one.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, generator=gen)
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :1] = 1  # 4 lung pixels
    target[1, 0, :3] = 1  # 12 lung pixels
    each = [soft_dice_loss(logits[i:i + 1], target[i:i + 1]) for i in range(2)]
    batch = soft_dice_loss(logits, target)
    torch.testing.assert_close(batch, (each[0] + each[1]) / 2)
    pooled = soft_dice_loss(logits.reshape(1, 2, 4, 4), target.reshape(1, 2, 4, 4))
    assert batch.item() != pytest.approx(pooled.item(), abs=1e-4)


def test_bce_from_logits_equals_bce_on_probabilities() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(2, 1, 8, 8, generator=gen)  # moderate: sigmoid not saturated
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float()
    expected_bce = torch.nn.BCELoss()(torch.sigmoid(logits), target)
    expected = BCE_WEIGHT * expected_bce + DICE_WEIGHT * soft_dice_loss(logits, target)
    torch.testing.assert_close(bce_dice_loss(logits, target), expected, rtol=1e-5, atol=1e-6)


def test_large_logits_stay_finite() -> None:
    # Confidently wrong pixels: log(sigmoid(−100)) would be −inf; the logits form gives 100.
    logits = torch.tensor([[[[LARGE_LOGIT, -LARGE_LOGIT], [LARGE_LOGIT, -LARGE_LOGIT]]]])
    target = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    loss = bce_dice_loss(logits, target)
    assert torch.isfinite(loss)
    # BCE = (100 + 100 + 0 + 0) / 4 = 50; dice = (2·1 + ε) / (2 + 2 + ε) ≈ 0.5
    assert loss.item() == pytest.approx(BCE_WEIGHT * 50 + DICE_WEIGHT * 0.5, abs=1e-4)


def test_gradient_flows_to_logits() -> None:
    logits, target = _tiny()
    logits.requires_grad_(True)
    bce_dice_loss(logits, target).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad != 0).all()
    # Raising a logit where the target is 1 lowers the loss, where it is 0 raises it.
    assert (logits.grad[target == 1] < 0).all()
    assert (logits.grad[target == 0] > 0).all()


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        soft_dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))
