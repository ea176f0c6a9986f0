"""simplenet's training loss: SimpleNet's truncated L1 on the discriminator's patch logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from surfad.config import TrainConfig
from surfad.models.base import Optimiser
from surfad.models.simplenet.model import SimpleNet


def simplenet_loss(model: SimpleNet, batch: dict[str, torch.Tensor], progress: float) -> dict[str, torch.Tensor]:
    """Batch: "features" (B, D, h, w) frozen standardised patch features, "target" (B, 1, h, w) 1 for
    anomalous patches, "weight" (B, 1, h, w) 0 for patches that count as neither.

    Normal patches' logits are pushed below -margin; above +margin go the anomalous patches and the
    normal ones' adapted features plus Gaussian noise (noise_std), SimpleNet's anomalies made in
    feature space. Each term is a mean over its own patches, so a batch's few defect patches weigh
    as much as its many normal ones."""
    c = model.config
    adapted = model.adapt(batch["features"])
    counted = batch["weight"] > 0
    normal, anomalous = counted & (batch["target"] < 0.5), counted & (batch["target"] >= 0.5)
    logits = model.discriminator(adapted)
    noisy = model.discriminator(adapted + c.noise_std * torch.randn_like(adapted))
    zero = logits.new_zeros(())
    terms = {
        "normal": F.relu(c.margin + logits[normal]).mean() if normal.any() else zero,
        "noise": F.relu(c.margin - noisy[normal]).mean() if normal.any() else zero,
        "defect": F.relu(c.margin - logits[anomalous]).mean() if anomalous.any() else zero,
    }
    return {"loss": terms["normal"] + terms["noise"] + terms["defect"], **terms}


def simplenet_optimizer(model: SimpleNet, train: TrainConfig) -> Optimiser:
    """Adam on the head only (the backbone is frozen): the adaptor at half the discriminator's rate, as in
    SimpleNet."""
    groups = [{"params": model.adaptor.parameters(), "lr": train.lr / 2},
              {"params": model.discriminator.parameters(), "lr": train.lr}]
    return torch.optim.Adam(groups, lr=train.lr, weight_decay=train.weight_decay), None
