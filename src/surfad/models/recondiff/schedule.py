"""recondiff's optimiser: Adam with a per-epoch warm-up then cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from surfad.config import TrainConfig
from surfad.models.base import Optimiser
from surfad.models.recondiff.model import RecondiffModel


def lr_factor(epoch: int, epochs: int, warmup_fraction: float, floor: float) -> float:
    """LR multiplier for epoch `epoch` (0-based) of `epochs`.

    Linear from floor to 1 over the first round(warmup_fraction * epochs) epochs, then
    max(floor, cosine from 1 towards 0 over the remaining epochs).
    """
    warmup = round(warmup_fraction * epochs)
    if epoch < warmup:
        return floor + (1.0 - floor) * epoch / warmup
    progress = min(1.0, (epoch - warmup) / max(1, epochs - warmup))
    return max(floor, 0.5 * (1.0 + math.cos(math.pi * progress)))


def recondiff_optimizer(model: RecondiffModel, train: TrainConfig) -> Optimiser:
    """Adam (train.lr, train.weight_decay; the paper: 1e-3, 1e-5) with a per-epoch LambdaLR.

    Stepped once per epoch (as surfad.training does): warm-up over warmup_fraction of
    train.epochs from lr_floor * lr to lr, then cosine decay to lr_floor * lr (lr_factor).
    The paper warms up for a fixed 20 epochs; a fraction keeps the same shape for short CPU
    runs (0.2 = the paper's 20 of its README's 100 epochs).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    c, epochs = model.config, max(1, train.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(epoch, epochs, c.warmup_fraction, c.lr_floor)
    )
    return optimizer, scheduler
