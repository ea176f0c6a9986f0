"""The epoch loop of gradient-trained models: one pass over the samples, and the weight average."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from surfad.config import TrainConfig
from surfad.errors import SurfadError
from surfad.models import IMAGE_LAYOUT
from surfad.models.base import Loss


def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of the weights and buffers (BatchNorm statistics included).

    The effective decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so the average
    is not dominated by the random initial weights in short runs.
    """

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        step = 1.0 - min(decay, (1.0 + float(n)) / (10.0 + float(n)))  # one host read per update, not per tensor
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur, step)
            else:  # counters such as BatchNorm's num_batches_tracked are not averaged
                avg.copy_(cur)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def train_epoch(model: torch.nn.Module, loss: Loss, train_set: Dataset, optimizer: torch.optim.Optimizer, epoch: int,
                tc: TrainConfig, batch_size: int, device: torch.device, bar: tqdm,
                average: AveragedModel | None = None, max_steps: int | None = None) -> dict[str, float]:
    """One pass over the training samples (order seeded by seed and epoch), or its first `max_steps`
    steps; mean loss terms. `average`, if given, is updated after every optimiser step."""
    model.train()
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch))
    sums: dict[str, float] = {}
    steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    for step, batch in zip(range(steps), loader):
        batch = {k: v.to(device, memory_format=IMAGE_LAYOUT) if v.dim() == 4 else v.to(device)
                 for k, v in batch.items()}
        losses = loss(model, batch, (epoch + step / len(loader)) / tc.epochs)
        if not torch.isfinite(losses["loss"]):
            raise SurfadError(f"training diverged at epoch {epoch + 1}, step {step + 1}: the loss is "
                              f"{float(losses['loss'])}; lower train.lr (--lr) or check the images")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.set_postfix({k: f"{v / (step + 1):.4f}" for k, v in sums.items()}, refresh=False)
        bar.update()
    return {k: v / steps for k, v in sums.items()}
