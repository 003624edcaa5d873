"""Training losses of the report: soft Dice (eq. 2) and 0.5·BCE + 0.5·Dice (eq. 3).

All functions take raw logits (N, 1, H, W) and a float target of the same shape with values in
{0, 1}; they return a scalar tensor. Probabilities are ``sigmoid(logits)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DICE_EPS = 1e-6
"""Smoothing ε of eq. (2): keeps the ratio defined (= 1) when prediction and target are empty."""

BCE_WEIGHT = 0.5
DICE_WEIGHT = 0.5
"""Weights of eq. (3): loss = BCE_WEIGHT · BCE + DICE_WEIGHT · Dice loss."""


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS
) -> torch.Tensor:
    """Eq. (2): mean over the batch of 1 − (2·Σp·g + ε) / (Σp + Σg + ε), p = sigmoid(logits).

    Sums run over every non-batch dim of each sample, so each slice counts equally whatever
    its lung area. logits, target: (N, ...) same shape; returns a scalar in [0, 1].
    """
    if logits.shape != target.shape:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)}, "
                         f"target {tuple(target.shape)}")
    p = torch.sigmoid(logits).flatten(1)
    g = target.to(p.dtype).flatten(1)
    dice = (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)
    return (1 - dice).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. (3): BCE_WEIGHT · BCE + DICE_WEIGHT · soft Dice loss; scalar.

    BCE is the pixel mean computed from logits (log-sum-exp form), so it stays finite for
    saturated logits where log(sigmoid(x)) would give −inf.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return BCE_WEIGHT * bce + DICE_WEIGHT * soft_dice_loss(logits, target)


class BCEDiceLoss(nn.Module):
    """Module form of :func:`bce_dice_loss`: ``loss(logits, target)`` → scalar."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce_dice_loss(logits, target)
